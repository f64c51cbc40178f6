"""egress-router http-proxy against Debian's squid, in one run, in one namespace with only lo.

Run as root: bash bench/setup.sh && .venv/bin/python bench/http_proxy.py [--seconds 10]
Both proxies log every request to a file and forward to the same nginx. Prints a Markdown table with
ratios (ours / squid; higher is better for rates, lower for CPU and memory).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import (
    ORIGIN,
    PROXY_CPUS,
    ROLE,
    cpu_seconds,
    download_mb_s,
    idle_memory_kib,
    pids_of,
    print_table,
    start_nginx,
    wait_port,
    wrk,
)

from egress_router.lab import Lab
from egress_router.lab.topology import environment

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


def measure(lab: Lab, port: int, pids: list[int], seconds: int, workdir: str) -> Result:
    scripts = {}
    for close in (False, True):
        scripts[close] = Path(workdir) / f"wrk-{close}.lua"
        scripts[close].write_text(WRK_SCRIPT.format(close=', ["Connection"] = "close"' if close else ""))
    target = f"http://127.0.0.1:{port}/"
    result = Result()
    wrk(lab, ["-s", str(scripts[False]), target], 2)  # warm up
    cpu = cpu_seconds(pids)
    result.keepalive_rps, requests = wrk(lab, ["-s", str(scripts[False]), target], seconds)
    result.cpu_us_per_request = (cpu_seconds(pids) - cpu) / requests * 1e6
    result.close_rps, _ = wrk(lab, ["-s", str(scripts[True]), target], seconds)
    result.tunnel_mb_s = download_mb_s(lab, ["-p", "-x", f"http://127.0.0.1:{port}", f"http://{ORIGIN}/big.bin"])
    result.kib_per_idle_connection = idle_memory_kib(
        lab, port, pids, f"GET http://{ORIGIN}/small HTTP/1.1\r\nHost: {ORIGIN}\r\n\r\n".encode()
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", default="1,2", help="egress-router worker counts to measure")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="egress-bench-")
    Path(workdir).chmod(0o777)
    results: dict[str, Result] = {}
    with Lab() as lab:
        lab.add_namespace(ROLE)
        start_nginx(lab, workdir)
        Path(workdir, "squid.conf").write_text(SQUID.format(dir=workdir))
        squid = lab.start_in(ROLE, [*PROXY_CPUS, "squid", "-N", "-f", f"{workdir}/squid.conf"])
        wait_port(lab, 3128)
        results["squid 5.7"] = measure(lab, 3128, sorted({squid.popen.pid, *pids_of(lab, b"squid")}), args.seconds, workdir)
        squid.popen.terminate()
        squid.popen.wait(30)
        for index, workers in enumerate(args.workers.split(",")):
            port = 8090 + index
            env = environment(
                EGRESS_HTTP_PROXY_DESTINATION="127.0.0.1",
                EGRESS_HTTP_PROXY_LISTEN_PORT=str(port),
                EGRESS_HTTP_PROXY_CONNECT_PORTS="8081",
                EGRESS_HTTP_PROXY_WORKERS=workers,
            )
            with open(Path(workdir, f"egress-access-{workers}.log"), "wb") as log:
                proc = subprocess.Popen(
                    lab.exec_argv(ROLE, [*PROXY_CPUS, sys.executable, "-m", "egress_router", "http-proxy"]),
                    env=env,
                    stdout=log,
                    stderr=subprocess.DEVNULL,
                )
                wait_port(lab, port)
                try:
                    results[f"egress-router, {workers} worker(s)"] = measure(lab, port, pids_of(lab, b"http-proxy"), args.seconds, workdir)
                finally:
                    proc.terminate()
                    proc.wait(30)
    columns = [
        ("keepalive_rps", "req/s, 50 keep-alive conns", ",.0f"),
        ("close_rps", "req/s, new conn each", ",.0f"),
        ("cpu_us_per_request", "CPU µs/request", ".0f"),
        ("tunnel_mb_s", "CONNECT tunnel MB/s", ",.0f"),
        ("kib_per_idle_connection", "KiB per idle conn", ".1f"),
    ]
    print_table("proxy", columns, results, "squid 5.7")
    subprocess.run(["rm", "-rf", workdir], check=False)


if __name__ == "__main__":
    main()
