from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.config.dns_settings import load_dns_settings
from egress_router.config.dns_targets import Target, parse_targets
from egress_router.config.errors import ConfigError
from egress_router.config.resolv_conf import ResolvConf, candidates, parse_resolv_conf


def test_targets() -> None:
    assert parse_targets("# db\n5432 DB.example.com.\n53\t203.0.113.53 5353\n8080 [2001:db8::1] 80") == (
        Target(5432, "db.example.com", None, 5432, 2),
        Target(53, "203.0.113.53", ip_address("203.0.113.53"), 5353, 3),
        Target(8080, "2001:db8::1", ip_address("2001:db8::1"), 80, 4),
    )


def test_ipv6_targets() -> None:
    assert parse_targets("80 2001:db8::5 8080\n81 [2001:DB8::6]\n82 ::ffff:203.0.113.5\n83 fe80::1%net1 80\n84 ::1") == (
        Target(80, "2001:db8::5", ip_address("2001:db8::5"), 8080, 1),
        Target(81, "2001:db8::6", ip_address("2001:db8::6"), 81, 2),
        Target(82, "203.0.113.5", ip_address("203.0.113.5"), 82, 3),  # IPv4-mapped: an IPv4 destination
        Target(83, "fe80::1%net1", ip_address("fe80::1%net1"), 80, 4),
        Target(84, "::1", ip_address("::1"), 84, 5),  # a sidecar in the pod, as 127.0.0.1 may be
    )
    assert parse_targets("80 2001:db8::5 8080")[0].describe == "[2001:db8::5]:8080"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("80 fe80::1", "line 1: value 'fe80::1' is invalid: a link-local address needs the interface it is on (fe80::1%net1)"),
        ("80 ::", "value '::' is invalid: the unspecified address cannot be used"),
        ("80 ff02::1", "value 'ff02::1' is invalid: a multicast address cannot be used"),
        ("80 ::ffff:0.0.0.0", "the unspecified address cannot be used"),
        ("80 [2001:db8::5]:8080", "value '[2001:db8::5]:8080' is invalid"),
    ],
)
def test_bad_ipv6_targets(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_targets(text)
    assert message in str(caught.value) and str(caught.value).startswith("EGRESS_DNS_PROXY_DESTINATION line 1:")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 db.example.com", 'line 1: invalid port 0 (must be 1-65535): "0 db.example.com"'),
        ("5432 db.example.com 70000", "line 1: invalid port 70000"),
        ("5432 db..example.com", "line 1: value 'db..example.com' is invalid"),
        ("5432 -db.example.com", "value '-db.example.com' is invalid"),
        ("5432 0.0.0.0", "unspecified"),
        ("5432 1.2.3", "is invalid"),
        ("5432 a.com\n5432 b.com", 'line 2: localport 5432 is already used on line 1: "5432 b.com"'),
        ("5432", "got 1 field(s)"),
        ("5432 a.com 1 2", "got 4 field(s)"),
        ("", "EGRESS_DNS_PROXY_DESTINATION: unspecified"),
        ("# nothing", "EGRESS_DNS_PROXY_DESTINATION: no destination given"),
    ],
)
def test_bad_targets(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_targets(text)
    assert message in str(caught.value)


@given(
    st.lists(
        st.lists(
            st.one_of(
                st.integers(-1, 70000).map(str),
                st.sampled_from(["db.example.com", "1.2.3.4", "::1", "[::1]", "a..b", "#"]),
                st.text(max_size=6),
            ),
            max_size=4,
        ).map(" ".join),
        max_size=6,
    ).map("\n".join)
)
def test_any_target_list_parses_or_explains(text: str) -> None:
    try:
        targets = parse_targets(text)
    except ConfigError as error:
        assert all(str(p).startswith("EGRESS_DNS_PROXY_DESTINATION") for p in error.problems)
        return
    assert len({t.local_port for t in targets}) == len(targets)


def test_resolv_conf() -> None:
    conf = parse_resolv_conf(
        "# kubelet\nnameserver 172.30.0.10\nnameserver fe80::1%eth0\nnameserver bogus\nsearch ns.svc.cluster.local svc.cluster.local Cluster.Local.\n"
        "options ndots:5 timeout:2 attempts:3 rotate\nsortlist 10.0.0.0\n"
    )
    assert conf.nameservers == ("172.30.0.10", "fe80::1%eth0")  # a link-local nameserver keeps its interface
    assert conf.search == ("ns.svc.cluster.local", "svc.cluster.local", "cluster.local")
    assert (conf.ndots, conf.timeout, conf.attempts) == (5, 2.0, 3)
    assert parse_resolv_conf("") == ResolvConf()


def test_candidates_follow_ndots() -> None:
    conf = ResolvConf(search=("ns.svc.cluster.local", "cluster.local"), ndots=5)
    assert candidates("db.example.com", conf) == ["db.example.com.ns.svc.cluster.local", "db.example.com.cluster.local", "db.example.com"]
    assert candidates("db.example.com.", conf) == ["db.example.com"]
    assert candidates("a.b.c.d.e.f", conf)[0] == "a.b.c.d.e.f"


@given(st.text())
def test_resolv_conf_parser_is_total(text: str) -> None:
    conf = parse_resolv_conf(text)
    assert conf.nameservers and 1 <= conf.attempts <= 5


def test_settings_take_the_tables_defaults() -> None:
    settings = load_dns_settings(destination="5432 db.example.com")
    assert (settings.debug, settings.splice, settings.max_ttl, settings.idle_timeout) == (False, False, 300.0, 3600.0)
    assert load_dns_settings(destination="5432 db.example.com", debug="1", splice=" ON ").splice
    assert load_dns_settings(destination="5432 db.example.com", splice=" ") == settings  # blank is unset, as for every option


def test_settings_problems_come_all_at_once_in_help_order() -> None:
    with pytest.raises(ConfigError) as caught:
        load_dns_settings(destination="0 db.example.com", splice="maybe", max_ttl="0", max_connections="many")
    assert [str(p) for p in caught.value.problems] == [
        'EGRESS_DNS_PROXY_DESTINATION line 1: invalid port 0 (must be 1-65535): "0 db.example.com"',
        'EGRESS_DNS_PROXY_MAX_CONNECTIONS: must be a whole number from 1 to 10000000: "many"',
        'EGRESS_DNS_PROXY_MAX_TTL: must be more than zero: "0"',
        'EGRESS_DNS_PROXY_SPLICE: must be on or off: "maybe"',
    ]
    with pytest.raises(ConfigError, match=r'EGRESS_DNS_PROXY_MIN_TTL: must not exceed EGRESS_DNS_PROXY_MAX_TTL \(300 s\): "10m"'):
        load_dns_settings(destination="5432 db.example.com", min_ttl="10m")
