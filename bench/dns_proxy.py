"""egress-router dns-proxy against Debian's haproxy, the old DNS proxy image's engine (or, with --baseline DIR,
another checkout's dns-proxy).

Run as root: bash bench/setup.sh && .venv/bin/python bench/dns_proxy.py [--rounds 5] [--seconds 10] [--splice off,on]
             [--baseline DIR]
Both relay TCP from a local port to the same nginx, in one namespace with only lo; rounds, medians and ratios as
bench/common.py says (ours / haproxy: higher is better for rates, lower for CPU and memory).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from common import (
    IDLE_MEMORY,
    Contender,
    Measure,
    bench_folder,
    compete,
    download_mb_s,
    idle_memory_kib,
    proxy_options,
    rate_measures,
    request_rates,
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
    *rate_measures("new conns/s"),
    Measure("bulk_1", "bulk MB/s, 1 stream", ",.0f"),
    Measure("bulk_8", "bulk MB/s, 8 streams", ",.0f"),
    IDLE_MEMORY,
]


def measure(lab: Lab, relay: Contender, seconds: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{relay.port}/small"
    rates, pids = request_rates(lab, relay, seconds, [url], ["-H", "Connection: close", url])
    big = f"http://127.0.0.1:{relay.port}/big.bin"
    return {
        **rates,
        "bulk_1": download_mb_s(lab, [big]),
        "bulk_8": download_mb_s(lab, [big], streams=8),
        "kib_per_idle_connection": idle_memory_kib(lab, relay.port, pids, b""),
    }


def main() -> None:
    parser = proxy_options(__doc__, "dns-proxy", "haproxy")
    parser.add_argument("--splice", default="off,on", help="EGRESS_DNS_PROXY_SPLICE values to measure (default off,on)")
    args = parser.parse_args()
    variants = [(" dns-proxy" + (", splice" if mode == "on" else ""), partial(relay_env, mode)) for mode in args.splice.split(",")]
    with bench_folder() as folder:
        Path(folder, "haproxy.cfg").write_text(HAPROXY)
        haproxy = Contender("haproxy", ["haproxy", "-db", "-f", f"{folder}/haproxy.cfg"], 7000, b"haproxy")
        compete(args, folder, haproxy, "dns-proxy", variants, MEASURES, lambda lab, relay: measure(lab, relay, args.seconds))


def relay_env(mode: str, port: int) -> dict[str, str]:
    return {"EGRESS_DNS_PROXY_DESTINATION": f"{port} 127.0.0.1 8081", "EGRESS_DNS_PROXY_SPLICE": mode}


if __name__ == "__main__":
    main()
