import pytest

from egress_router.config.addresses import IPV4, IPV6
from egress_router.config.destinations import parse_destinations
from egress_router.config.errors import ConfigError
from egress_router.config.init_settings import InitSettings, check_metrics_port, load_init_settings, load_monitor_settings
from egress_router.init.plan import build_plan, dnat_target, labelled_nat_rules, render_plan

SETTINGS = {
    "source": "192.168.12.99",
    "gateway": "192.168.12.1",
    "destination": "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n53 udp 203.0.113.27\n203.0.113.50",
}


def test_redirect_plan_in_iptables_save_form() -> None:
    plan = build_plan(load_init_settings(**SETTINGS, mode="init", metrics_port="9191"))
    assert plan.forwarding
    assert render_plan(plan).splitlines() == [
        "link   macvlan0: must already exist in this pod",
        "sysctl net.ipv6.conf.macvlan0.accept_ra=0 (before macvlan0 comes up; skipped if it has no IPv6)",
        "sysctl net.ipv6.conf.macvlan0.autoconf=0 (before macvlan0 comes up; skipped if it has no IPv6)",
        "probe  ARP for 192.168.12.99 on macvlan0, 3 probes in ~1s (unless it is on it already): another host answering stops init, nothing changed",
        "addr   192.168.12.99/32 dev macvlan0 (only address on it)",
        "table  201: eth0's routes as found, its default route via <eth0's next hop> included (kept for replies)",
        "rule   fwmark 0x400000/0x400000 lookup 201 priority 1000 (replies to connections that arrived on eth0 leave through eth0)",
        "route  192.168.12.1/32 dev macvlan0 scope link",
        "route  default via 192.168.12.1 dev macvlan0 (replaces the current default route)",
        "sysctl net.ipv4.ip_forward=1",
        "sysctl net.ipv4.conf.eth0.rp_filter=2",
        "*mangle",
        ":EGRESS-ROUTER-MARK - [0:0]",
        "-I PREROUTING 1 -j EGRESS-ROUTER-MARK",
        "-I OUTPUT 1 -j EGRESS-ROUTER-MARK",
        "-A EGRESS-ROUTER-MARK -i eth0 -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x400000/0x400000",
        "-A EGRESS-ROUTER-MARK -m conntrack --ctdir REPLY -m connmark --mark 0x400000/0x400000 -j MARK --set-xmark 0x400000/0x400000",
        "COMMIT",
        "*nat",
        ":EGRESS-ROUTER-DNAT - [0:0]",
        ":EGRESS-ROUTER-SNAT - [0:0]",
        "-I PREROUTING 1 -j EGRESS-ROUTER-DNAT",
        "-I POSTROUTING 1 -j EGRESS-ROUTER-SNAT",
        "-A EGRESS-ROUTER-DNAT -i eth0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 203.0.113.25",
        "-A EGRESS-ROUTER-DNAT -i eth0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 203.0.113.26:80",
        "-A EGRESS-ROUTER-DNAT -i eth0 -p udp -m udp --dport 53 -j DNAT --to-destination 203.0.113.27",
        "-A EGRESS-ROUTER-DNAT -i eth0 -p tcp -m tcp --dport 9191 -j RETURN",  # probes reach the pod, not the fallback
        "-A EGRESS-ROUTER-DNAT -i eth0 -j DNAT --to-destination 203.0.113.50",
        "-A EGRESS-ROUTER-SNAT -o macvlan0 -j SNAT --to-source 192.168.12.99",
        "COMMIT",
        "flush  what router advertisements gave macvlan0 before: proto ra or expiring routes, SLAAC addresses (last)",
    ]


