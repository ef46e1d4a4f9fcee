"""Workflow shapes the diagram analyser must get right; each class has a golden JSON next to this file.

These workflows are read, never run: they only have to import. Each class docstring says what
its diagram must show.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from hutch import EventTimeoutError, NonRetryableError, RetryConfig, StepConfig, WorkflowEntrypoint, WorkflowStep

RETRY_FAST = {"retries": {"limit": 1, "delay": "10 milliseconds"}}


def fetch(*args: Any) -> dict[str, Any]:
    """Stands for any call a step makes."""
    return {"args": args}


async def notify_all(step: WorkflowStep, recipients: list[str]) -> None:
    """A module-level helper that runs a step per recipient."""
    for recipient in recipients:
        await step.do(f"notify {recipient}", partial(fetch, recipient))


def audit_log(step: WorkflowStep, message: str) -> None:
    """A module-level helper that receives the step object but runs no step: trimmed."""
    print(message, step)


class LoopsWorkflow(WorkflowEntrypoint):
    """for with steps (and a for/else), while polling an event with break, a loop without steps (trimmed)."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        items = event.payload["items"]
        total = 0
        for item in items:  # no steps: trimmed
            total += item["qty"]
        for index, item in enumerate(items):
            await step.do(f"reserve {item['sku']}", partial(fetch, index))
            if item.get("fragile"):
                await step.sleep(f"pack carefully {index}", "5 seconds")
        else:
            await step.do("all reserved", lambda: fetch(total))
        polls = 0
        while True:
            status = await step.wait_for_event("carrier update", "carrier", timeout="1 hour")
            if status.payload.get("delivered"):
                break
            polls += 1
            if polls > 10:
                raise NonRetryableError("carrier never delivered")
        return total


class GatherWorkflow(WorkflowEntrypoint):
    """gather over a generator and over *[...], gather of explicit awaitables, asyncio.wait over a list."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        urls = event.payload["urls"]
        pages = await asyncio.gather(*(step.do(f"fetch {url}", partial(fetch, url)) for url in urls))
        sizes = await asyncio.gather(*[step.do(f"measure {i}", partial(fetch, i)) for i, _ in enumerate(pages) if i])
        left, right, _ = await asyncio.gather(
            step.do("left", lambda: fetch("l")),
            self.side(step, "right"),
            asyncio.sleep(0),
        )
        await asyncio.wait([step.do(f"ping {n}", partial(fetch, n)) for n in range(3)])
        return [pages, sizes, left, right]

    async def side(self, step: WorkflowStep, which: str) -> Any:
        await step.sleep(f"settle {which}", 2)
        return await step.do(f"read {which}", lambda: fetch(which))


class HelpersWorkflow(WorkflowEntrypoint):
    """Steps in helper methods (followed transitively), a module helper, helpers without steps trimmed."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        order = self.parse(event.payload)  # does not receive the step object: not followed
        self.log_only(step, "start")  # receives it but runs no step: trimmed
        audit_log(step, "start")  # module helper without steps: trimmed
        charge = await self.charge(step, order)
        await notify_all(step, order["recipients"])
        await self.finish(s=step)
        return charge

    def parse(self, payload: Any) -> dict[str, Any]:
        return dict(payload)

    def log_only(self, step: WorkflowStep, message: str) -> None:
        print(message)

    async def charge(self, step: WorkflowStep, order: dict[str, Any]) -> Any:
        await step.do("authorize", lambda: fetch(order))
        return await self.capture(step, order)

    async def capture(self, wf_step: WorkflowStep, order: dict[str, Any]) -> Any:
        return await wf_step.do("capture", lambda: fetch(order), config=RETRY_FAST)

    async def finish(self, s: WorkflowStep) -> None:
        await s.sleep("grace period", timedelta(hours=1))


