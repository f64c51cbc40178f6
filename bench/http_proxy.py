"""egress-router http-proxy against Debian's squid (or, with --baseline DIR, another checkout's http-proxy).

Run as root: bash bench/setup.sh && .venv/bin/python bench/http_proxy.py [--rounds 5] [--seconds 10] [--workers 1,2]
             [--baseline DIR]
Both proxies log every request to a file and forward to the same nginx, in one namespace with only lo; rounds,
medians and ratios as bench/common.py says (ours / squid: higher is better for rates, lower for CPU and memory).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from common import (
    IDLE_MEMORY,
    ORIGIN,
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


MEASURES = [*rate_measures("req/s, new conn each"), Measure("tunnel_mb_s", "CONNECT tunnel MB/s", ",.0f"), IDLE_MEMORY]


def measure(lab: Lab, proxy: Contender, seconds: int, workdir: str) -> dict[str, float]:
    scripts = {}
    for close in (False, True):
        scripts[close] = Path(workdir) / f"wrk-{close}.lua"
        scripts[close].write_text(WRK_SCRIPT.format(close=', ["Connection"] = "close"' if close else ""))
    target = f"http://127.0.0.1:{proxy.port}/"
    rates, pids = request_rates(lab, proxy, seconds, ["-s", str(scripts[False]), target], ["-s", str(scripts[True]), target])
    head = f"GET http://{ORIGIN}/small HTTP/1.1\r\nHost: {ORIGIN}\r\n\r\n".encode()
    return {
        **rates,
        "tunnel_mb_s": download_mb_s(lab, ["-p", "-x", f"http://127.0.0.1:{proxy.port}", f"http://{ORIGIN}/big.bin"]),
        "kib_per_idle_connection": idle_memory_kib(lab, proxy.port, pids, head),
    }


def main() -> None:
    parser = proxy_options(__doc__, "http-proxy", "squid")
    parser.add_argument("--workers", default="1,2", help="egress-router worker counts to measure (default 1,2)")
    args = parser.parse_args()
    variants = [(f", {workers} worker{'s' if workers != '1' else ''}", partial(proxy_env, workers)) for workers in args.workers.split(",")]
    with bench_folder() as folder:
        Path(folder, "squid.conf").write_text(SQUID.format(dir=folder))
        logs = (Path(folder, "squid-access.log"), Path(folder, "squid-cache.log"))
        squid = Contender("squid 5.7", ["squid", "-N", "-f", f"{folder}/squid.conf"], 3128, b"squid", logs=logs)
        compete(args, folder, squid, "http-proxy", variants, MEASURES, lambda lab, proxy: measure(lab, proxy, args.seconds, folder))


def proxy_env(workers: str, port: int) -> dict[str, str]:
    return {
        "EGRESS_HTTP_PROXY_DESTINATION": "127.0.0.1",
        "EGRESS_HTTP_PROXY_LISTEN_PORT": str(port),
        "EGRESS_HTTP_PROXY_CONNECT_PORTS": "8081",
        "EGRESS_HTTP_PROXY_WORKERS": workers,
    }


if __name__ == "__main__":
    main()
