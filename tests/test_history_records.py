"""The typed history records (hutch.history) against the stored format.

A record kind's TypedDict *is* its stored shape: these tests pin the msgpack bytes of every kind
(the wire format must not change: stored histories have to keep decoding) and check every record
of the golden histories against its kind's required and optional keys.
"""

from __future__ import annotations

import typing
from typing import Any

import pytest
from hutch.history import (
    AttemptEnded,
    AttemptStarted,
    CancelCommand,
    InvokeCommand,
    Lifecycle,
    PatchMarker,
    Record,
    Resolution,
    Retimed,
    SleepCommand,
    StepCommand,
    WaitCommand,
    decode_record,
    encode_record,
    key_of,
)

from tests.test_golden_histories import HISTORIES, load

T = 1_700_000_000_000

step: StepCommand = {
    "k": "step",
    "n": "charge",
    "c": 1,
    "g": 0,
    "t": T,
    "cfg": {"retries": {"limit": 2}},
    "deps": ["reserve"],
}
sleep: SleepCommand = {"k": "sleep", "n": "nap", "c": 1, "g": 1, "t": T, "due": T + 1000}
wait: WaitCommand = {"k": "wait", "n": "approval", "c": 2, "g": 1, "t": T, "due": T + 60_000, "type": "approved"}
invoke: InvokeCommand = {
    "k": "invoke",
    "n": "bill",
    "c": 1,
    "g": 0,
    "t": T,
    "wf": "billing",
    "id": "order-1-bill-0123456789ab",
    "pb": b"\x81\xa1x\x01",
    "close": "terminate",
}
cancel: CancelCommand = {"k": "cancel", "ref": "wait", "n": "approval", "c": 2, "g": 2, "t": T + 500}
value: Resolution = {"k": "res", "ref": "step", "n": "charge", "c": 1, "ok": True, "g": 0, "t": T + 100, "vb": b"\x2a"}
event: Resolution = {
    "k": "res",
    "ref": "wait",
    "n": "approval",
    "c": 1,
    "ok": True,
    "g": 3,
    "t": T + 200,
    "ev": {"type": "approved", "payload": {"by": "ann"}, "ts": T + 150, "id": "e1"},
}
error: Resolution = {
    "k": "res",
    "ref": "step",
    "n": "charge",
    "c": 2,
    "ok": False,
    "g": 4,
    "t": T + 300,
    "err": {"name": "ValueError", "message": "declined"},
}
attempt: AttemptStarted = {"k": "att", "n": "charge", "c": 1, "a": 1, "t": T + 10}
attempt_end: AttemptEnded = {
    "k": "attend",
    "n": "charge",
    "c": 1,
    "a": 1,
    "ok": False,
    "t": T + 20,
    "err": {"name": "TimeoutError", "message": "slow"},
    "retry_at": T + 1020,
}
pause: Lifecycle = {"k": "life", "what": "paused", "t": T + 400, "g": 5}
retime: Retimed = {"k": "retime", "ref": "retry", "n": "charge", "c": 1, "due": T + 2000, "t": T + 600}
patch: PatchMarker = {"k": "patch", "n": "charge-v2", "g": 1, "t": T + 700, "dep": True}

