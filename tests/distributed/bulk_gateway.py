"""``hutch gateway`` for the bulk crash test: its bulk runner checkpoints every
``HUTCH_TEST_BULK_BATCH`` instances with a lease of ``HUTCH_TEST_BULK_LEASE_S``, and with
``HUTCH_TEST_BULK_PAUSE`` = ``before`` or ``after`` it pauses ``HUTCH_TEST_BULK_PAUSE_S`` before or
after sending each batch's requests, so that the test's SIGKILL lands there (between marking a
batch's restarts and sending them, or between sending them and recording the batch).

Run as ``python -m tests.distributed.bulk_gateway [gateway options]``; everything else is the real
``hutch gateway`` command.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from hutch.broker.dispatch import BrokerDispatcher
from hutch.bulk import BulkRunner
from hutch.gateway.cli import main


def _pause_around_sending(where: str, seconds: float) -> None:
    send = BrokerDispatcher.control_many

    async def control_many(self: BrokerDispatcher, items: Any, action: Any, **options: Any) -> None:
        if where == "before":
            await asyncio.sleep(seconds)
        await send(self, items, action, **options)
        if where == "after":
            await asyncio.sleep(seconds)

    BrokerDispatcher.control_many = control_many  # type: ignore[method-assign]


if __name__ == "__main__":
    defaults = BulkRunner.__init__.__kwdefaults__
    assert defaults is not None and {"batch", "lease_s"} <= set(defaults)
    defaults["batch"] = int(os.environ["HUTCH_TEST_BULK_BATCH"])
    defaults["lease_s"] = float(os.environ["HUTCH_TEST_BULK_LEASE_S"])
    if os.environ.get("HUTCH_TEST_BULK_PAUSE"):
        _pause_around_sending(os.environ["HUTCH_TEST_BULK_PAUSE"], float(os.environ["HUTCH_TEST_BULK_PAUSE_S"]))
    main(["gateway", *sys.argv[1:]], prog_name="hutch")
