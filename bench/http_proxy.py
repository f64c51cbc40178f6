"""egress-router http-proxy against Debian's squid, in one namespace with only lo.

Run as root: bash bench/setup.sh && .venv/bin/python bench/http_proxy.py [--rounds 5] [--seconds 10] [--workers 1,2]
             [--baseline DIR]
Both proxies log every request to a file and forward to the same nginx. Every round starts each proxy afresh and
measures it, the order alternating from round to round (squid first, then ours first, ...). Prints a Markdown table,
a row per measure: each proxy's median over the rounds with its min-max, and ours / squid, the ratio of the medians
with the min-max of the per-round ratios (higher is better for rates, lower for CPU and memory).
--baseline DIR runs another checkout's http-proxy (`git worktree add DIR COMMIT`) instead of squid, interleaved
with ours in the same rounds, and gives ours / baseline: a change's cost measured under the same load.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from common import (
    ORIGIN,
    ROLE,
    Contender,
    Measure,
    add_round_options,
    columns_of,
    cpu_seconds,
    download_mb_s,
    idle_memory_kib,
    ours_and_theirs,
    run_rounds,
    start_nginx,
    wrk,
)

from egress_router.lab import Lab

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


MEASURES = [
    Measure("keepalive_rps", "req/s, 50 keep-alive conns", ",.0f"),
    Measure("close_rps", "req/s, new conn each", ",.0f"),
    Measure("cpu_us_per_request", "CPU µs/request", ".0f"),
    Measure("tunnel_mb_s", "CONNECT tunnel MB/s", ",.0f"),
    Measure("kib_per_idle_connection", "KiB per idle conn", ".1f"),
]


def measure(lab: Lab, proxy: Contender, seconds: int, workdir: str) -> dict[str, float]:
    scripts = {}
    for close in (False, True):
        scripts[close] = Path(workdir) / f"wrk-{close}.lua"
        scripts[close].write_text(WRK_SCRIPT.format(close=', ["Connection"] = "close"' if close else ""))
    target = f"http://127.0.0.1:{proxy.port}/"
    wrk(lab, ["-s", str(scripts[False]), target], min(seconds, 2))  # warm up (and let every worker start)
    pids = proxy.pids(lab)
    cpu = cpu_seconds(pids)
    keepalive_rps, requests = wrk(lab, ["-s", str(scripts[False]), target], seconds)
    cpu_us_per_request = (cpu_seconds(pids) - cpu) / requests * 1e6
    close_rps, _ = wrk(lab, ["-s", str(scripts[True]), target], seconds)
    head = f"GET http://{ORIGIN}/small HTTP/1.1\r\nHost: {ORIGIN}\r\n\r\n".encode()
    return {
        "keepalive_rps": keepalive_rps,
        "cpu_us_per_request": cpu_us_per_request,
        "close_rps": close_rps,
        "tunnel_mb_s": download_mb_s(lab, ["-p", "-x", f"http://127.0.0.1:{proxy.port}", f"http://{ORIGIN}/big.bin"]),
        "kib_per_idle_connection": idle_memory_kib(lab, proxy.port, pids, head),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run (default 10)")
    parser.add_argument("--workers", default="1,2", help="egress-router worker counts to measure (default 1,2)")
    add_round_options(parser, rounds=5, baseline="another checkout whose http-proxy runs in place of squid, compared with ours")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="egress-bench-")
    Path(workdir).chmod(0o777)
    Path(workdir, "squid.conf").write_text(SQUID.format(dir=workdir))
    squid = Contender(
        "squid 5.7",
        ["squid", "-N", "-f", f"{workdir}/squid.conf"],
        3128,
        b"squid",
        logs=(Path(workdir, "squid-access.log"), Path(workdir, "squid-cache.log")),
    )
    variants = [
        (
            f", {workers} worker{'s' if workers != '1' else ''}",
            lambda port, workers=workers: {
                "EGRESS_HTTP_PROXY_DESTINATION": "127.0.0.1",
                "EGRESS_HTTP_PROXY_LISTEN_PORT": str(port),
                "EGRESS_HTTP_PROXY_CONNECT_PORTS": "8081",
                "EGRESS_HTTP_PROXY_WORKERS": workers,
            },
        )
        for workers in args.workers.split(",")
    ]
    contenders, which = ours_and_theirs(squid, args.baseline, "http-proxy", variants)
    try:
        with Lab() as lab:
            lab.add_namespace(ROLE)
            start_nginx(lab, workdir)
            samples = run_rounds(lab, contenders, args.rounds, lambda proxy: measure(lab, proxy, args.seconds, workdir))
    finally:
        subprocess.run(["rm", "-rf", workdir], check=False)
    print(f"{which}; wrk {args.seconds} s\n")
    samples.print_table("measure", MEASURES, columns_of(contenders))


if __name__ == "__main__":
    main()