@pytest.mark.parametrize("mode", ["init", "legacy", "unit-test", "http-proxy", "dns-proxy"])
@pytest.mark.parametrize(
    ("source", "gateway"),
    [("192.168.12.99", "192.168.12.1"), ("2001:db8:12::99", "2001:db8:12::1"), ("192.168.12.99,2001:db8:12::99", "192.168.12.1,fe80::1")],
    ids=["ipv4-only", "ipv6-only", "dual-stack"],
)
def test_every_mode_and_family_turns_router_advertisements_off_on_the_egress_interface(mode: str, source: str, gateway: str) -> None:
    """An IPv4-only router most of all: an advertised IPv6 default route would make the proxies connect over IPv6."""
    destination = None if mode.endswith("proxy") else "80 tcp 2001:db8::25" if ":" in source else SETTINGS["destination"]
    plan = build_plan(load_init_settings(source=source, gateway=gateway, destination=destination, mode=mode, interface="net1"))
    assert plan.egress_sysctls == (("net.ipv6.conf.net1.accept_ra", "0"), ("net.ipv6.conf.net1.autoconf", "0"))
    assert not set(plan.egress_sysctls) & set(plan.sysctls)  # written before the link comes up, not with the pod's own
    assert "sysctl net.ipv6.conf.net1.accept_ra=0 (before net1 comes up; skipped if it has no IPv6)" in render_plan(plan)
    # duplicate address detection, IPv6's claim check, is made sure of only where there is an IPv6 address to claim
    dad = (("net.ipv6.conf.net1.accept_dad", 1), ("net.ipv6.conf.net1.dad_transmits", 1))
    assert plan.egress_minimums == (dad if ":" in source else ())
    assert ("sysctl net.ipv6.conf.net1.accept_dad>=1 (duplicate address detection: IPv6's claim check)" in render_plan(plan)) == (
        ":" in source
    )


def test_a_dot_in_the_egress_interface_name_is_a_slash_in_the_sysctl_key() -> None:
    """As sysctl(8) writes it: the edge turns it back into the dot of /proc/sys/net/ipv6/conf/eth1.100/."""
    plan = build_plan(load_init_settings(**{**SETTINGS, "destination": None}, mode="http-proxy", interface="eth1.100"))
    assert [key for key, _ in plan.egress_sysctls] == ["net.ipv6.conf.eth1/100.accept_ra", "net.ipv6.conf.eth1/100.autoconf"]


def test_proxy_modes_plan_no_nat_and_no_forwarding() -> None:
    plan = build_plan(load_init_settings(**{**SETTINGS, "destination": None}, mode="http-proxy"))
    assert plan.nat_rules is None and not plan.forwarding
    assert "nat    none" in render_plan(plan)


def test_subnet_source_and_created_macvlan() -> None:
    settings = load_init_settings(**{**SETTINGS, "source": "192.168.12.99/24"}, mode="init", interface="net1", macvlan_master="ens3")
    plan = build_plan(settings)
    assert [str(f.address) for f in plan.families] == ["192.168.12.99/24"]
    text = render_plan(plan)
    assert "create a macvlan (bridge) on ens3 in /proc/1/ns/net" in text
    assert "-A EGRESS-ROUTER-SNAT -o net1 -j SNAT --to-source 192.168.12.99" in text


def test_cluster_networks_and_nameservers_are_shown() -> None:
    from ipaddress import IPv4Address

    settings = load_init_settings(**SETTINGS, mode="init", cluster_networks="10.128.0.0/14,172.30.0.0/16")
    text = render_plan(build_plan(settings, (IPv4Address("172.30.0.10"),)))
    assert "route  10.128.0.0/14 via <eth0's next hop> dev eth0 (EGRESS_CLUSTER_NETWORKS)" in text
    assert "route  172.30.0.0/16 via <eth0's next hop> dev eth0 (EGRESS_CLUSTER_NETWORKS)" in text
    assert "route  172.30.0.10/32 via <eth0's next hop> dev eth0 (nameserver in /etc/resolv.conf, if eth0 reaches it now)" in text


def test_proxy_modes_mark_replies_too() -> None:
    plan = build_plan(load_init_settings(**{**SETTINGS, "destination": None}, mode="dns-proxy"))
    assert "-A EGRESS-ROUTER-MARK -i eth0 -m conntrack --ctstate NEW" in render_plan(plan)


def test_the_metrics_port_is_returned_before_the_fallback_only() -> None:
    labelled = labelled_nat_rules(load_init_settings(**SETTINGS, mode="legacy"), IPV4)
    assert [label for _, label in labelled] == ["1", "2", "3", "metrics-port", "4", "snat"]  # rule -> its destination line
    without = labelled_nat_rules(load_init_settings(**SETTINGS, mode="legacy", metrics_port="off"), IPV4)
    assert "metrics-port" not in [label for _, label in without]
    no_fallback = {**SETTINGS, "destination": "80 tcp 203.0.113.25"}
    assert [label for _, label in labelled_nat_rules(load_init_settings(**no_fallback, mode="legacy"), IPV4)] == ["1", "snat"]


