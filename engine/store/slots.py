"""Slots of concurrency limits in Redis: one script call per limit (slots.lua), pipelined.

A limit's keys share their own hash tag (:meth:`hutch.keys.Keys.limit_holders`), never an
instance's partition tag: the instances under one limit are spread over every partition, so a
slot is taken by a script on the limit's slot, and the instance's own commit follows as a second
write (consumers/slots.py orders the two so that a crash between them leaks nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from importlib import resources
from typing import Any, Literal

from hutch.keys import Keys
from redis.asyncio import Redis
from redis.exceptions import NoScriptError


@dataclass(frozen=True, slots=True)
class SlotCall:
    """One operation on one instance's slot of one limit (slots.lua).

    Attributes:
        op: ``acquire`` (take a slot, else wait in the limit's queue); ``takeover`` (acquire, and a
            slot still held under ``expected`` passes to ``token``: the caller checked it owns the
            partition now); ``release``; ``forget`` (leave the queue, whatever the token: for an
            instance that no longer exists or has finished); ``reap`` (give back a slot still held
            under ``expected``: the caller checked that owner lost the partition and the instance
            does not run).
        workflow: the limit's workflow.
        key: the limit's ``concurrency_key`` value (None: the workflow-wide limit).
        limit: how many slots the limit has.
        member: the instance (hutch.keys.instance_member).
        token: the fencing token of the owner of the instance's partition.
        score: the instance's place in the queue (hutch.concurrency.waiter_score).
        expected: the holder's token a ``takeover`` replaces or a ``reap`` removes.
    """

    op: Literal["acquire", "takeover", "release", "forget", "reap"]
    workflow: str
    key: str | None
    limit: int
    member: str
    token: str
    score: int = 0
    expected: str = ""


class Code(IntEnum):
    """What a slot call found or did (slots.lua)."""

    DENIED = 0  # no slot: the instance waits in the limit's queue
    TAKEN = 1  # this call made the holder record
    HELD = 2  # the holder record is under the caller's token
    FOREIGN = 3  # the holder record is under another token (SlotAnswer.holder)
    REAPED = 4
    DONE = 5


@dataclass(frozen=True, slots=True)
class SlotAnswer:
    """What a :class:`SlotCall` did: whether the instance holds a slot, its place, whom to wake."""

    code: Code
    place: int  # 0-based among the limit's waiters; -1 when it does not wait
    wake: tuple[str, ...]  # waiters a free slot is for (instance members): the caller wakes them
    holder: str | None = None  # the other token a FOREIGN record is under

    @property
    def granted(self) -> bool:
        """Whether the instance holds the slot under the caller's token."""
        return self.code in (Code.TAKEN, Code.HELD)


class SlotStore:
    """Runs slot calls against one Redis (or Redis Cluster) under one key layout."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._script = "\n".join(
            line
            for line in resources.files("hutch.store").joinpath("slots.lua").read_text().splitlines()
            if not line.lstrip().startswith("--")
        )
        self._sha: str | None = None

    async def run(self, calls: Sequence[SlotCall]) -> list[SlotAnswer]:
        """Apply ``calls`` in one pipelined round trip (each atomic on its limit's slot), in order."""
        if not calls:
            return []
        if self._sha is None:
            self._sha = await self._redis.script_load(self._script)
        results = await self._send(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:  # Redis restarted or its scripts were flushed: nothing of those calls ran
            self._sha = await self._redis.script_load(self._script)
            for i, result in zip(missing, await self._send([calls[i] for i in missing]), strict=True):
                results[i] = result
        answers: list[SlotAnswer] = []
        for result in results:
            if isinstance(result, Exception):
                raise result
            wake = tuple(_text(m) for m in result[3:])
            code = Code(int(result[0]))
            answers.append(SlotAnswer(code, int(result[1]), wake, _text(result[2]) if code is Code.FOREIGN else None))
        return answers

    async def _send(self, calls: Sequence[SlotCall]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for c in calls:
            holders, waiters = self._keys.limit_holders(c.workflow, c.key), self._keys.limit_waiters(c.workflow, c.key)
            pipe.evalsha(self._sha, 2, holders, waiters, c.op, c.limit, c.member, c.token, c.score, c.expected)  # type: ignore[arg-type]
        return list(await pipe.execute(raise_on_error=False))

    async def statuses(self, instances: Sequence[tuple[int, str, str]]) -> list[str | None]:
        """The stored status of each (partition, workflow, instance id); None for one that does not exist."""
        pipe = self._redis.pipeline(transaction=False)
        for partition, workflow, instance_id in instances:
            pipe.hget(self._keys.meta(partition, workflow, instance_id), "status")
        return [None if raw is None else _text(raw) for raw in await pipe.execute()]

    async def owner(self, partition: int) -> str | None:
        """The partition's fencing token in Redis (None: no owner)."""
        raw = await self._redis.get(self._keys.owner(partition))
        return None if raw is None else _text(raw)

    async def holders_page(self, workflow: str, key: str | None, cursor: int, count: int) -> tuple[int, dict[str, str]]:
        """One HSCAN page of the limit's holders: (the next cursor, 0 at the end; instance -> token)."""
        cursor, raw = await self._redis.hscan(self._keys.limit_holders(workflow, key), cursor, count=count)
        assert isinstance(raw, dict)  # a list only with no_values=True
        return int(cursor), {_text(k): _text(v) for k, v in raw.items()}

    async def runs_under(self, instances: Sequence[tuple[int, str, str]]) -> list[tuple[str | None, str | None]]:
        """For each (partition, workflow, instance id): its partition's token, then the instance's status.

        Read in that order (both under the partition's hash tag: one node, in order): a token that
        is not a holder's any more never comes back, so a status read after it is one that owner
        can no longer change.
        """
        pipe = self._redis.pipeline(transaction=False)
        for partition, workflow, instance_id in instances:
            pipe.get(self._keys.owner(partition))
            pipe.hget(self._keys.meta(partition, workflow, instance_id), "status")
        raw = await pipe.execute()
        return [
            (None if o is None else _text(o), None if s is None else _text(s))
            for o, s in zip(raw[::2], raw[1::2], strict=True)
        ]

    async def holders(self, workflow: str, key: str | None) -> dict[str, str]:
        """The instances holding a slot of the limit, with their owners' tokens."""
        raw = await self._redis.hgetall(self._keys.limit_holders(workflow, key))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def place(self, workflow: str, key: str | None, member: str) -> int | None:
        """The instance's 0-based place among the limit's waiters, or None when it does not wait."""
        rank = await self._redis.zrank(self._keys.limit_waiters(workflow, key), member)
        return None if rank is None else int(rank)  # type: ignore[arg-type]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
