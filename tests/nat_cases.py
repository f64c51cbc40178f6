"""NAT chain sets for the tests of both backends: one table for the lab (applied in a real pod) and the unit tests
(their nftables form, without root)."""

from __future__ import annotations

from dataclasses import replace

from egress_router.init.plan import DNAT_CHAIN, MARK_CHAINS, NAT_CHAINS, SNAT_CHAIN, ChainSet, XtRule, mark_chains

#: A port forwarded to another port of the destination, in each family.
PORT_FORWARD = XtRule(
    DNAT_CHAIN,
    "DNAT",
    (("to-destination", "203.0.113.26:80"),),
    in_interface="eth0",
    protocol="tcp",
    matches=(("tcp", (("dport", "8080"),)),),
)
PORT_FORWARD6 = replace(PORT_FORWARD, target_options=(("to-destination", "[2001:db8::25]:80"),))

#: Every form of rule the nftables backend writes, in chain sets of both families: applied, each must read back as
#: written (a second apply changes nothing), and its text, loaded with `nft -f`, must be the same rules.
SAMPLES = {
    "reply-marks": mark_chains(),
    "marks": ChainSet(
        "mangle",
        MARK_CHAINS,
        (
            XtRule(
                "EGRESS-ROUTER-MARK",
                "CONNMARK",
                (("set-xmark", "0x0/0x400000"),),
                matches=(("conntrack", (("ctstate", "NEW,ESTABLISHED"),)),),
            ),
            XtRule(
                "EGRESS-ROUTER-MARK", "CONNMARK", (("set-xmark", "0x100000/0x300000"),), matches=(("conntrack", (("ctdir", "ORIGINAL"),)),)
            ),
            XtRule("EGRESS-ROUTER-MARK", "MARK", (("set-xmark", "0x5/0xffffffff"),), matches=(("mark", (("mark", "0x7"),)),)),
            XtRule("EGRESS-ROUTER-MARK", "MARK", (("set-xmark", "0x100000/0x400000"),), in_interface="eth0"),
            XtRule("EGRESS-ROUTER-MARK", "ACCEPT", protocol="udp", matches=(("connmark", (("mark", "0x1/0xff"),)),)),
            XtRule("EGRESS-ROUTER-MARK", "RETURN", in_interface="eth0", protocol="sctp"),
        ),
    ),
    "nat-ipv4": ChainSet(
        "nat",
        NAT_CHAINS,
        (
            PORT_FORWARD,
            XtRule(DNAT_CHAIN, "RETURN", in_interface="eth0", protocol="udp", matches=(("udp", (("sport", "53"), ("dport", "5353"))),)),
            XtRule(DNAT_CHAIN, "DNAT", (("to-destination", "203.0.113.50"),), in_interface="eth0"),
            XtRule(SNAT_CHAIN, "SNAT", (("to-source", "192.168.12.99"),), out_interface="net1"),
        ),
    ),
    "nat-ipv6": ChainSet(
        "nat",
        NAT_CHAINS,
        (
            PORT_FORWARD6,
            XtRule(DNAT_CHAIN, "DNAT", (("to-destination", "2001:db8::50"),), in_interface="eth0"),
            XtRule(SNAT_CHAIN, "SNAT", (("to-source", "2001:db8:12::99"),), out_interface="macvlan0"),
        ),
        family="ipv6",
    ),
}