def labels(settings: InitSettings) -> list[str]:
    return [label for _, label in labelled_nat_rules(settings, IPV4)]


@pytest.mark.parametrize("mode", ["init", "unit-test"])
def test_init_and_unit_test_modes_keep_only_a_metrics_port_that_is_set(mode: str) -> None:
    """Nothing serves a port in these modes: unset, the fallback takes every port and 9191 may be redirected, as in
    OpenShift's images; set (to the monitor container's port), the fallback leaves it to the pod and no rule may take it."""
    assert load_init_settings(**SETTINGS, mode=mode).metrics_port is None
    assert labels(load_init_settings(**SETTINGS, mode=mode)) == ["1", "2", "3", "4", "snat"]
    assert labels(load_init_settings(**SETTINGS, mode=mode, metrics_port=" ")) == ["1", "2", "3", "4", "snat"]
    assert labels(load_init_settings(**SETTINGS, mode=mode, metrics_port="9191")) == ["1", "2", "3", "metrics-port", "4", "snat"]
    redirected = {**SETTINGS, "destination": "9191 tcp 203.0.113.25\n203.0.113.50"}
    assert labels(load_init_settings(**redirected, mode=mode)) == ["1", "2", "snat"]
    with pytest.raises(ConfigError) as caught:
        load_init_settings(**redirected, mode=mode, metrics_port="9191")
    assert "EGRESS_METRICS_PORT: port 9191 is redirected by EGRESS_DESTINATION line 1 too" in str(caught.value)


def test_the_monitor_plans_the_nat_of_an_init_given_its_metrics_port() -> None:
    """The monitor serves 9191 unless told otherwise, and keeps init's NAT as init made it from the same variables."""
    monitor = load_monitor_settings(**SETTINGS).init
    assert monitor.metrics_port == 9191
    assert build_plan(monitor) == build_plan(load_init_settings(**SETTINGS, mode="init", metrics_port="9191"))
    assert load_monitor_settings(**SETTINGS, metrics_port="off").init.metrics_port is None
    with pytest.raises(ConfigError) as caught:
        load_monitor_settings(**{**SETTINGS, "destination": "9191 tcp 203.0.113.25"})
    assert "EGRESS_METRICS_PORT: port 9191 is redirected by EGRESS_DESTINATION line 1 too" in str(caught.value)


