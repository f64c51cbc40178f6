"""What the benchmarks share: the lab namespace, nginx as the origin, CPU pinning, CPU and memory readings, and the
way they measure and report.

Rounds: in each of --rounds rounds every contender runs once, started afresh, first to last in odd rounds and last to
first in even ones, so neither a drift in the machine's load nor going first favours one of them. The table has a row
per measure: each contender's median over the rounds with the min-max of the rounds, and after a compared contender
`/ X`: its median over X's median, with the min-max of the per-round ratios (each round's pair ran back to back).
--baseline DIR: another checkout's egress-router (`git worktree add DIR COMMIT`), run from DIR with PYTHONPATH=DIR and
this interpreter, takes the other tool's place; each of its variants is followed by the same of ours, compared with it.
"""

from __future__ import annotations

import argparse
import compileall
import itertools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from egress_router.lab import Lab
from egress_router.lab.netns import socket_in
from egress_router.lab.topology import environment

ROLE = "bench"
#: wrk and nginx share one CPU, the proxy under test gets the other: both proxies get exactly one core.
CPUS = sorted(os.sched_getaffinity(0))
LOAD_CPU = ["taskset", "-c", str(CPUS[0])] if len(CPUS) > 1 else []
PROXY_CPUS = ["taskset", "-c", ",".join(str(c) for c in CPUS[1:])] if len(CPUS) > 1 else []
ORIGIN = "127.0.0.1:8081"
BIG = 256 * 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class Measure:
    key: str
    header: str
    fmt: str  # how its numbers are written, e.g. ",.0f"


