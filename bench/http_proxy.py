"""egress-router http-proxy against Debian's squid, in one run, in one namespace with only lo.

Run as root: .venv/bin/python bench/http_proxy.py [--seconds 10]
Needs nginx (the origin), squid and wrk (bash bench/setup.sh installs them). Both proxies log every
request to a file and forward to the same nginx. Prints a Markdown table with ratios (ours / squid;
higher is better for rates, lower for CPU and memory).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

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
SQUID = """
http_port 127.0.0.1:3128
http_access allow all
cache deny all
cache_mem 8 MB
access_log stdio:{dir}/squid-access.log
cache_log {dir}/squid-cache.log
pid_filename {dir}/squid.pid
coredump_dir {dir}
max_filedescriptors 8192
shutdown_lifetime 1 seconds
"""
WRK_SCRIPT = 'request = function() return wrk.format("GET", "http://' + ORIGIN + '/small", {{["Host"] = "' + ORIGIN + '"{close}}}) end\n'


@dataclass
class Result:
    keepalive_rps: float = 0.0
    close_rps: float = 0.0
    cpu_us_per_request: float = 0.0
    tunnel_mb_s: float = 0.0
    kib_per_idle_connection: float = 0.0


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


def wrk(lab: Lab, port: int, seconds: int, close: bool, workdir: str) -> tuple[float, int]:
    script = Path(workdir) / f"wrk-{'close' if close else 'keep'}.lua"
    script.write_text(WRK_SCRIPT.format(close=', ["Connection"] = "close"' if close else ""))
    done = lab.run_in(ROLE, [*LOAD_CPU, "wrk", "-t1", "-c50", f"-d{seconds}s", "-s", str(script), f"http://127.0.0.1:{port}/"], timeout=seconds + 30)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", done.stdout).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    if errors:
        raise SystemExit(f"proxy on port {port} answered errors: {done.stdout}")
    return rps, requests


def tunnel_throughput(lab: Lab, port: int) -> float:
    done = lab.run_in(
        ROLE,
        [*LOAD_CPU, "curl", "-sS", "-p", "-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{speed_download}", f"http://{ORIGIN}/big.bin"],
        timeout=120,
    )
    return float(done.stdout) / 1e6


def idle_connections(lab: Lab, port: int, pids: list[int], count: int = 1000) -> float:
    """Memory added by `count` keep-alive connections that made one request each and then went quiet."""
    before = rss_kib(pids)
    sockets = []
    try:
        for _ in range(count):
            sock = socket_in(lab.ns(ROLE))
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET http://{ORIGIN}/small HTTP/1.1\r\nHost: {ORIGIN}\r\n\r\n".encode())
            sockets.append(sock)
        for sock in sockets:
            sock.settimeout(5)
            data = b""
            while b"\n" not in data.split(b"\r\n\r\n", 1)[-1] or b"\r\n\r\n" not in data:
                data += sock.recv(4096)
        time.sleep(1)
        after = rss_kib(pids)
    finally:
        for sock in sockets:
            sock.close()
    return (after - before) / count


def measure(lab: Lab, port: int, pids: list[int], seconds: int, workdir: str) -> Result:
    result = Result()
    wrk(lab, port, 2, False, workdir)  # warm up
    cpu = cpu_seconds(pids)
    result.keepalive_rps, requests = wrk(lab, port, seconds, False, workdir)
    result.cpu_us_per_request = (cpu_seconds(pids) - cpu) / requests * 1e6
    result.close_rps, _ = wrk(lab, port, seconds, True, workdir)
    result.tunnel_mb_s = tunnel_throughput(lab, port)
    result.kib_per_idle_connection = idle_connections(lab, port, pids)
    return result


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", default="1,2", help="egress-router worker counts to measure")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="egress-bench-")
    os.chmod(workdir, 0o777)
    www = Path(workdir, "www")
    www.mkdir()
    with open(www / "big.bin", "wb") as f:
        f.truncate(BIG)
    results: dict[str, Result] = {}
    with Lab() as lab:
        lab.add_namespace(ROLE)
        Path(workdir, "nginx.conf").write_text(NGINX.format(dir=workdir))
        lab.start_in(ROLE, [*LOAD_CPU, "nginx", "-c", f"{workdir}/nginx.conf"])
        wait_port(lab, 8081)
        Path(workdir, "squid.conf").write_text(SQUID.format(dir=workdir))
        squid = lab.start_in(ROLE, [*PROXY_CPUS, "squid", "-N", "-f", f"{workdir}/squid.conf"])
        wait_port(lab, 3128)
        results["squid"] = measure(lab, 3128, sorted({squid.popen.pid, *pids_of(lab, b"squid")}), args.seconds, workdir)
        lab.stop_processes()
        lab.start_in(ROLE, [*LOAD_CPU, "nginx", "-c", f"{workdir}/nginx.conf"])
        wait_port(lab, 8081)
        for index, workers in enumerate(args.workers.split(",")):
            port = 8090 + index
            env = {k: v for k, v in os.environ.items() if not k.startswith("EGRESS_")}
            env.update(
                EGRESS_HTTP_PROXY_DESTINATION="127.0.0.1",
                EGRESS_HTTP_PROXY_LISTEN_PORT=str(port),
                EGRESS_HTTP_PROXY_CONNECT_PORTS="8081",
                EGRESS_HTTP_PROXY_WORKERS=workers,
            )
            log = open(Path(workdir, f"egress-access-{workers}.log"), "wb")
            proc = subprocess.Popen(lab.exec_argv(ROLE, [*PROXY_CPUS, sys.executable, "-m", "egress_router", "http-proxy"]), env=env, stdout=log, stderr=subprocess.DEVNULL)
            wait_port(lab, port)
            try:
                results[f"egress-router, {workers} worker(s)"] = measure(lab, port, pids_of(lab, b"http-proxy"), args.seconds, workdir)
            finally:
                proc.terminate()
                proc.wait(30)
                log.close()
    squid_result = results["squid"]
    print(f"| proxy | req/s, 50 keep-alive conns | req/s, new conn each | CPU µs/request | CONNECT tunnel MB/s | KiB per idle conn |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        if name == "squid":
            print(f"| squid 5.7 | {r.keepalive_rps:,.0f} | {r.close_rps:,.0f} | {r.cpu_us_per_request:.0f} | {r.tunnel_mb_s:,.0f} | {r.kib_per_idle_connection:.1f} |")
            continue
        s = squid_result
        print(
            f"| {name} | {r.keepalive_rps:,.0f} ({r.keepalive_rps / s.keepalive_rps:.2f}x) | {r.close_rps:,.0f} ({r.close_rps / s.close_rps:.2f}x) "
            f"| {r.cpu_us_per_request:.0f} ({r.cpu_us_per_request / s.cpu_us_per_request:.2f}x) | {r.tunnel_mb_s:,.0f} ({r.tunnel_mb_s / s.tunnel_mb_s:.2f}x) "
            f"| {r.kib_per_idle_connection:.1f} ({r.kib_per_idle_connection / max(s.kib_per_idle_connection, 0.1):.2f}x) |"
        )
    subprocess.run(["rm", "-rf", workdir])


if __name__ == "__main__":
    main()
