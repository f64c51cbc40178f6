"""Everything `egress-router dns-proxy` needs, validated together before it listens."""

from __future__ import annotations

from dataclasses import dataclass

from egress_router.config.dns_targets import Target, parse_targets
from egress_router.config.errors import Collector, ConfigError
from egress_router.config.options import METRICS_PORT, SHUTDOWN_DELAY, Count, Duration, Flag, Option, Switch, parse_each

LIST = Option(
    "destination", "EGRESS_DNS_PROXY_DESTINATION", "Ports to forward, one a line: '<local-port> <address-or-name> [<remote-port>]'"
)
LIST_FILE = Option("destination_file", "EGRESS_DNS_PROXY_DESTINATION_FILE", "File holding the relays instead (a mounted ConfigMap)")

#: The settings below the list, one option each, in the order --help shows them.
TUNING = (
    Flag("debug", "EGRESS_DNS_PROXY_DEBUG", "Non-empty: one log line per connection"),
    METRICS_PORT,
    Count("max_connections", "EGRESS_DNS_PROXY_MAX_CONNECTIONS", "Relayed connections in all; more are closed at once", default=4096),
    Duration("idle_timeout", "EGRESS_DNS_PROXY_IDLE_TIMEOUT", "A connection with no bytes either way is closed after this", default=3600.0),
    Duration(
        "connect_timeout",
        "EGRESS_DNS_PROXY_CONNECT_TIMEOUT",
        "Time for one address to accept before giving it up (the next one starts 250 ms after it)",
        default=5.0,
    ),
    SHUTDOWN_DELAY,
    Duration(
        "drain_timeout",
        "EGRESS_DNS_PROXY_DRAIN_TIMEOUT",
        "After the shutdown delay, open connections get this long to finish",
        default=30.0,
    ),
    Duration("min_ttl", "EGRESS_DNS_PROXY_MIN_TTL", "Names are not re-resolved more often than this", default=1.0),
    Duration("max_ttl", "EGRESS_DNS_PROXY_MAX_TTL", "Names are re-resolved at least this often", default=300.0),
    Duration("stale_limit", "EGRESS_DNS_PROXY_STALE_LIMIT", "How long the last good answer is used while DNS fails", default=3600.0),
    Switch(
        "splice",
        "EGRESS_DNS_PROXY_SPLICE",
        "on: relay bytes with zero-copy splice(2); off: copy them through the process, measured faster here",
        default=False,
    ),
)

#: Every option of `egress-router dns-proxy`, in the order --help shows them.
OPTIONS = (LIST, LIST_FILE, *TUNING)


@dataclass(frozen=True)
class DnsProxySettings:
    """The parsed options; their defaults are in TUNING, nowhere else."""

    targets: tuple[Target, ...]
    debug: bool
    metrics_port: int | None
    max_connections: int
    idle_timeout: float
    connect_timeout: float
    shutdown_delay: float
    drain_timeout: float
    min_ttl: float
    max_ttl: float
    stale_limit: float
    splice: bool
    avoid_failed_for: float = 30.0  # not an option: how long an address that failed is tried after the others


def load_dns_settings(*, destination: str | None, **given: str | None) -> DnsProxySettings:
    """`given`: the TUNING options by name, as text; unset ones take their defaults."""
    found = Collector()
    values = found.gather({"targets": lambda: parse_targets(destination)})
    values.update(parse_each(found, TUNING, given))
    found.raise_if_any()
    settings = DnsProxySettings(**values)
    check_metrics_port(settings.targets, settings.metrics_port)
    if settings.min_ttl > settings.max_ttl:
        raise ConfigError.single(
            "EGRESS_DNS_PROXY_MIN_TTL", f"must not exceed EGRESS_DNS_PROXY_MAX_TTL ({settings.max_ttl:g} s)", given.get("min_ttl")
        )
    return settings


def check_metrics_port(targets: tuple[Target, ...], port: int | None) -> tuple[Target, ...]:
    """The metrics port is not a port to forward (at start, and in every new version of the list file)."""
    clash = next((target for target in targets if target.local_port == port), None)
    if clash is not None:
        raise ConfigError.single(
            METRICS_PORT.variable,
            f"port {clash.local_port} is forwarded by EGRESS_DNS_PROXY_DESTINATION line {clash.line_no} too"
            f" (move one of them, or set {METRICS_PORT.variable}=off)",
            str(port),
        )
    return targets
