"""The in-process change notification embedded clients wait on."""

from engine.watch import InstanceWatch


async def test_a_timed_out_wait_leaves_no_entry_behind() -> None:
    watch = InstanceWatch()
    assert await watch.changed("wf", "i-1", timeout=0.001) is None
    assert watch._waiters == {}


async def test_notify_wakes_the_waiter_with_the_status() -> None:
    import asyncio

    watch = InstanceWatch()
    waiter = asyncio.ensure_future(watch.changed("wf", "i-1", timeout=5))
    await asyncio.sleep(0)  # let the waiter register
    watch.notify("wf", "i-1", "complete")
    assert await waiter == "complete"
    assert watch._waiters == {}
