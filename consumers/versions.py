"""What a worker makes visible about instances it cannot run because it lacks their code version.

Such an instance is not run (see :mod:`hutch.versions`): its owner records the version it waits
for in the instance's meta (``describe()`` shows it), and this module logs one line and counts it
in the ``hutch.instances.version_missing`` OpenTelemetry counter (attributes: workflow, version),
once per instance and worker — not on every redelivery or timer that finds it still waiting.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from opentelemetry import metrics

log = logging.getLogger("hutch.worker")

VERSION_MISSING_METRIC = "hutch.instances.version_missing"
"""Counter: instances a worker found it cannot run because no class of it has their version."""

_REMEMBERED = 16_384  # instances remembered as reported; a forgotten one is reported again


class VersionWaits:
    """Reports each instance waiting for a version once per worker: a log line and the counter."""

    def __init__(self, worker_id: str, versions: dict[str, list[str]], *, meter: metrics.Meter | None = None) -> None:
        self._worker_id = worker_id
        self._versions = versions
        self._reported: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._counter = (meter or metrics.get_meter("hutch")).create_counter(
            VERSION_MISSING_METRIC,
            unit="{instance}",
            description="Instances not run because this worker has no class of their code version",
        )
        self.reported = 0  # instances reported so far (what the counter added on this worker)

    def waiting(self, workflow: str, instance_id: str, version: str) -> None:
        """``instance_id`` needs ``version``, which no class of this worker has."""
        key = (workflow, instance_id)
        if self._reported.get(key) == version:
            return
        self._reported[key] = version
        self._reported.move_to_end(key)
        if len(self._reported) > _REMEMBERED:
            self._reported.popitem(last=False)
        self.reported += 1
        self._counter.add(1, {"workflow": workflow, "version": version})
        log.warning(
            "instance %s/%s waits for version %r of its workflow: worker %s has only %s; "
            "it runs once a worker with that version owns its partition",
            workflow,
            instance_id,
            version,
            self._worker_id,
            ", ".join(repr(v) for v in self._versions.get(workflow, [])),
        )
