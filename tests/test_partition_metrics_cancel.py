"""A stray cancellation from the broker client while sampling queue depths stops neither the sampler nor the worker."""

from __future__ import annotations

import asyncio
from typing import Any

from hutch.consumers.partition_metrics import PartitionSampler


class _FlakyTransport:
    """``ready_count`` raises CancelledError the first time, as aiormq does for the RPC of a channel it closes."""

    def __init__(self) -> None:
        self.calls = 0

    async def ready_count(self, partition: int) -> int:
        self.calls += 1
        if self.calls == 1:
            raise asyncio.CancelledError
        return 0


async def test_sampler_survives_a_stray_cancellation_and_stops_when_cancelled() -> None:
    transport: Any = _FlakyTransport()
    sampler = PartitionSampler(transport, lambda: [0], interval_s=0.01)
    task = asyncio.create_task(sampler.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while transport.calls < 3:
        assert not task.done(), "the sampler ended on a cancellation it was not given"
        assert loop.time() < deadline, transport.calls
        await asyncio.sleep(0.01)
    task.cancel()
    try:
        await asyncio.wait_for(task, 5)
    except asyncio.CancelledError:
        pass
    assert task.cancelled()
