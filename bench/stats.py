"""Shared figures for the benchmarks."""

from __future__ import annotations


def pct(values: list[float], p: float) -> float:
    """The nearest-rank p-th percentile of durations in seconds, in milliseconds (NaN when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))] * 1000
