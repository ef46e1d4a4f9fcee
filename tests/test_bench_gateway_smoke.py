"""The gateway bench runs end to end at toy size against a real ``hutch dev`` subprocess (no timing asserts)."""

from __future__ import annotations

import math
import re

import pytest

from bench.gateway import main

FIGURE = re.compile(r"^embedded gateway (?P<name>[\w -]+?)  (?P<values>(?:\S+=[-\d.]+  )+)\((?P<note>[^)]*)\)$")


def test_prints_every_figure_at_toy_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "12", "--concurrency", "3", "--w3-repeats", "3", "--runtime", "embedded"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# engine=hutch ") and "runtime=embedded" in lines[0]
    figures: dict[str, tuple[dict[str, float], str]] = {}
    for line in lines[1:]:
        match = FIGURE.match(line)
        assert match, line
        pairs = (pair.split("=") for pair in match["values"].split())
        figures[match["name"]] = ({k: float(v) for k, v in pairs}, match["note"])
    assert list(figures) == ["create", "send-event", "W3 event-round-trip"]
    for name in ("create", "send-event"):
        values, note = figures[name]
        assert set(values) == {"requests/s", "p50_ms", "p99_ms"} and note == "n=12 c=3"
        assert values["requests/s"] > 0 and 0 < values["p50_ms"] <= values["p99_ms"]
    values, note = figures["W3 event-round-trip"]
    assert set(values) == {"p50_ms", "p99_ms"} and note == "n=3 sequential"
    assert all(math.isfinite(v) for v in values.values()) and values["p50_ms"] <= values["p99_ms"]


def test_rejects_a_zero_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--concurrency", "0"])
    assert exc.value.code == 2
    assert "--concurrency must be at least 1" in capsys.readouterr().err
