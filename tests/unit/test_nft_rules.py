"""The planned rules in nftables' terms, without root: JSON commands, text, and reading the kernel's listing back."""

from __future__ import annotations

import copy
import itertools
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.config.init_settings import load_init_settings
from egress_router.init import nft_rules
from egress_router.init.nft_rules import Chain, Unsupported, layout, read_table, render_text, rule_exprs, write_batch
from egress_router.init.plan import DNAT_CHAIN, NAT_CHAINS, SNAT_CHAIN, ChainSet, XtRule, build_plan, mark_chains, render_plan
from tests.nat_cases import PORT_FORWARD, PORT_FORWARD6

SETTINGS = {
    "source": "192.168.12.99",
    "gateway": "192.168.12.1",
    "destination": "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n53 udp 203.0.113.27\n203.0.113.50",
    "mode": "init",
    "metrics_port": "9191",  # as the examples give it: the monitor's port is kept from the fallback
}


def nat_plan() -> ChainSet:
    nat = build_plan(load_init_settings(**SETTINGS)).families[0].nat
    assert nat is not None
    return nat


def test_redirect_plan_in_nft_form() -> None:
    assert render_text(nat_plan()).splitlines() == [
        "table ip egress_router {",
        "\tchain EGRESS-ROUTER-DNAT {",
        '\t\tiifname "eth0" tcp dport 80 counter dnat to 203.0.113.25',
        '\t\tiifname "eth0" tcp dport 8080 counter dnat to 203.0.113.26:80',
        '\t\tiifname "eth0" udp dport 53 counter dnat to 203.0.113.27',
        '\t\tiifname "eth0" tcp dport 9191 counter return',  # probes reach the pod, not the fallback
        '\t\tiifname "eth0" counter dnat to 203.0.113.50',
        "\t}",
        "",
        "\tchain EGRESS-ROUTER-SNAT {",
        '\t\toifname "macvlan0" counter snat to 192.168.12.99',
        "\t}",
        "",
        "\tchain nat-prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        "\t\tjump EGRESS-ROUTER-DNAT",
        "\t}",
        "",
        "\tchain nat-postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        "\t\tjump EGRESS-ROUTER-SNAT",
        "\t}",
        "}",
    ]


def test_reply_marks_in_nft_form() -> None:
    text = render_text(mark_chains())
    assert '\t\tiifname "eth0" ct state new counter ct mark set ct mark | 0x00400000' in text
    assert "\t\tct direction reply ct mark & 0x00400000 == 0x00400000 counter meta mark set meta mark | 0x00400000" in text
    assert "\t\ttype filter hook prerouting priority mangle; policy accept;" in text
    assert "\t\ttype route hook output priority mangle; policy accept;" in text  # a changed mark re-routes


def test_unit_test_mode_shows_the_chosen_syntax() -> None:
    plan = build_plan(load_init_settings(**SETTINGS))
    text = render_plan(plan, render_text)
    assert "-A EGRESS-ROUTER" not in text and "table ip egress_router {" in text


def test_the_json_of_a_rule_is_what_libnftables_lists() -> None:
    """The forms nft lists back (seen with nft 1.0.6): what holds() compares must be written the same way."""
    assert rule_exprs(PORT_FORWARD) == [
        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}},
        {"counter": None},
        {"dnat": {"addr": "203.0.113.26", "port": 80}},
    ]
    only_protocol = XtRule(DNAT_CHAIN, "RETURN", protocol="udp")
    assert rule_exprs(only_protocol)[0] == {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}


def test_ipv6_chain_sets_go_to_the_ip6_table() -> None:
    chains = ChainSet("nat", NAT_CHAINS, (PORT_FORWARD6,), family="ipv6")
    text = render_text(chains)
    assert text.startswith("table ip6 egress_router {")
    assert '\t\tiifname "eth0" tcp dport 8080 counter dnat to [2001:db8::25]:80' in text
    assert write_batch("ip6", {}, {c.name: c for c in layout(chains)})[0] == {"add": {"table": {"family": "ip6", "name": "egress_router"}}}
    with pytest.raises(Unsupported, match="unknown address family"):
        nft_rules.nft_family(ChainSet("nat", NAT_CHAINS, (), family="ipx"))


