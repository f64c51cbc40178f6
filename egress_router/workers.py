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


def run_workers(count: int, worker: Callable[[], None], grace: float) -> int:
    """Fork `count` workers running `worker()`; restart one that dies; stop all on a signal."""
    if count == 1:
        worker()
        return 0
    stopping = False
    children: dict[int, int] = {}  # pid -> slot

    def start(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for sig in STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                worker()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException as error:  # noqa: BLE001
                log.error("worker %d failed: %s: %s", slot, type(error).__name__, error)
                log.debug("the traceback of that failure", exc_info=True)
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = slot

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        for slot in range(count):
            start(slot)
        started = time.monotonic()
        deadline: float | None = None
        while children:
            if stopping and deadline is None:
                deadline = time.monotonic() + grace + 5
            try:
                pid, status = os.waitpid(-1, 0 if deadline is None else os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                if deadline is not None and time.monotonic() > deadline:
                    for child in children:
                        os.kill(child, signal.SIGKILL)
                time.sleep(0.05)
                continue
            slot = children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if not stopping:
                if time.monotonic() - started < 2 and code != 0:
                    log.error("worker %d exited with %d right after starting; stopping", slot, code)
                    on_signal(signal.SIGTERM, None)
                    return code if code > 0 else 1
                log.error("worker %d exited with %d; starting a new one", slot, code)
                start(slot)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
