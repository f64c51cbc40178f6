"""Several workers, one /metrics: each worker sends its snapshot to the supervisor once a second.

One datagram socket pair, made before the first fork: every worker writes to one end, the supervisor's
endpoint thread reads the other. The supervisor sums the latest snapshot of each live worker with what
exited workers had counted (so counters never go back), and judges health and readiness from the
reports: a worker that has not reported for a while has an unresponsive loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from egress_router.observe.endpoints import Check, Probes, start_in_thread
from egress_router.observe.exposition import SnapshotCollector, registry_of, render
from egress_router.observe.stats import Labels, Metric, Stats, merge, without_gauges

log = logging.getLogger(__name__)
EVERY = 1.0
#: A worker silent this long is not live: its event loop is stuck.
SILENT_LIMIT = 10.0
MAX_DATAGRAM = 1 << 20


def rows(merged: Mapping[str, Mapping[Labels, Any]]) -> dict[str, list[list[Any]]]:
    """Merged series back in snapshot form, to be merged again."""
    return {name: [[list(labels), value] for labels, value in series.items()] for name, series in merged.items()}


class Reports:
    """The supervisor's side."""

    def __init__(self, metrics: Mapping[str, Metric], workers: int) -> None:
        self.metrics = metrics
        self.workers = workers
        self.receiver, self.sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_DATAGRAM)
        self.receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MAX_DATAGRAM)
        self.latest: dict[int, tuple[float, dict[str, list[list[Any]]], str | None]] = {}  # pid -> (when, snapshot, not ready why)
        self.retired: dict[str, list[list[Any]]] = {}
        self.gone: set[int] = set()  # reaped workers: a report of theirs read late must not bring them back
        self.lock = threading.Lock()
        self.stopping = False

    # the supervisor's main thread -------------------------------------------------------------

    def exited(self, pid: int) -> None:
        with self.lock:
            self.gone.add(pid)
            entry = self.latest.pop(pid, None)
            if entry is not None:
                self.retired = rows(merge([self.retired, without_gauges(entry[1], self.metrics)]))

    def stop(self) -> None:
        self.stopping = True

    # the endpoint thread ----------------------------------------------------------------------

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        self.receiver.setblocking(False)
        loop.add_reader(self.receiver.fileno(), self.receive)

    def receive(self) -> None:
        while True:
            try:
                data = self.receiver.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            report = json.loads(data)
            with self.lock:
                if report["pid"] not in self.gone:
                    self.latest[report["pid"]] = (time.monotonic(), report["snapshot"], report["ready"])

    def merged(self) -> dict[str, dict[Labels, Any]]:
        with self.lock:
            return merge([self.retired, *(snapshot for _, snapshot, _ in self.latest.values())])

    def health(self) -> str | None:
        now = time.monotonic()
        with self.lock:
            silent = sorted(pid for pid, (when, _, _) in self.latest.items() if now - when > SILENT_LIMIT)
        if silent:
            return f"worker(s) {', '.join(map(str, silent))} silent for over {SILENT_LIMIT:g} s (event loop stuck)"
        return None

    def ready(self) -> str | None:
        if self.stopping:
            return "draining: stopping on SIGTERM"
        with self.lock:
            reasons = sorted({why for _, _, why in self.latest.values() if why is not None})
            reporting = len(self.latest)
        if reasons:
            return "; ".join(reasons)
        if reporting < self.workers:
            return f"{reporting} of {self.workers} workers ready"
        return self.health()


def send_report(sender: socket.socket, stats: Stats, ready: Check) -> None:
    report = json.dumps({"pid": os.getpid(), "snapshot": stats.snapshot(), "ready": ready()}).encode()
    try:
        sender.send(report)
    except BlockingIOError:
        pass  # the supervisor is behind: the next report replaces this one
    except OSError as error:  # a report larger than a datagram may be: say so, keep serving (and trying)
        log.error("cannot send this worker's metrics to the supervisor (%d bytes): %s", len(report), error.strerror)


async def report_forever(sender: socket.socket, stats: Stats, ready: Check) -> None:
    """The worker's side: its snapshot and readiness, now and then once a second."""
    sender.setblocking(False)
    while True:
        send_report(sender, stats, ready)
        await asyncio.sleep(EVERY)


class SupervisorEndpoints:
    """The supervisor's endpoints (a runtime.workers.Watcher): started in a thread once the signals are blocked."""

    def __init__(self, port: int, mode: str, metrics: Mapping[str, Metric], workers: int) -> None:
        self.port = port
        self.reports = Reports(metrics, workers)
        self.registry = registry_of(SnapshotCollector(mode, metrics, self.reports.merged))

    def start(self) -> None:
        probes = Probes(self.reports.health, self.reports.ready, lambda: render(self.registry))
        start_in_thread(self.port, probes, self.reports.listen)

    def exited(self, pid: int) -> None:
        self.reports.exited(pid)

    def stop(self) -> None:
        self.reports.stop()
