"""Child processes that cannot outlive the bench or test run that started them.

A worker subprocess left behind by a killed run keeps consuming its namespace's queues and holds
quorum queues open on the shared broker; ``PR_SET_PDEATHSIG`` has the kernel SIGKILL the child
when its parent dies, however the parent died.
"""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for subprocesses: SIGKILL this child when its parent exits (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
