"""Several workers, one /metrics: each worker sends its snapshot to the supervisor's endpoints once a second.

The endpoints run in a process of their own, a child of the supervisor forked before the workers (the
supervisor stays single-threaded, so forking a worker never copies a running server). One datagram socket
pair, made before the first fork: every worker writes its reports to one end, and the supervisor its news
(a worker reaped, a stop signal) to the same end, so a worker's last report is always read before its exit;
the endpoints' process reads the other end. It sums the latest snapshot of each live worker with what exited
workers had counted (so counters never go back), and judges health and readiness from the reports: a worker
that has not reported for a while has an unresponsive loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from egress_router.observe.endpoints import Check, Probes, check_port, serve_forever
from egress_router.observe.exposition import SnapshotCollector, registry_of, render
from egress_router.observe.stats import Labels, Metric, Stats, merge, without_gauges

log = logging.getLogger(__name__)
EVERY = 1.0
#: A worker silent this long is not live: its event loop is stuck.
SILENT_LIMIT = 10.0
MAX_DATAGRAM = 1 << 20
#: How long the supervisor waits for room in the socket for its news (the endpoints read it at once unless stuck).
NEWS_WAIT = 1.0


def rows(merged: Mapping[str, Mapping[Labels, Any]]) -> dict[str, list[list[Any]]]:
    """Merged series back in snapshot form, to be merged again."""
    return {name: [[list(labels), value] for labels, value in series.items()] for name, series in merged.items()}


class Reports:
    """What the endpoints' process knows of the workers, from what it reads."""

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

    def exited(self, pid: int) -> None:
        with self.lock:
            self.gone.add(pid)
            entry = self.latest.pop(pid, None)
            if entry is not None:
                self.retired = rows(merge([self.retired, without_gauges(entry[1], self.metrics)]))

    def stop(self) -> None:
        self.stopping = True

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        self.receiver.setblocking(False)
        loop.add_reader(self.receiver.fileno(), self.receive)

    def receive(self) -> None:
        """Every datagram waiting: a worker's report, or the supervisor's news."""
        while True:
            try:
                data = self.receiver.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            message = json.loads(data)
            if "exited" in message:
                self.exited(message["exited"])
            elif "stopping" in message:
                self.stop()
            else:
                with self.lock:
                    if message["pid"] not in self.gone:
                        self.latest[message["pid"]] = (time.monotonic(), message["snapshot"], message["ready"])

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
    """The supervisor's endpoints (a runtime.workers.Watcher): served by a process of their own, which the
    supervisor forks before the workers and tells, through the report socket, what it does."""

    def __init__(self, port: int, mode: str, metrics: Mapping[str, Metric], workers: int) -> None:
        self.port = port
        self.reports = Reports(metrics, workers)
        self.registry = registry_of(SnapshotCollector(mode, metrics, self.reports.merged))

    # the supervisor ---------------------------------------------------------------------------

    def prepare(self) -> None:
        check_port(self.port)

    def exited(self, pid: int) -> None:
        self.tell({"exited": pid})

    def stop(self) -> None:
        self.tell({"stopping": True})

    def tell(self, news: dict[str, Any]) -> None:
        """Send news even though the workers made the shared socket non-blocking: wait a little for room."""
        data = json.dumps(news).encode()
        deadline = time.monotonic() + NEWS_WAIT
        while True:
            try:
                self.reports.sender.send(data)
                return
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.error("the endpoints' process is not reading; it missed: %s", news)
                    return
                select.select([], [self.reports.sender], [], left)

    # the endpoints' process -------------------------------------------------------------------

    def serve(self) -> None:
        """Until the supervisor kills this process, or is gone itself (then it stops: nothing would end it)."""
        probes = Probes(self.reports.health, self.reports.ready, lambda: render(self.registry))
        supervisor = os.getppid()

        def setup(loop: asyncio.AbstractEventLoop) -> None:
            self.reports.listen(loop)

            def orphaned() -> None:
                if os.getppid() != supervisor:
                    loop.stop()
                else:
                    loop.call_later(EVERY, orphaned)

            loop.call_later(EVERY, orphaned)

        serve_forever(self.port, probes, setup)
