"""Durations as the Python API accepts them, normalised once to seconds."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from hutch.errors import InvalidDuration

Duration = str | int | float | timedelta

_UNIT_SECONDS = {
    "millisecond": 0.001,
    "ms": 0.001,
    "second": 1.0,
    "sec": 1.0,
    "s": 1.0,
    "minute": 60.0,
    "min": 60.0,
    "m": 60.0,
    "hour": 3600.0,
    "h": 3600.0,
    "day": 86400.0,
    "d": 86400.0,
    "week": 7 * 86400.0,
    "w": 7 * 86400.0,
    "month": 30 * 86400.0,
    "year": 365 * 86400.0,
    "y": 365 * 86400.0,
}

_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")


def to_seconds(value: Duration) -> float:
    """Normalise a duration to seconds.

    Args:
        value: ``"250 milliseconds"``, ``"3 days"``, ``"1 week"`` (singular or plural), an int or
            float number of seconds, or a :class:`~datetime.timedelta`.

    Raises:
        InvalidDuration: the value is negative, not finite, or not in one of those forms.
    """
    if isinstance(value, bool):
        raise InvalidDuration(f"duration {value!r} is a bool; give seconds, a string like '10 seconds' or a timedelta")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        unit = match.group(2).lower() if match else ""
        if unit not in _UNIT_SECONDS and unit.endswith("s"):
            unit = unit[:-1]  # a plural; only stripped when needed, since "ms" and "s" are units themselves
        if not match or unit not in _UNIT_SECONDS:
            raise InvalidDuration(
                f"duration {value!r} is not understood; use e.g. '250 milliseconds', '10 seconds', "
                "'5 minutes', '2 hours', '3 days', '1 week', a number of seconds or a timedelta"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[unit]
    else:
        raise InvalidDuration(
            f"duration {value!r} has type {type(value).__name__}; expected str, int, float or timedelta"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidDuration(f"duration {value!r} must be a finite, non-negative amount of time")
    return seconds
