"""Shared figures for the benchmarks: the percentile is the shipped one (models.evaluation.metrics), so a bench and
`kefu eval` compute p50/p99 the same way."""

from __future__ import annotations

from models.evaluation.metrics import pct

__all__ = ["pct"]
