"""Reading a Prometheus page in tests: scraped over HTTP and parsed by prometheus_client's own text parser."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    types: dict[str, str]  # family name (a counter's without _total) -> counter, gauge, histogram
    samples: list[tuple[str, dict[str, str], float]]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels`` (0 when there is none)."""
        return sum(value for sample, got, value in self.samples
                   if sample == name and all(got.get(k) == v for k, v in labels.items()))


def scrape(url: str) -> Scrape:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    types: dict[str, str] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        samples += [(s.name, dict(s.labels), s.value) for s in family.samples]
    return Scrape(types, samples)
