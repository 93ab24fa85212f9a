"""Reading the gateway's /metrics as a user (Prometheus) would."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


class Metrics(dict[tuple[str, tuple[tuple[str, str], ...]], float]):
    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly these labels (0 if absent)."""
        return self.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.items() if n == name and wanted <= set(ls))


def parse(text: str) -> Metrics:
    out = Metrics()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def scrape(client: httpx.AsyncClient) -> Metrics:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    return parse(r.text)


def scrape_sync(base: str) -> Metrics:
    r = httpx.get(f"{base}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    return parse(r.text)
