"""egress-router dns-proxy against Debian's haproxy (the old DNS proxy image), in one namespace with only lo.

Run as root: bash bench/setup.sh && .venv/bin/python bench/dns_proxy.py [--rounds 5] [--seconds 10] [--splice off,on]
             [--baseline DIR]
Both relay TCP from a local port to the same nginx. Every round starts each relay afresh and measures it, the
order alternating from round to round (haproxy first, then ours first, ...). Prints a Markdown table, a row per
measure: each relay's median over the rounds with its min-max, and ours / haproxy, the ratio of the medians with
the min-max of the per-round ratios (higher is better for rates, lower for CPU and memory).
--baseline DIR runs another checkout's dns-proxy (`git worktree add DIR COMMIT`) instead of haproxy, interleaved
with ours in the same rounds, and gives ours / baseline: a change's cost measured under the same load.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from common import (
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


MEASURES = [
    Measure("keepalive_rps", "req/s, 50 keep-alive conns", ",.0f"),
    Measure("close_rps", "new conns/s", ",.0f"),
    Measure("cpu_us_per_request", "CPU µs/request", ".0f"),
    Measure("bulk_1", "bulk MB/s, 1 stream", ",.0f"),
    Measure("bulk_8", "bulk MB/s, 8 streams", ",.0f"),
    Measure("kib_per_idle_connection", "KiB per idle conn", ".1f"),
]


def measure(lab: Lab, relay: Contender, seconds: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{relay.port}/small"
    wrk(lab, [url], min(seconds, 2))  # warm up
    pids = relay.pids(lab)
    cpu = cpu_seconds(pids)
    keepalive_rps, requests = wrk(lab, [url], seconds)
    cpu_us_per_request = (cpu_seconds(pids) - cpu) / requests * 1e6
    close_rps, _ = wrk(lab, ["-H", "Connection: close", url], seconds)
    big = f"http://127.0.0.1:{relay.port}/big.bin"
    return {
        "keepalive_rps": keepalive_rps,
        "cpu_us_per_request": cpu_us_per_request,
        "close_rps": close_rps,
        "bulk_1": download_mb_s(lab, [big]),
        "bulk_8": download_mb_s(lab, [big], streams=8),
        "kib_per_idle_connection": idle_memory_kib(lab, relay.port, pids, b""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run (default 10)")
    parser.add_argument("--splice", default="off,on", help="EGRESS_DNS_PROXY_SPLICE values to measure (default off,on)")
    add_round_options(parser, rounds=5, baseline="another checkout whose dns-proxy runs in place of haproxy, compared with ours")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="egress-bench-")
    Path(workdir).chmod(0o777)
    Path(workdir, "haproxy.cfg").write_text(HAPROXY)
    haproxy = Contender("haproxy", ["haproxy", "-db", "-f", f"{workdir}/haproxy.cfg"], 7000, b"haproxy")
    variants = [
        (
            " dns-proxy" + (", splice" if mode == "on" else ""),
            lambda port, mode=mode: {"EGRESS_DNS_PROXY_DESTINATION": f"{port} 127.0.0.1 8081", "EGRESS_DNS_PROXY_SPLICE": mode},
        )
        for mode in args.splice.split(",")
    ]
    contenders, which = ours_and_theirs(haproxy, args.baseline, "dns-proxy", variants)
    try:
        with Lab() as lab:
            lab.add_namespace(ROLE)
            start_nginx(lab, workdir)
            samples = run_rounds(lab, contenders, args.rounds, lambda relay: measure(lab, relay, args.seconds))
    finally:
        subprocess.run(["rm", "-rf", workdir], check=False)
    print(f"{which}; wrk {args.seconds} s\n")
    samples.print_table("measure", MEASURES, columns_of(contenders))


if __name__ == "__main__":
    main()
