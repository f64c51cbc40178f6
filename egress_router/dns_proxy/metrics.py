"""The DNS proxy's metrics: labelled by local port, server address and list name, all bounded by the list."""

from __future__ import annotations

from egress_router.observe.stats import CONFIG_RELOADS, Metric

CONNECTIONS = "egress_router_tcp_connections_total"
OPEN = "egress_router_tcp_open_connections"
BYTES = "egress_router_tcp_bytes_total"
CONNECT_FAILURES = "egress_router_tcp_connect_failures_total"
LOOKUPS = "egress_router_dns_lookups_total"
ANSWER_AGE = "egress_router_dns_answer_age_seconds"
STALE = "egress_router_dns_answer_stale"

METRICS = (
    Metric(CONNECTIONS, "counter", "Connections accepted, by local port", ("port",)),
    Metric(OPEN, "gauge", "Open relayed connections, by local port", ("port",)),
    Metric(BYTES, "counter", "Bytes relayed, counted as they flow: in from clients, out to clients", ("port", "direction")),
    Metric(CONNECT_FAILURES, "counter", "Connections to a destination address that failed", ("address",)),
    Metric(
        LOOKUPS, "counter", "DNS lookups of the list's names, by result (ok, negative: no such name or no address, failed)", ("result",)
    ),
    Metric(ANSWER_AGE, "gauge", "Seconds since each name last resolved", ("name",)),
    Metric(STALE, "gauge", "1 while a name's last lookup failed and its last good answer is still used", ("name",)),
    CONFIG_RELOADS,
)