@pytest.mark.parametrize("mode", ["legacy", None])
def test_a_redirect_rule_on_the_metrics_port_is_refused_where_it_is_served(mode: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        load_init_settings(**{**SETTINGS, "destination": "9191 tcp 203.0.113.25"}, mode=mode)
    assert "EGRESS_METRICS_PORT: port 9191 is redirected by EGRESS_DESTINATION line 1 too" in str(caught.value)
    load_init_settings(**{**SETTINGS, "destination": "9191 udp 203.0.113.25"}, mode=mode)  # UDP is not the probes' port
    load_init_settings(**{**SETTINGS, "destination": "9191 tcp 203.0.113.25"}, mode=mode, metrics_port="9292")


def test_a_new_list_may_not_take_the_metrics_port_either() -> None:
    """What the monitor checks each new version of its list file with."""
    taken = parse_destinations("80 tcp 203.0.113.25\n9191 tcp 203.0.113.25")
    with pytest.raises(ConfigError) as caught:
        check_metrics_port(taken, 9191)
    assert str(caught.value) == (
        'EGRESS_METRICS_PORT: port 9191 is redirected by EGRESS_DESTINATION line 2 too (move one of them, or set it to off): "9191"'
    )
    assert check_metrics_port(taken, None) is taken and check_metrics_port(taken, 9292) is taken


def test_the_probe_lasts_as_long_as_asked() -> None:
    plan = build_plan(load_init_settings(**SETTINGS, mode="init", probe_time="300ms"))
    assert plan.probe.probes == 3 and plan.probe.average == pytest.approx(0.3)
    assert "3 probes in ~300ms" in render_plan(plan)


DUAL = {
    "source": "192.168.12.99/24,2001:db8:12::99/64",
    "gateway": "192.168.12.1,fe80::1",
    "destination": "80 tcp 203.0.113.25\n80 tcp 2001:db8::25\n8080 tcp 2001:db8::26 80\n203.0.113.50\n2001:db8::50",
}


def test_dual_stack_plan_shows_both_families() -> None:
    plan = build_plan(load_init_settings(**DUAL, mode="unit-test"))
    assert [f.family for f in plan.families] == [IPV4, IPV6]
    assert [(c.family, c.table) for c in plan.chain_sets] == [(IPV4, "mangle"), (IPV4, "nat"), (IPV6, "mangle"), (IPV6, "nat")]
    text = render_plan(plan).splitlines()
    for line in [
        "addr   192.168.12.99/24 dev macvlan0 (only IPv4 address on it)",
        "addr   2001:db8:12::99/64 dev macvlan0 (only global IPv6 address on it; waits until duplicate address detection finds no"
        " other host using it)",
        "table  201: eth0's IPv6 routes as found, its default route via <eth0's next hop> included (kept for replies)",
        "rule   -6 fwmark 0x400000/0x400000 lookup 201 priority 1000 (replies to connections that arrived on eth0 leave through eth0)",
        "route  fe80::1/128 dev macvlan0",
        "route  default via fe80::1 dev macvlan0 (replaces the current IPv6 default route)",
        "sysctl net.ipv4.ip_forward=1",
        "sysctl net.ipv6.conf.all.forwarding=1",
        "sysctl net.ipv4.conf.eth0.rp_filter=2",
        "# IPv6: ip6tables-save form",
        "-A EGRESS-ROUTER-DNAT -i eth0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 203.0.113.25",
        "-A EGRESS-ROUTER-DNAT -i eth0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 2001:db8::25",
        "-A EGRESS-ROUTER-DNAT -i eth0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [2001:db8::26]:80",
        "-A EGRESS-ROUTER-DNAT -i eth0 -j DNAT --to-destination 2001:db8::50",
        "-A EGRESS-ROUTER-SNAT -o macvlan0 -j SNAT --to-source 2001:db8:12::99",
    ]:
        assert line in text
    v6 = text[text.index("# IPv6: ip6tables-save form", text.index("*nat")) :]
    assert "203.0.113" not in "\n".join(v6)  # each family's rules in its own table
    assert text.count("-A EGRESS-ROUTER-MARK -i eth0 -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x400000/0x400000") == 2
    assert [label for _, label in labelled_nat_rules(load_init_settings(**DUAL, mode="legacy"), IPV6)] == [
        "2",
        "3",
        "metrics-port",
        "5",
        "snat",
    ]


def test_ipv6_only_router_in_proxy_mode() -> None:
    plan = build_plan(load_init_settings(source="2001:db8:12::99", gateway="2001:db8:12::1", destination=None, mode="http-proxy"))
    assert plan.sysctls == (("net.ipv4.ip_unprivileged_port_start", "0"),)  # both families' ports; no IPv4 rp_filter to loosen
    assert plan.nat_rules is None and not plan.forwarding
    assert "route  2001:db8:12::1/128 dev macvlan0" in render_plan(plan)


def test_nameservers_and_cluster_networks_go_to_their_family() -> None:
    from ipaddress import ip_address

    settings = load_init_settings(**DUAL, mode="init", cluster_networks="172.30.0.0/16,fd00:10:96::/112")
    plan = build_plan(settings, (ip_address("172.30.0.10"), ip_address("fd00:10:96::a")))
    assert [(f.family, [str(n) for n in f.cluster_networks], [str(n) for n in f.nameservers]) for f in plan.families] == [
        (IPV4, ["172.30.0.0/16"], ["172.30.0.10"]),
        (IPV6, ["fd00:10:96::/112"], ["fd00:10:96::a"]),
    ]
    assert (
        "route  fd00:10:96::a/128 via <eth0's next hop> dev eth0 (nameserver in /etc/resolv.conf, if eth0 reaches it now)"
        in render_plan(plan)
    )


def test_dnat_targets_bracket_ipv6_with_a_port() -> None:
    from ipaddress import ip_address

    assert dnat_target(ip_address("2001:db8::5"), 8080) == "[2001:db8::5]:8080"
    assert dnat_target(ip_address("2001:db8::5"), None) == "2001:db8::5"
    assert dnat_target(ip_address("203.0.113.5"), 8080) == "203.0.113.5:8080"