class TryWorkflow(WorkflowEntrypoint):
    """try with several handlers, else and finally; a try without steps trimmed; a bare except."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        try:
            parsed = int(event.payload["n"])  # no steps: this try is trimmed
        except (KeyError, ValueError):
            parsed = 0
        try:
            decision = await step.wait_for_event("approval", "approval", timeout="2 days")
        except EventTimeoutError:
            await step.do("escalate", lambda: fetch("escalate"))
            return "escalated"
        except (NonRetryableError, ValueError) as error:
            await step.do("record failure", partial(fetch, str(error)))
            raise
        except Exception:
            pass
        else:
            await step.do("apply decision", lambda: fetch(decision.payload))
        finally:
            await step.do("cleanup", lambda: fetch(parsed))
        try:
            await step.do("best effort", lambda: fetch())
        except:  # noqa: E722
            pass
        return "done"


class BranchesWorkflow(WorkflowEntrypoint):
    """Early returns, if/elif/else (a middle arm without steps kept, a trailing one dropped), raise."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        payload = event.payload
        if not payload:
            return {"skipped": True}
        if payload.get("kind") == "invalid":
            raise NonRetryableError("invalid kind")
        kind = payload["kind"]
        if kind == "express":
            await step.do("ship express", lambda: fetch("express"))
        elif kind == "pickup":
            pass
        elif kind == "freight":
            await step.sleep("wait for truck", "1 day")
            await step.do("ship freight", lambda: fetch("freight"))
        else:
            print("nothing to do")  # no steps: this trailing arm is dropped
        if payload.get("gift"):
            await step.do("wrap", lambda: fetch("wrap"))
        result = await (step.do("vip", lambda: fetch()) if payload.get("vip") else step.do("regular", lambda: fetch()))
        return result


class MatchWorkflow(WorkflowEntrypoint):
    """match with literal, class, guarded and wildcard cases; a match without steps trimmed."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        match event.payload.get("mode"):  # no steps: trimmed
            case "a":
                mode = 1
            case _:
                mode = 2
        match event.payload:
            case {"type": "refund", "amount": amount} if amount > 100:
                await step.wait_for_event("manager ok", "refund-approval")
                await step.do("refund", lambda: fetch(amount))
            case {"type": "refund"}:
                await step.do("refund", lambda: fetch())
            case {"type": "noop"}:
                pass
            case _:
                await step.do("unknown request", lambda: fetch(mode))
        return mode


class TasksWorkflow(WorkflowEntrypoint):
    """Steps started without await and resolved later: a variable, create_task, a list built in a loop."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        quote = step.do("get quote", lambda: fetch("quote"))  # starts now
        audit = asyncio.create_task(self.audit(step, "start"))  # starts now
        await step.do("validate", lambda: fetch("validate"))
        price = await quote  # resolved here
        tasks = []
        for sku in event.payload["skus"]:
            tasks.append(step.do(f"reserve {sku}", partial(fetch, sku)))
        reservations = await asyncio.gather(*tasks)
        pending = [step.do(f"label {n}", partial(fetch, n)) for n in range(2)]
        for task in asyncio.as_completed(pending):
            await task
        await audit
        return [price, reservations]

    async def audit(self, step: WorkflowStep, what: str) -> None:
        await step.do(f"audit {what}", lambda: fetch(what))


class TaskGroupWorkflow(WorkflowEntrypoint):
    """asyncio.TaskGroup: create_task in a loop (fan-out), a single task, inline awaits in the body."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        async with asyncio.TaskGroup() as tg:
            for region in event.payload["regions"]:
                tg.create_task(self.sync_region(step, region))
            tg.create_task(step.do("sync catalog", lambda: fetch("catalog")))
            await step.do("inline", lambda: fetch("inline"))
        coros = [self.sync_region(step, r) for r in ("eu", "us")]  # not started until gathered
        await asyncio.gather(*coros)
        return None

    async def sync_region(self, step: WorkflowStep, region: str) -> None:
        await step.do(f"sync {region}", lambda: fetch(region))


class LocalFunctionsWorkflow(WorkflowEntrypoint):
    """Nested local functions using the step object through their closure; one without steps trimmed."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        def summarize(items: list[Any]) -> int:  # no steps: trimmed
            return len(items)

        async def process(item: Any) -> Any:
            async def enrich() -> Any:
                return await step.do(f"enrich {item}", lambda: fetch(item))

            enriched = await enrich()
            await step.sleep("throttle", "100 milliseconds")
            return enriched

        results = []
        for item in event.payload["items"]:
            results.append(await process(item))
        return summarize(results)


