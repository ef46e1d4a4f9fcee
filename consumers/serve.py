"""``hutch worker``: a distributed worker process on Redis and RabbitMQ, and the triggers it runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from hutch.broker.connection import ConnectionOptions
from hutch.client import Client, bindings
from hutch.clock import Clock
from hutch.consumers.colocated import dispatcher_over
from hutch.consumers.crons import CronTrigger
from hutch.consumers.queue_trigger import QueueTrigger
from hutch.consumers.runtime import connect_servers
from hutch.consumers.worker import Worker
from hutch.entrypoint import Env
from hutch.errors import InvalidInputError
from hutch.settings import Settings
from hutch.versions import Workflows

log = logging.getLogger("hutch.worker")


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    workflows: Workflows | None = None,
    resources: Mapping[str, Any] | None = None,
    on_ready: Callable[[Worker], None] | None = None,
) -> None:
    """Run a worker until ``stop`` is set, then shut it down gracefully.

    Args:
        settings: URLs, namespace, partitions and the ``[[workflows]]`` to load.
        stop: set it (e.g. from a SIGTERM handler) to drain and exit.
        workflows: workflow classes by name (default: ``settings.workflows``).
        resources: extra ``self.env`` bindings.
        on_ready: called once the worker consumes its partitions.
    """
    if not settings.redis_url or not settings.amqp_url:
        raise InvalidInputError(
            "hutch worker needs HUTCH_REDIS_URL and HUTCH_AMQP_URL (or redis_url/amqp_url in hutch.toml)"
        )
    classes = dict(workflows) if workflows is not None else settings.workflow_classes()
    if not classes:
        raise InvalidInputError(
            "no workflows to run: add [[workflows]] to hutch.toml or pass --workflow NAME=module:Class"
        )
    clock = Clock()
    store, transport = await connect_servers(settings, settings.limits)
    try:
        client = Client(
            store, dispatcher_over(store, transport), workflows=list(classes), limits=settings.limits, clock=clock
        )
        env = Env({**bindings(client, classes, settings.binding_names()), **(resources or {})})
        worker = Worker(
            store=store,
            transport=transport,
            workflows=classes,
            settings=settings,
            env=env,
            limits=settings.limits,
            clock=clock,
            distributed=True,
        )
        await worker.start()
        try:
            async with contextlib.AsyncExitStack() as triggers:
                await start_triggers(triggers, client, settings)
                if on_ready is not None:
                    on_ready(worker)
                stopped = asyncio.ensure_future(worker.wait_stopped())
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait([stopped, stopping], return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                stopping.cancel()
        finally:
            await worker.shutdown()
    finally:
        await transport.close()
        await store.close()


async def start_triggers(
    running: contextlib.AsyncExitStack, client: Client, settings: Settings, *, connection_name: str | None = None
) -> list[str]:
    """Start the crons and queue consumers of ``settings`` on ``running``; what started, for a start-up line.

    ``hutch worker`` and ``hutch dev`` both start them here. Crons fire from every process that
    runs them (one instance per fire time wins); queue triggers consume the user's queues next to
    the partitions.

    Args:
        running: the stack that stops them (on its exit).
        client: the client they create instances through.
        settings: the ``[[triggers.crons]]`` and ``[[queues.consumers]]`` to run, and the AMQP URL.
        connection_name: the queue triggers' RabbitMQ connection name (default: the trigger's own).

    Raises:
        InvalidInputError: an entry names a workflow this process does not serve, or is malformed.
    """
    started = []
    crons = settings.triggers.crons
    if crons:
        await running.enter_async_context(CronTrigger(client, crons))
        started.append(f"crons {', '.join(sorted({spec.schedule for spec in crons}))}")
    if settings.queues.consumers:
        named = {"connection_name": connection_name} if connection_name else {}
        queues = QueueTrigger(
            client,
            settings.queues.consumers,
            amqp_url=settings.amqp_url,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            connection_options=ConnectionOptions.from_settings(settings),
            **named,
        )
        await running.enter_async_context(queues)
        started.append(f"queues {', '.join(queues.queues)}")
    return started
