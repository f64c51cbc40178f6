"""What `monitor` (and `init` in legacy mode) report: the NAT rules' counters, repairs, the egress address."""

from __future__ import annotations

from egress_router.observe.stats import CONFIG_RELOADS, Metric

NAT_PACKETS = "egress_router_nat_packets_total"
NAT_BYTES = "egress_router_nat_bytes_total"
RESTORES = "egress_router_restores_total"
ADDRESS = "egress_router_egress_address_present"
ARP = "egress_router_arp_last_announce_timestamp_seconds"

METRICS = (
    Metric(NAT_PACKETS, "counter", "Packets each NAT rule matched (rule: its EGRESS_DESTINATION line, metrics-port or snat)", ("rule",)),
    Metric(NAT_BYTES, "counter", "Bytes of the packets each NAT rule matched", ("rule",)),
    Metric(RESTORES, "counter", "Times something had changed and was put back (what: reply-routing, reply-marks, nat)", ("what",)),
    Metric(ADDRESS, "gauge", "1 while EGRESS_SOURCE is on the egress interface"),
    Metric(ARP, "gauge", "When the egress address was last announced with gratuitous ARP, Unix time"),
    CONFIG_RELOADS,
)
