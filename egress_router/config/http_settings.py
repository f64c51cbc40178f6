"""Everything `egress-router http-proxy` needs, validated together before it listens."""

from __future__ import annotations

from dataclasses import dataclass

from egress_router.config.errors import Collector, ConfigError
from egress_router.config.http_acl import Acl, parse_acl
from egress_router.config.options import METRICS_PORT, PER_CPU, SHUTDOWN_DELAY, Count, Duration, Flag, Option, Port, Ports, parse_each

LIST = Option(
    "destination", "EGRESS_HTTP_PROXY_DESTINATION", "Allow/deny list, one rule a line: address, CIDR, name, *.domain, !rule, and * last"
)
LIST_FILE = Option("destination_file", "EGRESS_HTTP_PROXY_DESTINATION_FILE", "File holding the list instead (a mounted ConfigMap)")

#: The settings below the list, one option each, in the order --help shows them.
TUNING = (
    Port("listen_port", "EGRESS_HTTP_PROXY_LISTEN_PORT", "Port to listen on, IPv4 and IPv6", default=8080),
    METRICS_PORT,
    Ports("connect_ports", "EGRESS_HTTP_PROXY_CONNECT_PORTS", "Ports CONNECT tunnels may reach, comma-separated", default=frozenset({443})),
    Count("max_connections", "EGRESS_HTTP_PROXY_MAX_CONNECTIONS", "Client connections per worker; more get 503", default=4096),
    Count(
        "max_header_size",
        "EGRESS_HTTP_PROXY_MAX_HEADER_SIZE",
        "Largest request head in bytes; larger gets 431",
        default=64 * 1024,
        minimum=1024,
        maximum=1024 * 1024,
    ),
    Duration("header_timeout", "EGRESS_HTTP_PROXY_HEADER_TIMEOUT", "Time to send a whole request head; slower gets 408", default=10.0),
    Duration(
        "idle_timeout", "EGRESS_HTTP_PROXY_IDLE_TIMEOUT", "Idle keep-alive connections and silent servers are cut after this", default=60.0
    ),
    Duration(
        "tunnel_idle_timeout",
        "EGRESS_HTTP_PROXY_TUNNEL_IDLE_TIMEOUT",
        "A CONNECT tunnel with no bytes either way is closed after this",
        default=3600.0,
    ),
    Duration(
        "connect_timeout",
        "EGRESS_HTTP_PROXY_CONNECT_TIMEOUT",
        "Time to connect to one server address before giving it up (the next one starts 250 ms after it)",
        default=10.0,
    ),
    SHUTDOWN_DELAY,
    Duration(
        "drain_timeout",
        "EGRESS_HTTP_PROXY_DRAIN_TIMEOUT",
        "After the shutdown delay, in-flight requests get this long to finish",
        default=30.0,
    ),
    Count("workers", "EGRESS_HTTP_PROXY_WORKERS", "Worker processes sharing the port", default=PER_CPU, minimum=1, maximum=256),
)

DEBUG = Flag("debug", "EGRESS_ROUTER_DEBUG", "Non-empty: log more")

#: Every option of `egress-router http-proxy`, in the order --help shows them.
OPTIONS = (LIST, LIST_FILE, *TUNING, DEBUG)


@dataclass(frozen=True)
class HttpProxySettings:
    """The parsed options; their defaults are in TUNING, nowhere else."""

    acl: Acl
    listen_port: int
    metrics_port: int | None
    connect_ports: frozenset[int]
    max_connections: int
    max_header_size: int
    header_timeout: float
    idle_timeout: float
    tunnel_idle_timeout: float
    connect_timeout: float
    shutdown_delay: float
    drain_timeout: float
    workers: int


def load_http_settings(*, destination: str | None, **given: str | None) -> HttpProxySettings:
    """`given`: the TUNING options by name, as text; unset ones take their defaults."""
    found = Collector()
    values = found.gather({"acl": lambda: parse_acl(destination)})
    values.update(parse_each(found, TUNING, given))
    found.raise_if_any()
    settings = HttpProxySettings(**values)
    if settings.metrics_port == settings.listen_port:
        raise ConfigError.single(
            METRICS_PORT.variable,
            f"port {settings.listen_port} is EGRESS_HTTP_PROXY_LISTEN_PORT too (move one of them, or set {METRICS_PORT.variable}=off)",
            given.get("metrics_port"),
        )
    return settings
