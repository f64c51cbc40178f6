"""What `monitor` (and `init` in legacy mode) report: the NAT rules' counters, repairs, the egress address."""

from __future__ import annotations

from egress_router.observe.stats import CONFIG_RELOADS, Metric

NAT_PACKETS = "egress_router_nat_packets_total"
NAT_BYTES = "egress_router_nat_bytes_total"
RESTORES = "egress_router_restores_total"
ADDRESS = "egress_router_egress_address_present"
ARP = "egress_router_arp_last_announce_timestamp_seconds"
CONFLICTS = "egress_router_address_conflicts_total"
CONFLICT = "egress_router_address_conflict"

METRICS = (
    Metric(NAT_PACKETS, "counter", "Packets each NAT rule matched (rule: its EGRESS_DESTINATION line, metrics-port or snat)", ("rule",)),
    Metric(NAT_BYTES, "counter", "Bytes of the packets each NAT rule matched", ("rule",)),
    Metric(RESTORES, "counter", "Times something had changed and was put back (what: reply-routing, reply-marks, nat)", ("what",)),
    Metric(ADDRESS, "gauge", "1 while EGRESS_SOURCE is on the egress interface"),
    Metric(ARP, "gauge", "When the egress address was last announced with gratuitous ARP, Unix time"),
    Metric(CONFLICTS, "counter", "Times another host began to claim EGRESS_SOURCE (its MAC is in the log)"),
    Metric(CONFLICT, "gauge", "1 while another host claims EGRESS_SOURCE (from its first ARP or NA until a probe goes unanswered)"),
    CONFIG_RELOADS,
)