@pytest.mark.parametrize(
    ("value", "mask", "listed"),
    [
        (0x400000, 0x400000, {"|": [{"ct": {"key": "mark"}}, 0x400000]}),
        (0, 0x400000, {"&": [{"ct": {"key": "mark"}}, 0xFFBFFFFF]}),
        (0x100000, 0x300000, {"|": [{"&": [{"ct": {"key": "mark"}}, 0xFFDFFFFF]}, 0x100000]}),  # nft lists & 0xffdfffff | 0x00100000
        (0x100000, 0x400000, {"^": [{"&": [{"ct": {"key": "mark"}}, 0xFFBFFFFF]}, 0x100000]}),  # a bit outside the mask toggles
        (5, 0xFFFFFFFF, 5),
    ],
)
def test_set_xmark_in_the_form_nft_lists(value: int, mask: int, listed: Any) -> None:
    assert nft_rules.set_xmark({"ct": {"key": "mark"}}, value, mask) == {"mangle": {"key": {"ct": {"key": "mark"}}, "value": listed}}


@pytest.mark.parametrize(
    "rule",
    [
        XtRule(DNAT_CHAIN, "LOG"),
        XtRule(DNAT_CHAIN, "DNAT", (("to-destination", "203.0.113.1-203.0.113.9"),)),
        XtRule(DNAT_CHAIN, "RETURN", matches=(("tcp", (("dport", "1000:2000"),)),)),
        XtRule(DNAT_CHAIN, "RETURN", matches=(("comment", (("comment", "x"),)),)),
        XtRule(DNAT_CHAIN, "RETURN", matches=(("tcp", (("dport", "80"), ("syn", ""))),)),
        XtRule(DNAT_CHAIN, "MARK", (("set-mark", "1"),)),
    ],
)
def test_a_rule_without_an_nftables_form_is_refused_not_guessed(rule: XtRule) -> None:
    with pytest.raises(Unsupported):
        rule_exprs(rule)


def test_a_built_in_chain_without_a_hook_is_refused() -> None:
    with pytest.raises(Unsupported, match="no nftables hook"):
        layout(ChainSet("filter", (("X", ("INPUT",)),), ()))


# the kernel's listing ------------------------------------------------------------------------------------------------

_handles = itertools.count(1)


def listing(chains: tuple[Chain, ...], family: str = "ip", packets: int = 0) -> list[dict[str, Any]]:
    """What `list table` answers once `chains` are in: handles, counters with numbers, chains before rules."""
    items: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]
    items.append({"table": {"family": family, "name": "egress_router", "handle": next(_handles)}})
    for chain in chains:
        items.append(
            {"chain": {"family": family, "table": "egress_router", "name": chain.name, "handle": next(_handles), **(chain.hook or {})}}
        )
    for chain in chains:
        for rule in chain.rules:
            expr = [{"counter": {"packets": packets, "bytes": 60 * packets}} if "counter" in e else copy.deepcopy(e) for e in rule]
            items.append(
                {"rule": {"family": family, "table": "egress_router", "chain": chain.name, "handle": next(_handles), "expr": expr}}
            )
    return items


def test_what_the_kernel_lists_after_writing_holds_the_plan() -> None:
    wanted = layout(nat_plan())
    found = read_table(listing(wanted, packets=7), "ip")
    assert nft_rules.holds(found, wanted)  # counters' values aside
    assert nft_rules.counters(found, nat_plan()) == [(7, 420)] * 6


def test_a_flushed_chain_or_a_moved_base_chain_does_not_hold() -> None:
    wanted = layout(nat_plan())
    found = read_table(listing(wanted), "ip")
    flushed = {**found, DNAT_CHAIN: Chain(DNAT_CHAIN, None, ())}
    assert not nft_rules.holds(flushed, wanted)
    assert nft_rules.counters(flushed, nat_plan()) is None
    moved = {
        **found,
        "nat-prerouting": Chain("nat-prerouting", {**(found["nat-prerouting"].hook or {}), "prio": 0}, found["nat-prerouting"].rules),
    }
    assert not nft_rules.holds(moved, wanted)
    assert not nft_rules.holds({}, wanted)


def test_other_families_and_tables_in_the_listing_are_ignored() -> None:
    wanted = layout(nat_plan())
    items = listing(wanted) + [{"chain": {"family": "ip", "table": "nat", "name": DNAT_CHAIN, "handle": 1}}]
    items += [{"chain": {"family": "ip6", "table": "egress_router", "name": "x", "handle": 1}}]
    assert set(read_table(items, "ip")) == {c.name for c in wanted}


def test_writing_into_a_fresh_table() -> None:
    wanted = layout(nat_plan())
    commands = write_batch("ip", {}, {c.name: c for c in wanted})
    assert commands[0] == {"add": {"table": {"family": "ip", "name": "egress_router"}}}
    added = [c["add"]["chain"]["name"] for c in commands if "chain" in c.get("add", {})]
    assert added == [DNAT_CHAIN, SNAT_CHAIN, "nat-prerouting", "nat-postrouting"]  # jump targets first
    assert not [c for c in commands if "flush" in c or "delete" in c]
    assert sum("rule" in c.get("add", {}) for c in commands) == 6 + 2


