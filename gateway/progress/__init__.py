"""Live progress of one instance, built only from the public client API.

:func:`follow` (:mod:`.poll`) polls :meth:`hutch.Instance.describe` on a short interval; a
:class:`ProgressTracker` (:mod:`.diff`) diffs successive details into :class:`ProgressEvent` s
(attempt started/succeeded/failed, retry scheduled, sleep started/completed, wait
started/received/timed out, ...; :mod:`.model`), and a :class:`ProgressSink` renders them:
``hutch run``'s are :class:`~hutch.gateway.cli.progress_view.HumanSink` and
:class:`~hutch.gateway.cli.progress_view.JsonSink`.
"""

from hutch.gateway.progress.diff import ProgressTracker
from hutch.gateway.progress.model import Active, ProgressEvent, ProgressSink, RunResult
from hutch.gateway.progress.poll import follow

__all__ = ["Active", "ProgressEvent", "ProgressSink", "ProgressTracker", "RunResult", "follow"]
