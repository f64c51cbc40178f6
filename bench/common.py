"""What the benchmarks share: the lab namespace, nginx as the origin, CPU pinning, CPU and memory readings."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from egress_router.lab import Lab
from egress_router.lab.netns import socket_in

ROLE = "bench"
#: wrk and nginx share one CPU, the proxy under test gets the other: both proxies get exactly one core.
CPUS = sorted(os.sched_getaffinity(0))
LOAD_CPU = ["taskset", "-c", str(CPUS[0])] if len(CPUS) > 1 else []
PROXY_CPUS = ["taskset", "-c", ",".join(str(c) for c in CPUS[1:])] if len(CPUS) > 1 else []
ORIGIN = "127.0.0.1:8081"
BIG = 256 * 1024 * 1024

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


def wait_port(lab: Lab, port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        with socket_in(lab.ns(ROLE)) as sock:
            try:
                sock.connect(("127.0.0.1", port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.1)


def start_nginx(lab: Lab, workdir: str) -> None:
    """nginx on 127.0.0.1:8081: /small (about 100 bytes) and /big.bin (BIG bytes, sparse)."""
    www = Path(workdir, "www")
    www.mkdir(exist_ok=True)
    with open(www / "big.bin", "wb") as f:
        f.truncate(BIG)
    Path(workdir, "nginx.conf").write_text(NGINX.format(dir=workdir))
    lab.start_in(ROLE, [*LOAD_CPU, "nginx", "-c", f"{workdir}/nginx.conf"])
    wait_port(lab, 8081)


def wrk(lab: Lab, argv: list[str], seconds: int) -> tuple[float, int]:
    """Requests/s and the request count of one wrk run (50 connections, one thread, on the load CPU)."""
    done = lab.run_in(ROLE, [*LOAD_CPU, "wrk", "-t1", "-c50", f"-d{seconds}s", *argv], timeout=seconds + 30)
    if "Non-2xx or 3xx responses" in done.stdout or "Requests/sec" not in done.stdout:
        raise SystemExit(f"wrk {' '.join(argv)} failed: {done.stdout} {done.stderr}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", done.stdout).group(1))  # type: ignore[union-attr]
    return rps, requests


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


def print_table(first_column: str, columns: list[tuple[str, str, str]], results: dict[str, Any], baseline: str) -> None:
    """A Markdown table; every row but the baseline's shows its ratio to the baseline. `columns` are
    (attribute, header, number format)."""
    print(f"| {first_column} | " + " | ".join(header for _, header, _ in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    theirs = results[baseline]
    for name, result in results.items():
        cells = []
        for attribute, _, fmt in columns:
            ours, other = getattr(result, attribute), getattr(theirs, attribute)
            cells.append(f"{ours:{fmt}}" + ("" if result is theirs else f" ({ours / max(other, 1e-9):.2f}x)"))
        print(f"| {name} | " + " | ".join(cells) + " |")
