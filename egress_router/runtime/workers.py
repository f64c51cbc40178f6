"""Run a long-running service in one process or in several forked workers, and stop it gracefully.

Each worker owns its own SO_REUSEPORT listening socket, so the kernel spreads new connections over
them. SIGTERM or SIGINT to the parent reaches every worker, which stops accepting and drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_loop(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run `main(stop)` on a fresh loop; `stop` is set by SIGTERM or SIGINT."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)

    def release() -> None:
        # A caller may hold the stop signals blocked until here (legacy init between its setup and this loop, a
        # forked worker from its fork on). One that came meanwhile is taken here, once the loop runs (uvloop loses
        # a signal delivered before it runs), and only then are they let through to the handlers.
        if signal.sigtimedwait(STOP_SIGNALS, 0) is not None:
            stop.set()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    loop.call_soon(release)  # before main's first step
    try:
        loop.run_until_complete(main(stop))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


#: After the drain's grace period, workers that have not exited get this long before SIGKILL.
KILL_AFTER = 5.0


class Watcher(Protocol):
    """The endpoints of a supervisor: a process of their own beside the workers, told what the supervisor does.

    The supervisor itself never runs a thread or an event loop, so each fork (the first ones and a dead worker's
    replacement alike) copies a plain single-threaded process: no lock held by another thread, no server's state."""

    def prepare(self) -> None:
        """In the supervisor, before any fork: fail now (ApplyError) when it could not serve."""

    def serve(self) -> None:
        """In a child of its own, forked before the workers (and again should it die), the stop signals blocked:
        serve until the supervisor ends it (SIGKILL, after the last worker) or goes away."""

    def exited(self, pid: int) -> None:
        """In the supervisor: a worker was reaped."""

    def stop(self) -> None:
        """In the supervisor: a stop signal came; the workers drain."""


def run_workers(
    count: int, worker: Callable[[], None], grace: float, kill_after: float = KILL_AFTER, watcher: Watcher | None = None
) -> int:
    """Fork `count` workers running `worker()`; restart one that dies; stop all on a signal.

    A forked worker starts with SIGTERM and SIGINT blocked, so one sent before its loop runs is not lost (nor
    fatal): run_loop takes it and unblocks them. A worker that does not use run_loop unblocks them itself."""
    if count == 1:
        worker()
        return 0
    return Supervisor(worker, grace + kill_after, watcher).run(count)


RESTART_EVERY = 1.0
WATCHED = {signal.SIGCHLD, *STOP_SIGNALS}


