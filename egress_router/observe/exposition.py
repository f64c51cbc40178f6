"""Snapshots as Prometheus text, through prometheus-client's families and its exposition format."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.core import Metric as Family
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from egress_router import __version__
from egress_router.observe.stats import Labels, Metric

CONTENT_TYPE = CONTENT_TYPE_LATEST


def family(metric: Metric, series: Mapping[Labels, Any]) -> Family:
    labels = list(metric.labels)
    if metric.kind == "counter":
        counter = CounterMetricFamily(metric.name.removesuffix("_total"), metric.help, labels=labels)
        for key, value in sorted(series.items()):
            counter.add_metric(list(key), value)
        return counter
    if metric.kind == "gauge":
        gauge = GaugeMetricFamily(metric.name, metric.help, labels=labels)
        for key, value in sorted(series.items()):
            gauge.add_metric(list(key), value)
        return gauge
    histogram = HistogramMetricFamily(metric.name, metric.help, labels=labels)
    for key, counts in sorted(series.items()):
        running, buckets = 0.0, []
        for bound, count in zip([*metric.buckets, float("inf")], counts[:-1], strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        histogram.add_metric(list(key), buckets, counts[-1])
    return histogram


class SnapshotCollector(Collector):
    """Every metric of `metrics`, read from `read()` (one process's snapshot or several merged) at each scrape."""

    def __init__(self, mode: str, metrics: Mapping[str, Metric], read: Callable[[], Mapping[str, Mapping[Labels, Any]]]) -> None:
        self.mode = mode
        self.metrics = metrics
        self.read = read

    def collect(self) -> Iterator[Family]:
        build = GaugeMetricFamily("egress_router_build_info", "The running version and mode; always 1", labels=["version", "mode"])
        build.add_metric([__version__, self.mode], 1)
        yield build
        current = self.read()
        for name, metric in self.metrics.items():
            yield family(metric, current.get(name, {}))


def registry_of(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
