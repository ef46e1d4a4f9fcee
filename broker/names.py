"""Every RabbitMQ name and queue argument Hutch uses, built in one place.

All names live under the deployment namespace (``Settings.namespace``, default ``"hutch"``) so
several deployments, or several test runs, can share one broker::

    hutch.work        direct exchange: every partition message, routed by its queue name
    hutch.p0 .. pN-1  one quorum queue per partition (single active consumer, delivery limit)
    hutch.dlx         fanout exchange the partition queues dead-letter to
    hutch.dlq         the dead-letter queue operators read (a quorum queue too)
    hutch.repartition where ``hutch admin repartition`` stages queued messages (exists only meanwhile)
"""

from __future__ import annotations

from typing import Any

#: Queue arguments are part of a queue's identity: declaring an existing queue with different
#: arguments fails with PRECONDITION_FAILED. Change them on a live deployment with a policy.
QueueArguments = dict[str, Any]


def partition_queue(namespace: str, partition: int) -> str:
    """The queue of one partition, e.g. ``hutch.p3``; also its routing key on the work exchange."""
    return f"{namespace}.p{partition}"


def partition_of_queue(namespace: str, queue: str) -> int | None:
    """The partition a queue name belongs to, or None when it is not a partition queue of ``namespace``."""
    prefix = f"{namespace}.p"
    if not queue.startswith(prefix):
        return None
    digits = queue[len(prefix) :]
    return int(digits) if digits.isdecimal() else None


def work_exchange(namespace: str) -> str:
    """The direct exchange every partition message is published to."""
    return f"{namespace}.work"


def dead_letter_exchange(namespace: str) -> str:
    """The fanout exchange partition queues dead-letter to (``x-dead-letter-exchange``)."""
    return f"{namespace}.dlx"


def dead_letter_queue(namespace: str) -> str:
    """The queue holding dead-lettered messages until an operator looks at them."""
    return f"{namespace}.dlq"


def repartition_queue(namespace: str) -> str:
    """The quorum queue ``hutch admin repartition`` stages the partition queues' messages in (broker/repartition.py)."""
    return f"{namespace}.repartition"


def consumer_tag(namespace: str, partition: int, subscriber: str) -> str:
    """The consumer tag of one subscriber on one partition, readable in the management UI."""
    return f"{namespace}.p{partition}.{subscriber}"


def partition_queue_arguments(*, dead_letter_exchange: str, delivery_limit: int) -> QueueArguments:
    """Arguments of a partition queue (like dramatiq's ``_build_queue_arguments``).

    Args:
        dead_letter_exchange: where messages go when dead-lettered.
        delivery_limit: the most times one message is delivered; the next return dead-letters it.

    RabbitMQ's ``x-delivery-limit`` counts *returns*, not deliveries (a limit of 2 allows three
    deliveries), so the argument is ``delivery_limit - 1``. ``at-least-once`` dead-lettering (3.10+)
    keeps a message in its queue until the dead-letter queue has confirmed it; it requires
    ``x-overflow: reject-publish``. No ``x-max-length`` is set, so that overflow mode never rejects.
    """
    if delivery_limit < 1:
        raise ValueError(f"delivery_limit must be at least 1, got {delivery_limit}")
    return {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        "x-dead-letter-exchange": dead_letter_exchange,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": delivery_limit - 1,
    }


def dead_letter_queue_arguments(*, broker_version: str | None = None) -> QueueArguments:
    """Arguments of the dead-letter queue, for a broker of ``broker_version`` (its ``version`` server property).

    A quorum queue, like every queue Hutch declares: a classic queue lives on one node, and while
    that node is down nothing could declare it (every process's start failed with ``NOT_FOUND -
    home node ... is down``) nor dead-letter into it.

    Operators peek at it by fetching messages and returning them, so it must have no delivery
    limit: RabbitMQ 3.x quorum queues have none unless given one (and read ``-1`` as a limit of
    zero), while 4.x gives each a default of 20 that ``-1`` turns off (4.0 to 4.2 count every
    return, a peek included, toward it).
    """
    arguments: QueueArguments = {"x-queue-type": "quorum"}
    major = (broker_version or "").split(".", 1)[0]
    if major.isdecimal() and int(major) >= 4:
        arguments["x-delivery-limit"] = -1
    return arguments
