"""Code versions of workflows: what an instance records it started on, and which class runs it.

Every instance records, when it starts, the version of the code it starts on (instance meta field
``ver``): the class attribute ``version`` when the class sets one, else a hash of the class's
source (:func:`version_of`). A worker may register several classes under one workflow name
(``{"order": [OrderV1, OrderV2]}``, or ``versions = [...]`` in a hutch.toml ``[[workflows]]``
entry); :class:`WorkflowVersions` holds them. New instances start on the newest (the last
registered); an instance that started keeps running on its own version, and one whose version no
local class has is not run at all (:meth:`WorkflowVersions.resolve` gives no class): it waits, and
a worker that has the version runs it once it owns the instance's partition.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping, Sequence

from hutch.entrypoint import WorkflowEntrypoint
from hutch.errors import InvalidInputError

WorkflowClasses = type[WorkflowEntrypoint] | Sequence[type[WorkflowEntrypoint]]
"""What one workflow name is registered with: a class, or its versions oldest first."""

Workflows = Mapping[str, WorkflowClasses]
"""Workflow name → its class or classes (``connect(workflows=...)``, the worker, the CLI)."""

META_FIELD = "ver"
"""The instance meta field holding the version an instance started on (msgpack, like other fields)."""

WAITING_FIELD = "vwait"
"""The instance meta field naming the version an instance waits for (set by an owner that lacks it)."""


def version_of(cls: type[WorkflowEntrypoint]) -> str:
    """The code version of a workflow class: its own ``version`` attribute, else a hash of its source.

    Only a ``version`` the class itself sets counts: a subclass that changes ``run()`` must not
    pass as its parent's version by inheriting the attribute. The hash covers the class body (12
    hex digits of its SHA-256); a class whose source cannot be read (built at run time) hashes its
    qualified name instead.
    """
    known = _computed.get(cls)
    if known is None:
        known = _computed[cls] = _version_of(cls)
    return known


_computed: dict[type[WorkflowEntrypoint], str] = {}  # classes are few and live as long as the process


def _version_of(cls: type[WorkflowEntrypoint]) -> str:
    cls = vars(cls).get("__hutch_workflow__", cls)  # the testing toolkit's instrumented subclass
    declared = vars(cls).get("version")
    if declared is not None:
        if not isinstance(declared, str) or not declared:
            raise InvalidInputError(f"{cls.__qualname__}.version must be a non-empty string, got {declared!r}")
        return declared
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        source = f"{cls.__module__}:{cls.__qualname__}"
    return hashlib.sha256(source.encode()).hexdigest()[:12]


class WorkflowVersions:
    """The classes registered under one workflow name, oldest first: the last one is the newest.

    Raises:
        InvalidInputError: no class, something that is not a :class:`WorkflowEntrypoint` subclass,
            or two classes with the same version.
    """

    __slots__ = ("_classes", "name", "newest", "newest_version", "oldest")

    def __init__(self, name: str, classes: WorkflowClasses) -> None:
        listed = [classes] if isinstance(classes, type) else list(classes)
        if not listed:
            raise InvalidInputError(f"workflow {name!r} has no class registered")
        self.name = name
        self._classes: dict[str, type[WorkflowEntrypoint]] = {}
        for cls in listed:
            if not (isinstance(cls, type) and issubclass(cls, WorkflowEntrypoint)):
                raise InvalidInputError(f"workflow {name!r} must be a WorkflowEntrypoint subclass, got {cls!r}")
            version = version_of(cls)
            other = self._classes.setdefault(version, cls)
            if other is not cls:
                raise InvalidInputError(
                    f"workflow {name!r}: {other.__qualname__} and {cls.__qualname__} both have version {version!r}; "
                    "give each class its own `version`"
                )
        self.oldest = listed[0]
        self.newest = listed[-1]
        self.newest_version = version_of(self.newest)

    @property
    def versions(self) -> list[str]:
        """The registered versions, oldest first."""
        return list(self._classes)

    def resolve(self, version: str | None, *, started: bool) -> tuple[str | None, type[WorkflowEntrypoint] | None]:
        """The version an instance runs on and the class that runs it (None: no local class has it).

        ``version``: what the instance recorded (meta ``ver``). An instance that has not started
        yet starts on the newest. One that started before versions were recorded has none and runs
        on the oldest class: the code that was deployed before a second version was added.
        """
        if version is not None:
            return version, self._classes.get(version)
        if not started:
            return self.newest_version, self.newest
        return None, self.oldest


def registry(workflows: Workflows) -> dict[str, WorkflowVersions]:
    """Every workflow's :class:`WorkflowVersions`, by name (checked: see :class:`WorkflowVersions`)."""
    return {name: WorkflowVersions(name, classes) for name, classes in workflows.items()}
