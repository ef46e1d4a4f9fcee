"""Hutch's benchmark suite: the standard workloads of ``WORKLOADS.md`` against the targets.

Run ``python -m bench`` (see ``bench/__main__.py`` for the options). Workloads live in
:mod:`bench.workloads` and take a ``connect()``-style factory, so every runtime (embedded,
RabbitMQ + Redis) runs exactly the same code; :mod:`bench.report` turns measurements into
figures next to their targets.
"""