NGINX = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir}; uwsgi_temp_path {dir}; scgi_temp_path {dir};
  server {{
    listen 127.0.0.1:8081;
    location = /small {{ return 200 "hello from nginx, a small response body of about a hundred bytes, as APIs often send\\n"; }}
    location / {{ root {dir}/www; }}
  }}
}}
"""


def pids_of(lab: Lab, needle: bytes) -> list[int]:
    found = []
    for pid in subprocess.run(["ip", "netns", "pids", lab.ns(ROLE)], capture_output=True, text=True).stdout.split():
        try:
            if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return total


def start_nginx(lab: Lab, workdir: str) -> None:
    """nginx on 127.0.0.1:8081: /small (about 100 bytes) and /big.bin (BIG bytes, sparse)."""
    www = Path(workdir, "www")
    www.mkdir(exist_ok=True)
    with open(www / "big.bin", "wb") as f:
        f.truncate(BIG)
    Path(workdir, "nginx.conf").write_text(NGINX.format(dir=workdir))
    nginx = lab.start_in(ROLE, [*LOAD_CPU, "nginx", "-c", f"{workdir}/nginx.conf"])
    lab.wait_for_port(ROLE, "127.0.0.1", 8081, process=nginx)
    # the first read of the new file runs at a quarter of the speed of later ones: it must not fall on a contender
    download_mb_s(lab, [f"http://{ORIGIN}/big.bin"])


def wrk(lab: Lab, argv: list[str], seconds: int) -> tuple[float, int]:
    """Requests/s and the request count of one wrk run (50 connections, one thread, on the load CPU)."""
    done = lab.run_in(ROLE, [*LOAD_CPU, "wrk", "-t1", "-c50", f"-d{seconds}s", *argv], timeout=seconds + 30)
    if "Non-2xx or 3xx responses" in done.stdout or "Requests/sec" not in done.stdout:
        raise SystemExit(f"wrk {' '.join(argv)} failed: {done.stdout} {done.stderr}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", done.stdout).group(1))  # type: ignore[union-attr]
    return rps, requests


def request_rates(
    lab: Lab, contender: Contender, seconds: int, keepalive: list[str], close: list[str]
) -> tuple[dict[str, float], list[int]]:
    """A warm-up, then wrk with `keepalive` arguments (requests/s, and the contender's CPU time per request) and with
    `close` arguments (requests/s on a new connection each); also the contender's processes, for later readings."""
    wrk(lab, keepalive, min(seconds, 2))  # warm up (and let every worker start)
    pids = contender.pids(lab)
    cpu = cpu_seconds(pids)
    keepalive_rps, requests = wrk(lab, keepalive, seconds)
    cpu_us_per_request = (cpu_seconds(pids) - cpu) / requests * 1e6
    close_rps, _ = wrk(lab, close, seconds)
    return {"keepalive_rps": keepalive_rps, "cpu_us_per_request": cpu_us_per_request, "close_rps": close_rps}, pids


def rate_measures(close: str) -> list[Measure]:
    """The measures of request_rates(); `close` names the one with a new connection each."""
    return [
        Measure("keepalive_rps", "req/s, 50 keep-alive conns", ",.0f"),
        Measure("close_rps", close, ",.0f"),
        Measure("cpu_us_per_request", "CPU µs/request", ".0f"),
    ]


IDLE_MEMORY = Measure("kib_per_idle_connection", "KiB per idle conn", ".1f")  # idle_memory_kib()


def download_mb_s(lab: Lab, curl_args: list[str], streams: int = 1) -> float:
    """Megabytes per second for `streams` parallel downloads of /big.bin, all bytes over the wall time."""
    argv = [*LOAD_CPU, "curl", "-sS", "-o", "/dev/null", *curl_args]
    started = time.monotonic()
    procs = [subprocess.Popen(lab.exec_argv(ROLE, argv)) for _ in range(streams)]
    for proc in procs:
        if proc.wait(300) != 0:
            raise SystemExit(f"curl {' '.join(curl_args)} failed")
    return streams * BIG / (time.monotonic() - started) / 1e6


def idle_memory_kib(lab: Lab, port: int, pids: list[int], first_bytes: bytes, count: int = 1000) -> float:
    """RSS added per connection by `count` connections that sent `first_bytes` (maybe nothing) and went quiet."""
    before = rss_kib(pids)
    sockets = []
    try:
        for _ in range(count):
            sock = socket_in(lab.ns(ROLE))
            sock.connect(("127.0.0.1", port))
            if first_bytes:
                sock.sendall(first_bytes)
            sockets.append(sock)
        if first_bytes:
            for sock in sockets:
                sock.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
                    data += sock.recv(4096)
        time.sleep(1)
        return (rss_kib(pids) - before) / count
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class Checkout:
    """A tree whose `egress_router` a bench runs: this one, or another one (`git worktree add DIR COMMIT`) for --baseline."""

    path: Path
    label: str

    @classmethod
    def at(cls, path: str | Path, label: str) -> Checkout:
        tree = Path(path).resolve()
        if not (tree / "egress_router" / "__main__.py").is_file():
            raise SystemExit(f"{tree}: no egress_router package there (make a checkout with: git worktree add DIR COMMIT)")
        return cls(tree, label)

    def argv(self, *command: str) -> list[str]:
        """`egress-router COMMAND` from this tree's code, with this interpreter and its packages: the tree is both the
        working folder and PYTHONPATH, so neither the caller's folder nor the installed package can stand in for it."""
        return ["env", "-C", str(self.path), f"PYTHONPATH={self.path}", sys.executable, "-m", "egress_router", *command]

    def compile(self) -> None:
        """Bytecode for the tree's package, as the image's `pip install` writes it. A bench that starts a process per
        trial would otherwise compile every module of ours each time (PYTHONDONTWRITEBYTECODE, which the image sets too,
        keeps Python from caching them itself) and time the compiler, not the code the image runs."""
        compileall.compile_dir(self.path / "egress_router", quiet=1)

    def describe(self) -> str:
        """Where it is and, in a git tree, at which commit."""
        done = subprocess.run(["git", "-C", str(self.path), "describe", "--always", "--dirty"], capture_output=True, text=True)
        return f"{self.path}" + (f" at {done.stdout.strip()}" if done.returncode == 0 else "")


THIS = Checkout(Path(__file__).resolve().parents[1], "ours")


def options(doc: str | None, *, rounds: int, baseline: str) -> argparse.ArgumentParser:
    """A bench's command line: --rounds and --baseline DIR (`baseline` says what it replaces)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rounds", type=int, default=rounds, help=f"every contender runs once a round, in alternating order (default {rounds})"
    )
    parser.add_argument("--baseline", metavar="DIR", help=f"another checkout (git worktree add DIR COMMIT) whose {baseline}")
    return parser


def proxy_options(doc: str | None, command: str, tool: str) -> argparse.ArgumentParser:
    """The proxy benches' command line: 5 rounds, --seconds of each wrk run, --baseline."""
    parser = options(doc, rounds=5, baseline=f"{command} runs in place of {tool}, compared with ours")
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run (default 10)")
    return parser


def alternating(rounds: int, contenders: Sequence[T]) -> Iterator[tuple[int, T]]:
    """(round, contender): each contender once a round, first to last in odd rounds and last to first in even ones,
    so that neither a drift in the machine's load nor going first favours one of them."""
    for number in range(rounds):
        for contender in contenders if number % 2 == 0 else contenders[::-1]:
            yield number, contender


class Samples:
    """One value a round for each contender and measure, in round order: the same index is the same round."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float]]] = {}

    def add(self, contender: str, measures: dict[str, float]) -> None:
        for measure, value in measures.items():
            self.values.setdefault(contender, {}).setdefault(measure, []).append(value)

    def cell(self, contender: str, measure: Measure) -> str:
        """The median with the spread of the rounds: `median (min-max)`."""
        values = self.values[contender][measure.key]
        fmt = measure.fmt
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    def ratio(self, contender: str, reference: str, measure: Measure) -> str:
        """The ratio of the medians, with the spread of the rounds' own ratios (each round's pair ran back to back)."""
        ours, theirs = self.values[contender][measure.key], self.values[reference][measure.key]
        per_round = [o / max(t, 1e-9) for o, t in zip(ours, theirs, strict=True)]
        of_medians = statistics.median(ours) / max(statistics.median(theirs), 1e-9)
        return f"{of_medians:.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"

    def print_table(self, first_column: str, measures: Sequence[Measure], columns: Sequence[tuple[str, str | None]]) -> None:
        """A Markdown table, a row per measure; `columns` are (contender, the contender its ratio is to, or None)."""
        rounds = max(len(values) for measures in self.values.values() for values in measures.values())
        header = [first_column]
        for name, reference in columns:
            header += [name] if reference is None else [name, f"/ {reference}"]
        rows = [header]
        for measure in measures:
            row = [measure.header]
            for name, reference in columns:
                row.append(self.cell(name, measure))
                if reference is not None:
                    row.append(self.ratio(name, reference, measure))
            rows.append(row)
        print(f"Each cell: the median of {rounds} rounds (min-max). `/ X`: that median over X's (min-max of the per-round ratios).\n")
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for number, row in enumerate(rows):
            cells = [cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
            print("| " + " | ".join(cells) + " |")
            if number == 0:
                print("|" + "|".join("-" * (width + 1) + (":" if i else "-") for i, width in enumerate(widths)) + "|")


@dataclass
class Contender:
    """A proxy or relay under test: how it starts, where it listens, which processes are its own."""

    name: str
    argv: list[str]
    port: int
    needle: bytes  # in the command line of each of its processes
    env: dict[str, str] | None = None
    reference: str | None = None  # the contender its ratios are to
    logs: tuple[Path, ...] = ()  # its own log files, removed after each run

    def pids(self, lab: Lab) -> list[int]:
        return pids_of(lab, self.needle)


def ours_and_theirs(
    tool: Contender, baseline: str | None, command: str, variants: Sequence[tuple[str, Callable[[int], dict[str, str]]]]
) -> tuple[list[Contender], str]:
    """The other tool, then each of our variants (a name suffix, its environment for a port) compared with it; with
    `baseline`, each variant of the baseline checkout then the same of ours, compared with it (the other tool does not
    run). Also a line that says which code is which."""
    ports = itertools.count(tool.port + 1)
    theirs = None if baseline is None else Checkout.at(baseline, "baseline")

    def contender(name: str, checkout: Checkout, env: Callable[[int], dict[str, str]], reference: str | None) -> Contender:
        port = next(ports)
        return Contender(name, checkout.argv(command), port, command.encode(), environment(**env(port)), reference)

    contenders = [tool] if theirs is None else []
    for suffix, env in variants:
        if theirs is None:
            contenders.append(contender(f"egress-router{suffix}", THIS, env, tool.name))
        else:
            contenders += [contender(f"baseline{suffix}", theirs, env, None), contender(f"ours{suffix}", THIS, env, f"baseline{suffix}")]
    which = f"egress-router: {THIS.describe()}" if theirs is None else f"baseline: {theirs.describe()}; ours: {THIS.describe()}"
    return contenders, which


@contextmanager
def serving(lab: Lab, contender: Contender) -> Iterator[None]:
    """The contender running on the proxy CPU, accepting on its port, until the block ends; then stopped, and its
    logs removed (a round's access logs can be hundreds of megabytes)."""
    proc = lab.start_in(ROLE, [*PROXY_CPUS, *contender.argv], env=contender.env)
    try:
        lab.wait_for_port(ROLE, "127.0.0.1", contender.port, timeout=20, process=proc)
        yield
    finally:
        proc.popen.terminate()
        proc.popen.wait(30)
        for log in (Path(proc.out_path), *contender.logs):
            log.unlink(missing_ok=True)


def run_rounds(lab: Lab, contenders: Sequence[Contender], rounds: int, measure: Callable[[Contender], dict[str, float]]) -> Samples:
    """Every contender measured once a round, started afresh each time, in alternating order."""
    samples = Samples()
    for number, contender in alternating(rounds, contenders):
        print(f"round {number + 1}/{rounds}: {contender.name}", file=sys.stderr, flush=True)
        with serving(lab, contender):
            samples.add(contender.name, measure(contender))
    return samples


def columns_of(contenders: Sequence[Contender]) -> list[tuple[str, str | None]]:
    return [(c.name, c.reference) for c in contenders]


@contextmanager
def bench_folder() -> Iterator[str]:
    """A folder for configuration, logs and the downloaded file, readable by the tools' own users; removed at the end."""
    folder = tempfile.mkdtemp(prefix="egress-bench-")
    Path(folder).chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def compete(
    args: argparse.Namespace,
    folder: str,
    tool: Contender,
    command: str,
    variants: Sequence[tuple[str, Callable[[int], dict[str, str]]]],
    measures: Sequence[Measure],
    measure: Callable[[Lab, Contender], dict[str, float]],
) -> None:
    """A proxy bench: nginx as the origin, the rounds of `tool` and our variants of `command` (or the baseline's and
    ours), each measured by `measure`, then the table of `measures`."""
    contenders, which = ours_and_theirs(tool, args.baseline, command, variants)
    with Lab() as lab:
        lab.add_namespace(ROLE)
        start_nginx(lab, folder)
        samples = run_rounds(lab, contenders, args.rounds, lambda contender: measure(lab, contender))
    print(f"{which}; wrk {args.seconds} s\n")
    samples.print_table("measure", measures, columns_of(contenders))
