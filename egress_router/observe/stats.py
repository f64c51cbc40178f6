"""Metrics kept as plain Python numbers on the hot path, made Prometheus families only when scraped.

A proxy adds to a dict per request (no lock, no library call: a prometheus-client counter per request
would cost more than the budget of 5 % of a request). A snapshot is plain data, so the snapshots of
several workers add up, and travel to the process that serves /metrics as one JSON datagram.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Labels = tuple[str, ...]
#: The series of one counter: labels -> value.
Counter = dict[Labels, float]
Kind = Literal["counter", "gauge", "histogram"]

#: Request and connection durations, seconds.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Metric:
    """One metric family: its name (Prometheus style, counters ending in _total), kind, help and label names."""

    name: str
    kind: Kind
    help: str
    labels: Labels = ()
    buckets: tuple[float, ...] = ()


class Stats:
    """The metrics of one process. Counters and histograms only grow; computed series are read when a snapshot is taken."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self.metrics = by_name(metrics)
        self.series: dict[str, dict[Labels, float]] = {m.name: {} for m in self.metrics.values() if m.kind == "counter"}
        self.histograms: dict[str, dict[Labels, list[float]]] = {m.name: {} for m in self.metrics.values() if m.kind == "histogram"}
        self.computed_series: dict[str, Callable[[], Mapping[Labels, float]]] = {}
        self.relays: dict[str, Relayed] = {}

    def counter(self, name: str) -> dict[Labels, float]:
        """The series of a counter, for a hot path to add to directly: `series[labels] = series.get(labels, 0) + n`."""
        return self.series[name]

    def add(self, name: str, labels: Labels = (), amount: float = 1) -> None:
        series = self.series[name]
        series[labels] = series.get(labels, 0) + amount

    def histogram(self, name: str, labels: Labels = ()) -> list[float]:
        """One histogram series: a count per bucket, +Inf, then the sum (see `observe`, or add to it directly)."""
        series = self.histograms[name]
        counts = series.get(labels)
        if counts is None:
            counts = series[labels] = [0.0] * (len(self.metrics[name].buckets) + 2)
        return counts

    def observe(self, name: str, labels: Labels, value: float) -> None:
        observe(self.histogram(name, labels), self.metrics[name].buckets, value)

    def computed(self, name: str, read: Callable[[], Mapping[Labels, float]]) -> None:
        """A series read from state kept elsewhere when a snapshot is taken (open connections, the kernel's rule
        counters): nothing to keep up to date on the hot path."""
        self.computed_series[name] = read

    def relayed(self, name: str) -> Relayed:
        """The byte counter `name` (labels ..., direction), kept by one `Relayed` however many users it has."""
        if name not in self.relays:
            self.relays[name] = Relayed(self, name)
        return self.relays[name]

    def snapshot(self) -> dict[str, list[list[Any]]]:
        """Every series as [labels, value] (histograms: [labels, bucket counts..., sum]); JSON as it stands."""
        taken: dict[str, list[list[Any]]] = {}
        for name, series in self.series.items():
            taken[name] = [[list(labels), value] for labels, value in series.items()]
        for name, hseries in self.histograms.items():
            taken[name] = [[list(labels), list(counts)] for labels, counts in hseries.items()]
        for name, read in self.computed_series.items():
            taken[name] = [[list(labels), value] for labels, value in read().items()]
        return taken


def merge(snapshots: Iterable[Mapping[str, list[list[Any]]]]) -> dict[str, dict[Labels, Any]]:
    """The sum of several processes' snapshots, series by series (bucket by bucket for histograms)."""
    total: dict[str, dict[Labels, Any]] = {}
    for snapshot in snapshots:
        for name, rows in snapshot.items():
            series = total.setdefault(name, {})
            for labels, value in rows:
                key = tuple(labels)
                if isinstance(value, list):
                    known = series.get(key)
                    series[key] = [a + b for a, b in zip(known, value, strict=True)] if known else list(value)
                else:
                    series[key] = series.get(key, 0) + value
    return total


def without_gauges(snapshot: Mapping[str, list[list[Any]]], metrics: Mapping[str, Metric]) -> dict[str, list[list[Any]]]:
    """What of a finished process still counts: its counters and histograms (its gauges ended with it)."""
    return {name: rows for name, rows in snapshot.items() if name in metrics and metrics[name].kind != "gauge"}


class Relayed:
    """Bytes of relays that may run for hours (tunnels, the DNS proxy's connections), counted as they flow.

    A relay registers its live `sent` pair (in, out); a snapshot adds live pairs to what ended relays moved,
    so a long tunnel's traffic shows while it flows and the total never goes back when it ends.
    """

    def __init__(self, stats: Stats, name: str) -> None:
        self.done: Counter = {}  # what ended relays (and plain request bodies) moved; hot paths add to it directly
        self.live: dict[int, tuple[Labels, list[int]]] = {}
        stats.computed(name, self.read)

    def start(self, labels: Labels, sent: list[int]) -> None:
        self.live[id(sent)] = (labels, sent)

    def end(self, sent: list[int]) -> None:
        """The relay is over: its bytes move from live to done in one step (no scrape sees them twice or not at all)."""
        found = self.live.pop(id(sent), None)
        if found is not None:
            labels, _ = found
            count(self.done, *labels, "in", amount=sent[0])
            count(self.done, *labels, "out", amount=sent[1])

    def read(self) -> Counter:
        total = dict(self.done)
        for labels, sent in list(self.live.values()):
            count(total, *labels, "in", amount=sent[0])
            count(total, *labels, "out", amount=sent[1])
        return total


#: Every mode that follows a list file counts its reloads (result: applied or rejected).
CONFIG_RELOADS = Metric("egress_router_config_reloads_total", "counter", "List file changes applied or rejected", ("result",))


def count(series: Counter, *labels: str, amount: float = 1) -> None:
    series[labels] = series.get(labels, 0) + amount


def observe(counts: list[float], buckets: tuple[float, ...], value: float) -> None:
    counts[bisect.bisect_left(buckets, value)] += 1
    counts[-1] += value


def by_name(metrics: Iterable[Metric]) -> dict[str, Metric]:
    return {metric.name: metric for metric in metrics}