class Supervisor:
    """The parent of the workers. It waits for signals with sigtimedwait (SIGCHLD, SIGTERM and SIGINT blocked),
    never in a blocking waitpid, so a signal always wakes it: workers that ignore SIGTERM are killed
    `kill_within` seconds after it, on time."""

    def __init__(self, worker: Callable[[], None], kill_within: float, watcher: Watcher | None = None) -> None:
        self.worker = worker
        self.watcher = watcher
        self.kill_within = kill_within
        self.children: dict[int, int] = {}  # pid -> slot
        self.deadline: float | None = None  # set by the first stop signal
        self.started = time.monotonic()
        self.restarts: dict[int, float] = {}  # slot -> when its replacement may start
        self.last_start: dict[int, float] = {}  # slot -> when its worker last started
        self.watcher_pid: int | None = None  # the endpoints' process
        self.watcher_due: float | None = None  # when a new one may start, after the last one died
        self.watcher_started = 0.0

    def run(self, count: int) -> int:
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        try:
            if self.watcher is not None:
                self.watcher.prepare()
                self.start_watcher()
            for slot in range(count):
                self.start(slot)
            while self.children or self.restarts:
                failed = self.reap()
                if failed is not None:
                    self.stop_all(signal.SIGTERM)
                    self.finish(time.monotonic() + self.kill_within)
                    return failed
                self.start_due()
                if self.children or self.restarts:
                    self.wait()
        finally:
            self.end_watcher()
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        return 0

    def fork(self, name: str, run: Callable[[], None], unblock: set[signal.Signals]) -> int:
        """A child running `run()` with only `unblock` let through; it never returns here."""
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for sig in STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock)
                run()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException as error:
                log.error("%s failed: %s: %s", name, type(error).__name__, error)
                log.debug("the traceback of that failure", exc_info=True)
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return pid

    def start(self, slot: int) -> None:
        pid = self.fork(f"worker {slot}", self.worker, {signal.SIGCHLD})  # the stop signals wait for run_loop
        self.children[pid] = slot
        self.last_start[slot] = time.monotonic()

    def start_watcher(self) -> None:
        """The endpoints' process keeps the stop signals blocked: it answers through the drain ("draining")."""
        assert self.watcher is not None
        self.watcher_due = None
        self.watcher_started = time.monotonic()
        self.watcher_pid = self.fork("the endpoints' process", self.watcher.serve, set())
        if self.deadline is not None:
            self.watcher.stop()  # a new one must know too

    def end_watcher(self) -> None:
        if self.watcher_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.watcher_pid, signal.SIGKILL)
            os.waitpid(self.watcher_pid, 0)
            self.watcher_pid = None

    def start_due(self) -> None:
        now = time.monotonic()
        for slot, when in list(self.restarts.items()):
            if when <= now:
                del self.restarts[slot]
                self.start(slot)
        if self.watcher_due is not None and self.watcher_due <= now:
            self.start_watcher()

    def watcher_exited(self, status: int) -> None:
        """The endpoints died (they should not): a new process, at most one a second, with the numbers from then on."""
        self.watcher_pid = None
        log.error("the endpoints' process exited with %d; starting a new one", os.waitstatus_to_exitcode(status))
        self.watcher_due = self.watcher_started + RESTART_EVERY

    def reap(self) -> int | None:
        """Collect exited workers and replace them; an exit code when a worker fails right after starting."""
        while self.children or self.watcher_pid is not None:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return None
            if pid == self.watcher_pid:
                self.watcher_exited(status)
                continue
            slot = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.watcher is not None:
                self.watcher.exited(pid)
            if self.deadline is not None:
                continue
            if time.monotonic() - self.started < 2 and code != 0:
                log.error("worker %d exited with %d right after starting; stopping", slot, code)
                return code if code > 0 else 1
            # at most one restart a second per slot: a worker that dies at once (say its output pipe is gone)
            # must not make the supervisor spin
            log.error("worker %d exited with %d; starting a new one", slot, code)
            self.restarts[slot] = self.last_start.get(slot, 0.0) + RESTART_EVERY
        return None

    def wait(self) -> None:
        """Sleep until a signal, at most a second or until the kill deadline; act on stop signals and the deadline."""
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            log.error("%d worker(s) still running %g s after SIGTERM; killing them", len(self.children), self.kill_within)
            self.stop_all(signal.SIGKILL)
            self.deadline = float("inf")
        due = [*self.restarts.values(), *([self.watcher_due] if self.watcher_due is not None else [])]
        soonest = min([1.0, *(when - now for when in due)])
        timeout = max(0.0, soonest if self.deadline is None else min(soonest, self.deadline - now))
        info = signal.sigtimedwait(WATCHED, timeout)
        if info is not None and info.si_signo in STOP_SIGNALS and self.deadline is None:
            self.deadline = time.monotonic() + self.kill_within
            self.restarts.clear()
            if self.watcher is not None:
                self.watcher.stop()
            self.stop_all(signal.SIGTERM)

    def stop_all(self, sig: int) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def finish(self, deadline: float) -> None:
        """After a failed start: wait for the stopped workers until `deadline`, then kill what is left."""
        while self.children and time.monotonic() < deadline:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == self.watcher_pid:
                self.watcher_pid = None
            if pid:
                self.children.pop(pid, None)
            else:
                time.sleep(0.02)
        self.stop_all(signal.SIGKILL)
        for pid in list(self.children):
            os.waitpid(pid, 0)