# The stored bytes of each record, as written by every version so far (key order included:
# msgpack keeps the order the engine builds a record in).
GOLDEN: list[tuple[Record, str]] = [
    (
        step,
        "87a16ba473746570a16ea6636861726765a16301a16700a174cf0000018bcfe56800a363666781a77265747269657381a56c696d6974"
        "02a46465707391a772657365727665",
    ),
    (sleep, "86a16ba5736c656570a16ea36e6170a16301a16701a174cf0000018bcfe56800a3647565cf0000018bcfe56be8"),
    (
        wait,
        "87a16ba477616974a16ea8617070726f76616ca16302a16701a174cf0000018bcfe56800a3647565cf0000018bcfe65260a474797065"
        "a8617070726f766564",
    ),
    (
        invoke,
        "89a16ba6696e766f6b65a16ea462696c6ca16301a16700a174cf0000018bcfe56800a27766a762696c6c696e67a26964b96f72646572"
        "2d312d62696c6c2d303132333435363738396162a27062c40481a17801a5636c6f7365a97465726d696e617465",
    ),
    (cancel, "86a16ba663616e63656ca3726566a477616974a16ea8617070726f76616ca16302a16702a174cf0000018bcfe569f4"),
    (value, "88a16ba3726573a3726566a473746570a16ea6636861726765a16301a26f6bc3a16700a174cf0000018bcfe56864a27662c4012a"),
    (
        event,
        "88a16ba3726573a3726566a477616974a16ea8617070726f76616ca16301a26f6bc3a16703a174cf0000018bcfe568c8a2657684a474"
        "797065a8617070726f766564a77061796c6f616481a26279a3616e6ea27473cf0000018bcfe56896a26964a26531",
    ),
    (
        error,
        "88a16ba3726573a3726566a473746570a16ea6636861726765a16302a26f6bc2a16704a174cf0000018bcfe5692ca365727282a46e61"
        "6d65aa56616c75654572726f72a76d657373616765a86465636c696e6564",
    ),
    (attempt, "85a16ba3617474a16ea6636861726765a16301a16101a174cf0000018bcfe5680a"),
    (
        attempt_end,
        "88a16ba6617474656e64a16ea6636861726765a16301a16101a26f6bc2a174cf0000018bcfe56814a365727282a46e616d65ac54696d"
        "656f75744572726f72a76d657373616765a4736c6f77a872657472795f6174cf0000018bcfe56bfc",
    ),
    (pause, "84a16ba46c696665a477686174a6706175736564a174cf0000018bcfe56990a16705"),
    (
        retime,
        "86a16ba6726574696d65a3726566a57265747279a16ea6636861726765a16301a3647565cf0000018bcfe56fd0a174cf0000018bcfe5"
        "6a58",
    ),
    (patch, "85a16ba57061746368a16ea96368617267652d7632a16701a174cf0000018bcfe56abca3646570c3"),
]

# Each record kind's TypedDict, by the value of its "k" key.
KINDS: dict[str, Any] = {typing.get_args(typing.get_type_hints(kind)["k"])[0]: kind for kind in typing.get_args(Record)}


@pytest.mark.parametrize(("record", "stored"), GOLDEN, ids=[f"{r['k']}-{i}" for i, (r, _) in enumerate(GOLDEN)])
def test_every_record_kind_encodes_to_its_stored_bytes_and_back(record: Record, stored: str) -> None:
    assert encode_record(record).hex() == stored
    assert decode_record(bytes.fromhex(stored)) == record


def test_the_golden_bytes_cover_every_record_kind() -> None:
    assert (
        {r["k"] for r, _ in GOLDEN}
        == set(KINDS)
        == {
            "step",
            "sleep",
            "wait",
            "invoke",
            "cancel",
            "res",
            "att",
            "attend",
            "life",
            "retime",
            "patch",
        }
    )


def test_every_golden_bytes_record_has_exactly_its_kinds_keys() -> None:
    for record, _ in GOLDEN:
        kind = KINDS[record["k"]]
        assert kind.__required_keys__ <= set(record) <= kind.__required_keys__ | kind.__optional_keys__, record


@pytest.mark.parametrize("name", sorted(p.stem for p in HISTORIES.glob("*.json")))
def test_every_recorded_history_record_fits_its_kind(name: str) -> None:
    """Histories stored by real runs have, per kind, every required key and no key the types do not know."""
    for record in load(name)["history"]:
        kind = KINDS.get(record["k"])
        assert kind is not None, f"{name}: unknown record kind {record['k']!r}"
        keys = set(record)
        missing = kind.__required_keys__ - keys
        unknown = keys - kind.__required_keys__ - kind.__optional_keys__
        assert not missing and not unknown, f"{name}: {record} lacks {sorted(missing)}, has unknown {sorted(unknown)}"
        # Round trip through the codec: a stored record decodes to itself.
        assert decode_record(encode_record(record)) == record


def test_key_of_names_the_command_a_record_is_about() -> None:
    assert key_of(step) == ("step", "charge", 1)
    assert key_of(wait) == ("wait", "approval", 2)
    assert key_of(cancel) == ("wait", "approval", 2)
    assert key_of(event) == ("wait", "approval", 1)
    assert key_of(attempt) == key_of(attempt_end) == ("step", "charge", 1)