def test_rewriting_flushes_and_fills_each_chain_in_the_same_batch() -> None:
    wanted = layout(nat_plan())
    found = read_table(listing(wanted), "ip")
    commands = write_batch("ip", found, {c.name: c for c in wanted})
    assert [c["flush"]["chain"]["name"] for c in commands if "flush" in c] == [
        c.name for c in sorted(wanted, key=lambda c: c.hook is not None)
    ]
    assert not [c for c in commands if "delete" in c]


def test_removing_the_last_chains_removes_the_table_and_keeps_others() -> None:
    nat, marks = layout(nat_plan()), layout(mark_chains())
    alone = read_table(listing(nat), "ip")
    assert write_batch("ip", alone, dict.fromkeys(c.name for c in nat)) == [
        {"delete": {"table": {"family": "ip", "name": "egress_router"}}}
    ]
    assert write_batch("ip", {}, dict.fromkeys(c.name for c in nat)) == []
    both = read_table(listing(nat + marks), "ip")
    commands = write_batch("ip", both, dict.fromkeys(c.name for c in nat))
    deleted = [c["delete"]["chain"]["name"] for c in commands if "delete" in c]
    assert deleted == ["nat-prerouting", "nat-postrouting", DNAT_CHAIN, SNAT_CHAIN]  # base chains (the jumps) first
    assert {"delete": {"table": {"family": "ip", "name": "egress_router"}}} not in commands


def test_a_base_chain_on_another_hook_is_made_again() -> None:
    wanted = layout(nat_plan())
    found = read_table(listing(wanted), "ip")
    found["nat-prerouting"] = Chain("nat-prerouting", {"type": "filter", "hook": "prerouting", "prio": 0, "policy": "accept"}, ())
    commands = write_batch("ip", found, {c.name: c for c in wanted})
    ref = {"family": "ip", "table": "egress_router", "name": "nat-prerouting"}
    assert commands.index({"delete": {"chain": ref}}) < commands.index(
        {"add": {"chain": {**ref, **nft_rules.HOOKS[("nat", "PREROUTING")]}}}
    )


# property tests: parsing what the plan writes, reading what the kernel lists --------------------------------------------

ipv4 = st.builds(IPv4Address, st.integers(0, 2**32 - 1)).map(str)
ipv6 = st.builds(IPv6Address, st.integers(0, 2**128 - 1)).map(str)
ports = st.none() | st.integers(1, 65535)


@given(st.one_of(ipv4, ipv6), ports)
def test_nat_targets_read_back_as_written(address: str, port: int | None) -> None:
    text = f"[{address}]:{port}" if ":" in address and port else (f"{address}:{port}" if port else address)
    assert nft_rules.parse_endpoint(text) == (address, port)
    assert nft_rules.format_endpoint(address, port) == text


@given(st.text(max_size=30))
def test_any_nat_target_text_parses_or_is_refused_clearly(text: str) -> None:
    try:
        address, port = nft_rules.parse_endpoint(text)
    except Unsupported:
        return
    assert port is None or 1 <= port <= 65535
    assert nft_rules.parse_endpoint(nft_rules.format_endpoint(address, port)) == (address, port)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_marks_read_back(value: int, mask: int) -> None:
    assert nft_rules.parse_mark(f"{value:#x}/{mask:#x}") == (value, mask)
    assert nft_rules.parse_mark(str(value)) == (value, 0xFFFFFFFF)


rules = st.builds(
    lambda port, proto, to, remote: XtRule(
        DNAT_CHAIN,
        "DNAT",
        (("to-destination", nft_rules.format_endpoint(to, remote)),),
        in_interface="eth0",
        protocol=proto,
        matches=((proto, (("dport", str(port)),)),),
    ),
    st.integers(1, 65535),
    st.sampled_from(["tcp", "udp", "sctp"]),
    ipv4,
    ports,
)


@given(st.lists(rules, max_size=20), st.integers(0, 10**9))
def test_the_listing_of_any_plan_reads_back_as_that_plan(planned: list[XtRule], packets: int) -> None:
    snat = XtRule(SNAT_CHAIN, "SNAT", (("to-source", "192.168.12.99"),), out_interface="net1")
    chains = ChainSet("nat", NAT_CHAINS, (*planned, snat))
    wanted = layout(chains)
    found = read_table(listing(wanted, packets=packets), "ip")
    assert nft_rules.holds(found, wanted)
    assert nft_rules.counters(found, chains) == [(packets, 60 * packets)] * (len(planned) + 1)
    if planned:
        shorter = layout(ChainSet("nat", NAT_CHAINS, (*planned[1:], snat)))
        assert not nft_rules.holds(found, shorter)
