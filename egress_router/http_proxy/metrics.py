"""The HTTP proxy's metrics: labels of bounded cardinality only (never a client address, a name or a URL)."""

from __future__ import annotations

from http import HTTPStatus

from egress_router.observe.stats import CONFIG_RELOADS, DURATION_BUCKETS, Metric

REQUESTS = "egress_router_http_requests_total"
LIST_DECISIONS = "egress_router_http_list_decisions_total"
BYTES = "egress_router_http_bytes_total"
CONNECT_ERRORS = "egress_router_http_upstream_connect_errors_total"
DURATION = "egress_router_http_request_duration_seconds"
CONNECTIONS = "egress_router_http_client_connections"
TUNNELS = "egress_router_http_tunnels"
TUNNEL_DURATION = "egress_router_http_tunnel_duration_seconds"

#: Tunnels live from seconds (an API call) to a day (a database session): their own, longer buckets.
TUNNEL_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 24 * 3600.0)

METRICS = (
    Metric(
        REQUESTS,
        "counter",
        "Requests answered, a CONNECT counted as one, by method, status and the list's decision",
        ("method", "code", "decision"),
    ),
    Metric(LIST_DECISIONS, "counter", "The list's decisions by the line that made them (none: no line did)", ("line", "decision")),
    Metric(
        BYTES,
        "counter",
        "Body and tunnel bytes passed on (tunnels' as they flow): in from clients to servers, out from servers to clients",
        ("direction",),
    ),
    Metric(CONNECT_ERRORS, "counter", "Connections to servers that failed, by kind", ("kind",)),
    Metric(
        DURATION,
        "histogram",
        "From a request's head to the end of its answer (a CONNECT: until the tunnel is up), seconds",
        (),
        DURATION_BUCKETS,
    ),
    Metric(TUNNEL_DURATION, "histogram", "How long CONNECT tunnels stayed open, seconds", (), TUNNEL_BUCKETS),
    Metric(CONNECTIONS, "gauge", "Open client connections"),
    Metric(TUNNELS, "gauge", "Open CONNECT tunnels"),
    CONFIG_RELOADS,
)

#: Methods counted by name; anything else (or no parsable request at all) is "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"})

#: Statuses counted by number (the standard ones); anything a server makes up is "other", so labels stay bounded.
CODES = frozenset(str(status.value) for status in HTTPStatus)
