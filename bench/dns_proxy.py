"""egress-router dns-proxy against Debian's haproxy (the old DNS proxy image), in one run.

Run as root: bash bench/setup.sh && .venv/bin/python bench/dns_proxy.py [--seconds 10]
Both relay TCP from a local port to the same nginx in a namespace with only lo. Prints a Markdown
table with ratios (ours / haproxy; higher is better for rates, lower for CPU and memory).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import PROXY_CPUS, ROLE, cpu_seconds, download_mb_s, idle_memory_kib, pids_of, print_table, start_nginx, wait_port, wrk

from egress_router.lab import Lab
from egress_router.lab.topology import environment

HAPROXY = """
global
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen relay
  bind 127.0.0.1:7000
  server origin 127.0.0.1:8081
"""


@dataclass
class Result:
    keepalive_rps: float = 0.0
    close_rps: float = 0.0
    cpu_us_per_request: float = 0.0
    bulk_1: float = 0.0
    bulk_8: float = 0.0
    kib_per_idle_connection: float = 0.0


def measure(lab: Lab, port: int, pids: list[int], seconds: int) -> Result:
    url = f"http://127.0.0.1:{port}/small"
    result = Result()
    wrk(lab, [url], 2)  # warm up
    cpu = cpu_seconds(pids)
    result.keepalive_rps, requests = wrk(lab, [url], seconds)
    result.cpu_us_per_request = (cpu_seconds(pids) - cpu) / requests * 1e6
    result.close_rps, _ = wrk(lab, ["-H", "Connection: close", url], seconds)
    big = f"http://127.0.0.1:{port}/big.bin"
    result.bulk_1 = download_mb_s(lab, [big])
    result.bulk_8 = download_mb_s(lab, [big], streams=8)
    result.kib_per_idle_connection = idle_memory_kib(lab, port, pids, b"")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="egress-bench-")
    Path(workdir).chmod(0o777)
    results: dict[str, Result] = {}
    with Lab() as lab:
        lab.add_namespace(ROLE)
        start_nginx(lab, workdir)
        Path(workdir, "haproxy.cfg").write_text(HAPROXY)
        haproxy = lab.start_in(ROLE, [*PROXY_CPUS, "haproxy", "-db", "-f", f"{workdir}/haproxy.cfg"])
        wait_port(lab, 7000)
        results["haproxy"] = measure(lab, 7000, sorted({haproxy.popen.pid, *pids_of(lab, b"haproxy")}), args.seconds)
        haproxy.popen.terminate()
        haproxy.popen.wait(30)
        for index, mode in enumerate(("off", "on")):
            port = 7001 + index
            env = environment(EGRESS_DNS_PROXY_DESTINATION=f"{port} 127.0.0.1 8081", EGRESS_DNS_PROXY_SPLICE=mode)
            argv = [*PROXY_CPUS, sys.executable, "-m", "egress_router", "dns-proxy"]
            proc = subprocess.Popen(lab.exec_argv(ROLE, argv), env=env, stderr=subprocess.DEVNULL)
            wait_port(lab, port)
            try:
                name = "egress-router dns-proxy" + (", splice" if mode == "on" else "")
                results[name] = measure(lab, port, pids_of(lab, b"dns-proxy"), args.seconds)
            finally:
                proc.terminate()
                proc.wait(30)
    columns = [
        ("keepalive_rps", "req/s, 50 keep-alive conns", ",.0f"),
        ("close_rps", "new conns/s", ",.0f"),
        ("cpu_us_per_request", "CPU µs/request", ".0f"),
        ("bulk_1", "bulk MB/s, 1 stream", ",.0f"),
        ("bulk_8", "bulk MB/s, 8 streams", ",.0f"),
        ("kib_per_idle_connection", "KiB per idle conn", ".1f"),
    ]
    print_table("relay", columns, results, "haproxy")
    subprocess.run(["rm", "-rf", workdir], check=False)


if __name__ == "__main__":
    main()