class NamesAndConfigsWorkflow(WorkflowEntrypoint):
    """f-string names (conversions, format specs), a dynamic name, literal and non-literal configs and durations."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        order_id = event.payload["orderId"]
        name = event.payload["stepName"]
        config = {"retries": {"limit": event.payload["retries"]}}
        await step.do(f"charge {order_id}", lambda: fetch(order_id), config={"retries": {"limit": 3}, "timeout": 30})
        await step.do(f"ship {order_id!r} at {event.payload['at']:>10}", lambda: fetch(), config=config)
        await step.do(name, lambda: fetch(), config=StepConfig(retries=RetryConfig(limit=2, backoff="linear")))
        await step.do(None, fetch, config=RETRY_FAST)
        await step.do("dynamic config", lambda: fetch(), config=StepConfig(timeout=event.payload["timeout"]))

        @step.do
        async def bare_decorator() -> Any:
            return fetch()

        @step.do(config={"timeout": "1 minute"})
        def unnamed() -> Any:
            return fetch()

        await bare_decorator()
        await unnamed()
        await step.sleep("literal seconds", 30)
        await step.sleep("timedelta", timedelta(minutes=5))
        await step.sleep_until("launch", datetime(2030, 1, 1, tzinfo=UTC))
        await step.wait_for_event("default timeout", "go")
        await step.wait_for_event("dynamic", event.payload["type"], timeout=event.payload["timeout"])
        return None


class DagWorkflow(WorkflowEntrypoint):
    """A diamond DAG, a dependency already awaited (not expanded again), a call-form step with depends."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        @step.do("a")
        async def a() -> int:
            return 1

        @step.do("b")
        async def b() -> int:
            return 2

        @step.do("c", depends=[a, b], concurrent=True)
        async def c(a: int, b: int) -> int:
            return a + b

        @step.do("d", depends=[a, c])
        async def d(a: int, c: int) -> int:
            return a * c

        first = await a()
        final = await d()
        again = await step.do("e", lambda x: x + 1, depends=[d])
        return [first, final, again]


class SagaWorkflow(WorkflowEntrypoint):
    """with_rollback steps with undos (one with its own config), rollback_all continuing on errors."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        @step.with_rollback("reserve", config={"retries": {"limit": 2}})
        async def reserve() -> Any:
            return fetch("reserve")

        @reserve.undo
        async def release(error: Exception, reservation: Any) -> None:
            fetch(error, reservation)

        @step.with_rollback
        async def pay() -> Any:
            return fetch("pay")

        @pay.undo(config=RETRY_FAST)
        def refund(error: Exception, payment: Any) -> None:
            fetch(error, payment)

        try:
            await reserve()
            await pay()
            await step.do("ship", lambda: fetch("ship"))
        except Exception as error:
            await step.rollback_all(error, continue_on_error=True)
            raise
        return None


class RecursiveWorkflow(WorkflowEntrypoint):
    """A helper that calls itself: analysed once, the recursive call points back at it."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        return await self.walk(step, event.payload["tree"], 0)

    async def walk(self, step: WorkflowStep, node: dict[str, Any], depth: int) -> int:
        await step.do(f"visit {node['id']}", lambda: fetch(node["id"]))
        for child in node.get("children", []):
            await self.walk(step, child, depth + 1)
        return depth


class InvokeWorkflow(WorkflowEntrypoint):
    """Child workflows: awaited with a literal name, id and config; started early by a binding and
    awaited later; and a helper whose only step is an invoke (kept, since an invoke is a step)."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        order = event.payload["order"]
        pending = step.invoke("reserve", self.env.STOCK, {"order": order}, config=event.payload["close"])
        invoice = await step.invoke(
            f"bill {order}", "billing", {"order": order}, id=f"bill-{order}", config={"parent_close": "abandon"}
        )
        await self.ship(step, order)
        return {"invoice": invoice, "stock": await pending}

    async def ship(self, step: WorkflowStep, order: str) -> None:
        await step.invoke("ship", "shipping", {"order": order}, id="ship-1")


class NoStepsWorkflow(WorkflowEntrypoint):
    """No steps at all: run() stays, with nothing but its return."""

    async def run(self, event: Any, step: WorkflowStep) -> Any:
        audit_log(step, "nothing")
        return event.payload
