"""The chaos suite: real ``hutch worker`` processes under faults, and a checker of every guarantee.

``python -m tests.chaos`` runs every scenario in its short form (what CI runs through
``test_chaos.py`` and ``test_multihost.py``), ``python -m tests.chaos --long`` the long one
(hundreds of instances, longer and repeated faults, plus every fault in one run), and
``--only NAME,...`` / ``--list`` / ``--seed N`` pick scenarios and replay one.

- ``workflow.py``: the workflow under test and its execution ledger.
- ``harness.py``: one run (private Redis, RabbitMQ, proxies, workers, load, fault primitives).
- ``scenarios.py``: which faults each scenario injects.
- ``checker.py``: the guarantees, checked from Redis, the ledger and the broker, and the table.
- ``queues.py``: whether the partition queues drained (read from RabbitMQ).
- ``netns.py``: simulated hosts (network namespaces and veth pairs) for ``host-cut``.
"""
