"""The worker supervisor: stops on time even when workers ignore SIGTERM (no root, plain processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

SCRIPT = """
import os, signal, sys, time
from egress_router.runtime.workers import STOP_SIGNALS, run_loop, run_workers

# a worker starts with the stop signals blocked (run_loop takes them): one without run_loop unblocks them itself

def stubborn():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    os.write(1, f"worker {os.getpid()}\\n".encode())  # one write: two workers share the pipe
    while True:
        time.sleep(1)

def brief():
    os.write(1, f"worker {os.getpid()}\\n".encode())


def polite():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    os.write(1, f"worker {os.getpid()}\\n".encode())  # one write: two workers share the pipe
    time.sleep(60)

def slow_start():
    os.write(1, f"worker {os.getpid()}\\n".encode())
    time.sleep(1)  # started, its loop not running yet: a SIGTERM now must still drain it

    async def main(stop):
        await stop.wait()
        os.write(1, f"drained {os.getpid()}\\n".encode())

    run_loop(main)

kinds = {"stubborn": stubborn, "polite": polite, "brief": brief, "slow_start": slow_start}
sys.exit(run_workers(2, kinds[sys.argv[1]], grace=float(sys.argv[2]), kill_after=float(sys.argv[3])))
"""


def supervise(kind: str, grace: float, kill_after: float) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, kind, str(grace), str(kill_after)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    try:
        workers = [int(proc.stdout.readline().split()[1]) for _ in range(2)]
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)  # never leave a supervisor behind
        proc.wait()
        raise
    return proc, workers


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_workers_that_ignore_sigterm_are_killed_after_grace_and_kill_after() -> None:
    proc, workers = supervise("stubborn", grace=0.5, kill_after=0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    took = time.monotonic() - started
    assert 0.9 <= took < 2.0, took
    assert all(gone(pid) for pid in workers)


def test_workers_that_stop_end_the_supervisor_at_once() -> None:
    proc, workers = supervise("polite", grace=30, kill_after=30)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - started < 1.0
    assert all(gone(pid) for pid in workers)


def test_workers_that_end_at_once_are_restarted_once_a_second_not_in_a_spin() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, "brief", "1", "1"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    assert 2 <= out.count("worker") <= 2 * 4 + 2, out.count("worker")  # two slots, once a second each, over 3 s


def test_a_worker_that_dies_is_replaced() -> None:
    proc, workers = supervise("polite", grace=1, kill_after=1)
    try:
        time.sleep(2.1)  # past the start-up window in which a dying worker stops everything
        os.kill(workers[0], signal.SIGKILL)
        assert proc.stdout is not None
        replacement = int(proc.stdout.readline().split()[1])
        assert replacement not in workers
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_a_stop_signal_held_blocked_before_the_loop_is_not_lost() -> None:
    """Legacy init blocks SIGTERM between its setup and the loop: one sent then must still stop the loop (uvloop alone loses it)."""
    script = (
        "import asyncio, os, signal\n"
        "from egress_router.runtime.workers import run_loop\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "async def main(stop):\n"
        "    async with asyncio.timeout(5):\n"
        "        await stop.wait()\n"
        "run_loop(main)\n"
        "print('stopped')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0 and done.stdout == "stopped\n", done.stderr


def test_a_worker_stopped_before_its_loop_runs_still_drains() -> None:
    """SIGTERM between the fork and run_loop's handlers: held blocked, taken by run_loop, a drain (not a kill)."""
    proc, workers = supervise("slow_start", grace=5, kill_after=5)
    os.killpg(proc.pid, signal.SIGTERM)  # the supervisor and both workers, as a container runtime's stop may
    assert proc.wait(10) == 0
    assert proc.stdout is not None
    assert sorted(proc.stdout.read().split()) == sorted(["drained", "drained", *map(str, workers)])
