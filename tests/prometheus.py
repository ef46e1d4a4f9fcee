"""Reading a ``/metrics`` page in tests, with prometheus_client's own parser (so the page must parse)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the page: (sample name, its labels) → value. Raises if the page does not parse."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(
    text_or_samples: str | dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The value of the sample ``name`` with exactly these labels; 0 when the page has none."""
    parsed = samples(text_or_samples) if isinstance(text_or_samples, str) else text_or_samples
    return parsed.get((name, frozenset(labels.items())), 0.0)


def families(text: str) -> dict[str, str]:
    """The families of the page: name → type."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}
