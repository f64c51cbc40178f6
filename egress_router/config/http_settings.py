"""Everything `egress-router http-proxy` needs, validated together before it listens."""

from __future__ import annotations

import os
from dataclasses import dataclass

from egress_router.config.errors import Collector
from egress_router.config.http_acl import Acl, parse_acl
from egress_router.config.values import parse_count, parse_duration, parse_port_list, parse_port_value


@dataclass(frozen=True)
class HttpProxySettings:
    acl: Acl
    listen_port: int = 8080
    connect_ports: frozenset[int] = frozenset({443})
    max_connections: int = 4096
    max_header_size: int = 64 * 1024
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    tunnel_idle_timeout: float = 3600.0
    connect_timeout: float = 10.0
    drain_timeout: float = 30.0
    workers: int = 1


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def load_http_settings(
    *,
    destination: str | None,
    listen_port: str | None = None,
    connect_ports: str | None = None,
    max_connections: str | None = None,
    max_header_size: str | None = None,
    header_timeout: str | None = None,
    idle_timeout: str | None = None,
    tunnel_idle_timeout: str | None = None,
    connect_timeout: str | None = None,
    drain_timeout: str | None = None,
    workers: str | None = None,
) -> HttpProxySettings:
    found = Collector()
    values: dict[str, object] = {}
    steps = {
        "acl": lambda: parse_acl(destination),
        "listen_port": lambda: parse_port_value(listen_port, "EGRESS_HTTP_PROXY_LISTEN_PORT", 8080),
        "connect_ports": lambda: parse_port_list(connect_ports, "EGRESS_HTTP_PROXY_CONNECT_PORTS", (443,)),
        "max_connections": lambda: parse_count(max_connections, "EGRESS_HTTP_PROXY_MAX_CONNECTIONS", 4096),
        "max_header_size": lambda: parse_count(max_header_size, "EGRESS_HTTP_PROXY_MAX_HEADER_SIZE", 64 * 1024, 1024, 1024 * 1024),
        "header_timeout": lambda: parse_duration(header_timeout, "EGRESS_HTTP_PROXY_HEADER_TIMEOUT", 10.0),
        "idle_timeout": lambda: parse_duration(idle_timeout, "EGRESS_HTTP_PROXY_IDLE_TIMEOUT", 60.0),
        "tunnel_idle_timeout": lambda: parse_duration(tunnel_idle_timeout, "EGRESS_HTTP_PROXY_TUNNEL_IDLE_TIMEOUT", 3600.0),
        "connect_timeout": lambda: parse_duration(connect_timeout, "EGRESS_HTTP_PROXY_CONNECT_TIMEOUT", 10.0),
        "drain_timeout": lambda: parse_duration(drain_timeout, "EGRESS_HTTP_PROXY_DRAIN_TIMEOUT", 30.0),
        "workers": lambda: parse_count(workers, "EGRESS_HTTP_PROXY_WORKERS", default_workers(), 1, 256),
    }
    values.update(found.gather(steps))
    found.raise_if_any()
    return HttpProxySettings(**values)  # type: ignore[arg-type]
