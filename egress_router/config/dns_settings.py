"""Everything `egress-router dns-proxy` needs, validated together before it listens."""

from __future__ import annotations

from dataclasses import dataclass

from egress_router.config.dns_targets import Target, parse_targets
from egress_router.config.errors import Collector, ConfigError, Problem
from egress_router.config.values import parse_count, parse_duration


@dataclass(frozen=True)
class DnsProxySettings:
    targets: tuple[Target, ...]
    debug: bool = False
    max_connections: int = 4096
    idle_timeout: float = 3600.0
    connect_timeout: float = 5.0
    drain_timeout: float = 30.0
    min_ttl: float = 1.0
    max_ttl: float = 300.0
    stale_limit: float = 3600.0
    avoid_failed_for: float = 30.0
    splice: bool = False


def load_dns_settings(
    *,
    destination: str | None,
    debug: str | None = None,
    max_connections: str | None = None,
    idle_timeout: str | None = None,
    connect_timeout: str | None = None,
    drain_timeout: str | None = None,
    min_ttl: str | None = None,
    max_ttl: str | None = None,
    stale_limit: str | None = None,
    splice: str | None = None,
) -> DnsProxySettings:
    found = Collector()
    values: dict[str, object] = {"debug": bool(debug and debug.strip())}
    choice = (splice or "off").strip().lower()
    if choice not in ("on", "off"):
        found.add(Problem("EGRESS_DNS_PROXY_SPLICE", "must be on or off", choice))
    values["splice"] = choice == "on"
    steps = {
        "targets": lambda: parse_targets(destination),
        "max_connections": lambda: parse_count(max_connections, "EGRESS_DNS_PROXY_MAX_CONNECTIONS", 4096),
        "idle_timeout": lambda: parse_duration(idle_timeout, "EGRESS_DNS_PROXY_IDLE_TIMEOUT", 3600.0),
        "connect_timeout": lambda: parse_duration(connect_timeout, "EGRESS_DNS_PROXY_CONNECT_TIMEOUT", 5.0),
        "drain_timeout": lambda: parse_duration(drain_timeout, "EGRESS_DNS_PROXY_DRAIN_TIMEOUT", 30.0),
        "min_ttl": lambda: parse_duration(min_ttl, "EGRESS_DNS_PROXY_MIN_TTL", 1.0),
        "max_ttl": lambda: parse_duration(max_ttl, "EGRESS_DNS_PROXY_MAX_TTL", 300.0),
        "stale_limit": lambda: parse_duration(stale_limit, "EGRESS_DNS_PROXY_STALE_LIMIT", 3600.0),
    }
    values.update(found.gather(steps))
    found.raise_if_any()
    settings = DnsProxySettings(**values)  # type: ignore[arg-type]
    if settings.min_ttl > settings.max_ttl:
        raise ConfigError.single("EGRESS_DNS_PROXY_MIN_TTL", f"must not exceed EGRESS_DNS_PROXY_MAX_TTL ({settings.max_ttl:g} s)", min_ttl)
    return settings
