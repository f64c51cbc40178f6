"""Instructions per request of our proxies, ours against another checkout, counted by valgrind's callgrind.

Run as root: bash bench/setup.sh && .venv/bin/python bench/instructions.py --baseline DIR [--requests 400]
Requests per second move with whatever else the machine runs; the instructions a proxy executes for a fixed number
of requests do not (the same count twice, whatever the load), so this bench tells a 3 % change from noise where the
rate benches cannot. Each contender runs under callgrind with counting off; after a warm-up, counting is switched on
for exactly --requests requests from ab (one client: keep-alive, or a new connection each), then off again.
Interpreted Python is where the proxies spend their instructions, so the ratio is the ratio of their CPU cost.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from common import LOAD_CPU, ORIGIN, ROLE, THIS, Checkout, bench_folder, options, start_nginx

from egress_router.lab import Lab
from egress_router.lab.topology import environment

#: (name, command, environment for a port, ab arguments for the port)
Case = tuple[str, str, Callable[[int], dict[str, str]], Callable[[int], list[str]]]

HTTP_ENV = {"EGRESS_HTTP_PROXY_DESTINATION": "127.0.0.1", "EGRESS_HTTP_PROXY_CONNECT_PORTS": "8081", "EGRESS_HTTP_PROXY_WORKERS": "1"}
CASES: list[Case] = [
    (
        "http-proxy, keep-alive",
        "http-proxy",
        lambda port: {**HTTP_ENV, "EGRESS_HTTP_PROXY_LISTEN_PORT": str(port)},
        lambda port: ["-k", "-X", f"127.0.0.1:{port}", f"http://{ORIGIN}/small"],
    ),
    (
        "http-proxy, new connection each",
        "http-proxy",
        lambda port: {**HTTP_ENV, "EGRESS_HTTP_PROXY_LISTEN_PORT": str(port)},
        lambda port: ["-X", f"127.0.0.1:{port}", f"http://{ORIGIN}/small"],
    ),
    (
        "dns-proxy, new connection each",
        "dns-proxy",
        lambda port: {"EGRESS_DNS_PROXY_DESTINATION": f"{port} 127.0.0.1 8081"},
        lambda port: [f"http://127.0.0.1:{port}/small"],
    ),
]


def ab(lab: Lab, requests: int, argv: list[str]) -> None:
    done = lab.run_in(ROLE, [*LOAD_CPU, "ab", "-q", "-n", str(requests), "-c", "1", *argv], timeout=600)
    failed = re.search(r"Failed requests:\s+(\d+)", done.stdout)
    if done.returncode != 0 or failed is None or failed.group(1) != "0" or "Non-2xx" in done.stdout:
        raise SystemExit(f"ab {' '.join(argv)} failed: {done.stdout[-800:]} {done.stderr[-400:]}")


def callgrind(pid: int, switch: str) -> None:
    subprocess.run(["callgrind_control", "-i", switch, str(pid)], check=True, capture_output=True)


def instructions(lab: Lab, folder: str, checkout: Checkout, case: Case, port: int, requests: int) -> float:
    """Instructions per request of `checkout`'s proxy for `case`: counted only while exactly `requests` ran."""
    _, command, env, ab_args = case
    out = Path(folder, f"callgrind.{checkout.label}.{port}")
    argv = checkout.argv(command)
    python = argv.index(sys.executable)
    argv[python:python] = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    proc = lab.start_in(ROLE, argv, env=environment(PYTHONHASHSEED="0", **env(port)))
    try:
        lab.wait_for_port(ROLE, "127.0.0.1", port, timeout=300, process=proc)
        ab(lab, 50, ab_args(port))  # warm-up: imports done, pools and caches filled
        callgrind(proc.popen.pid, "on")
        ab(lab, requests, ab_args(port))
        callgrind(proc.popen.pid, "off")
    finally:
        proc.popen.terminate()
        proc.popen.wait(120)
    collected = re.search(r"Collected : (\d+)", proc.stderr())
    out.unlink(missing_ok=True)
    if collected is None:
        raise SystemExit(f"callgrind counted nothing: {proc.stderr()[-800:]}")
    return int(collected.group(1)) / requests


def main() -> None:
    parser = options(__doc__, rounds=1, baseline="egress-router is compared with ours")
    parser.add_argument("--requests", type=int, default=400, help="requests counted per contender and case (default 400)")
    args = parser.parse_args()
    if args.baseline is None:
        raise SystemExit("--baseline DIR is needed: this bench compares two checkouts of egress-router")
    theirs = Checkout.at(args.baseline, "baseline")
    rows = []
    with bench_folder() as folder, Lab() as lab:
        lab.add_namespace(ROLE)
        start_nginx(lab, folder)
        for number, case in enumerate(CASES):
            counts: dict[str, list[float]] = {"baseline": [], "ours": []}
            for round_number in range(args.rounds):
                order = (theirs, THIS) if round_number % 2 == 0 else (THIS, theirs)
                for checkout in order:
                    print(f"{case[0]}: {checkout.label}, round {round_number + 1}", file=sys.stderr, flush=True)
                    port = 9300 + 10 * number + len(counts[checkout.label])
                    counts[checkout.label].append(instructions(lab, folder, checkout, case, port, args.requests))
            rows.append((case[0], counts))
    print(f"baseline: {theirs.describe()}; ours: {THIS.describe()}; {args.requests} requests counted, {args.rounds} round(s)\n")
    print("| case | baseline instr/request | ours instr/request | ours / baseline |")
    print("|---|---:|---:|---:|")
    for name, counts in rows:
        base, ours = min(counts["baseline"]), min(counts["ours"])
        spread = ", ".join(f"{o / b:.3f}" for o, b in zip(counts["ours"], counts["baseline"], strict=True))
        print(f"| {name} | {base:,.0f} | {ours:,.0f} | {ours / base:.3f}x (rounds: {spread}) |")


if __name__ == "__main__":
    main()
