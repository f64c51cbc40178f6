"""Run a long-running service in one process or in several forked workers, and stop it gracefully.

Each worker owns its own SO_REUSEPORT listening socket, so the kernel spreads new connections over
them. SIGTERM or SIGINT to the parent reaches every worker, which stops accepting and drains.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

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
    try:
        loop.run_until_complete(main(stop))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


#: After the drain's grace period, workers that have not exited get this long before SIGKILL.
KILL_AFTER = 5.0


def run_workers(count: int, worker: Callable[[], None], grace: float, kill_after: float = KILL_AFTER) -> int:
    """Fork `count` workers running `worker()`; restart one that dies; stop all on a signal.

    The parent waits for signals with sigtimedwait (SIGCHLD, SIGTERM and SIGINT blocked), never in a blocking
    waitpid: a signal then always wakes it, so workers that ignore SIGTERM are killed `grace + kill_after`
    seconds after it, on time.
    """
    if count == 1:
        worker()
        return 0
    watched = {signal.SIGCHLD, *STOP_SIGNALS}
    children: dict[int, int] = {}  # pid -> slot

    def start(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for sig in STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
                worker()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException as error:  # noqa: BLE001 - a worker's last word, whatever killed it
                log.error("worker %d failed: %s: %s", slot, type(error).__name__, error)
                log.debug("the traceback of that failure", exc_info=True)
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = slot

    def stop_all(sig: int) -> None:
        for pid in children:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        for slot in range(count):
            start(slot)
        started = time.monotonic()
        deadline: float | None = None  # set by the first stop signal
        while children:
            while children:  # reap every worker that has exited
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                slot = children.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                if deadline is not None:
                    continue
                if time.monotonic() - started < 2 and code != 0:
                    log.error("worker %d exited with %d right after starting; stopping", slot, code)
                    stop_all(signal.SIGTERM)
                    _reap(children, kill_after)
                    return code if code > 0 else 1
                log.error("worker %d exited with %d; starting a new one", slot, code)
                start(slot)
            if not children:
                break
            if deadline is not None and time.monotonic() >= deadline:
                log.error("%d worker(s) still running %g s after SIGTERM; killing them", len(children), grace + kill_after)
                stop_all(signal.SIGKILL)
                deadline = float("inf")
            wait = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            info = signal.sigtimedwait(watched, wait if deadline != float("inf") else 1.0)
            if info is not None and info.si_signo in STOP_SIGNALS and deadline is None:
                deadline = time.monotonic() + grace + kill_after
                stop_all(signal.SIGTERM)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    return 0


def _reap(children: dict[int, int], within: float) -> None:
    """Wait up to `within` seconds for the stopped workers, then kill what is left."""
    deadline = time.monotonic() + within
    while children and time.monotonic() < deadline:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid:
            children.pop(pid, None)
        else:
            time.sleep(0.02)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
