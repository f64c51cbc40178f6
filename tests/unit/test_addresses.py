from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.config.addresses import IPV4, IPV6, IPAddress, Source, family_problems, parse_gateways, parse_sources
from egress_router.config.errors import ConfigError


def parse_source(text: str | None) -> Source:
    (source,) = parse_sources(text).values()
    return source


def parse_gateway(text: str | None) -> IPAddress:
    (gateway,) = parse_gateways(text).values()
    return gateway


def test_source_without_length_is_a_host_address() -> None:
    source = parse_source("192.168.12.99")
    assert source.interface == IPv4Interface("192.168.12.99/32")
    assert not source.has_prefix


def test_source_with_length_keeps_the_subnet() -> None:
    source = parse_source(" 192.168.12.99/24 ")
    assert source.interface == IPv4Interface("192.168.12.99/24")
    assert source.has_prefix


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "unspecified"),
        ("", "unspecified"),
        ("192.168.12", "not an IPv4 address"),
        ("192.168.12.256", "octet 256 out of range 0-255"),
        ("192.168.012.1", "leading zero"),
        ("192.168.12.99/33", "invalid prefix length"),
        ("192.168.12.99/", "invalid prefix length"),
        ("192.168.12.99/x", "invalid prefix length"),
        ("192.168.12.99/0", "whole Internet"),
        ("192.168.12.0/24", "network address of 192.168.12.0/24"),
        ("192.168.12.255/24", "broadcast address"),
        ("0.0.0.0", "unspecified address"),
        ("127.0.0.1", "loopback"),
        ("239.1.1.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("fe80::1", "a link-local address cannot be the egress address"),
        ("2001:db8::99/129", "invalid prefix length (must be 0-128)"),
        ("2001:db8::99/0", "whole Internet"),
        ("2001:db8::/64", "subnet-router anycast address of 2001:db8::/64"),
        ("::", "unspecified address"),
        ("::1", "loopback"),
        ("ff02::1", "multicast"),
        ("::ffff:192.168.12.99", "IPv4-mapped address cannot be used (write 192.168.12.99 instead)"),
        ("2001:db8::99%eth0", "no %zone"),
        ("2001:db8:::99", "not an IPv6 address"),
        ("2001:db8::g", "not an IPv6 address"),
        ("192.168.12.99,", "empty item"),
        ("192.168.12.99,192.168.12.98", "two IPv4 addresses (192.168.12.99 and 192.168.12.98)"),
        ("2001:db8::99,2001:db8::98/64", "two IPv6 addresses (2001:db8::99 and 2001:db8::98)"),
    ],
)
def test_bad_source(text: str | None, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_source(text)
    message = str(caught.value)
    assert message.startswith("EGRESS_SOURCE: ")
    assert reason in message


def test_point_to_point_prefixes_allow_every_address() -> None:
    assert parse_source("10.0.0.0/31").ip == IPv4Address("10.0.0.0")
    assert parse_source("10.0.0.1/32").ip == IPv4Address("10.0.0.1")


def test_gateway() -> None:
    assert parse_gateway("192.168.12.1") == IPv4Address("192.168.12.1")
    with pytest.raises(ConfigError, match='EGRESS_GATEWAY: not an IPv4 address .*"192.168.12.1/24"'):
        parse_gateway("192.168.12.1/24")
    with pytest.raises(ConfigError, match="EGRESS_GATEWAY: unspecified"):
        parse_gateway("  ")


@given(st.text(max_size=40))
def test_any_source_text_parses_or_names_the_variable(text: str) -> None:
    try:
        parse_source(text)
    except ConfigError as error:
        assert str(error).startswith("EGRESS_SOURCE")


@given(st.ip_addresses(v=4), st.integers(1, 32))
def test_every_usable_address_parses(address: IPv4Address, prefix: int) -> None:
    try:
        source = parse_source(f"{address}/{prefix}")
    except ConfigError:
        return
    assert source.ip == address and source.interface.network.prefixlen == prefix


def test_ipv6_source() -> None:
    source = parse_source("2001:DB8:12::99/64")
    assert source.interface == IPv6Interface("2001:db8:12::99/64") and source.has_prefix and source.family == IPV6
    assert parse_source("fd00:12::99").interface == IPv6Interface("fd00:12::99/128")  # a ULA, alone: /128
    assert parse_source("2001:db8::/127").ip == IPv6Address("2001:db8::")  # point-to-point: no anycast address


def test_dual_stack_is_one_of_each_family_in_any_order() -> None:
    sources = parse_sources("2001:db8:12::99/64 , 192.168.12.99/24")
    assert sources.families == (IPV4, IPV6)
    assert sources.ipv4 is not None and sources.ipv4.interface == IPv4Interface("192.168.12.99/24")
    assert sources.ipv6 is not None and sources.ipv6.interface == IPv6Interface("2001:db8:12::99/64")
    gateways = parse_gateways("192.168.12.1,fe80::1")  # a link-local next hop is usual in IPv6
    assert gateways.values() == (IPv4Address("192.168.12.1"), IPv6Address("fe80::1"))
    assert family_problems(sources, gateways, "EGRESS_SOURCE", "EGRESS_GATEWAY") == []


def test_every_bad_item_is_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_sources("192.168.12.300,2001:db8::x")
    assert [str(p) for p in caught.value.problems] == [
        'EGRESS_SOURCE: not an IPv4 address (octet 300 out of range 0-255): "192.168.12.300"',
        "EGRESS_SOURCE: not an IPv6 address (Only hex digits permitted in 'x' in '2001:db8::x'): \"2001:db8::x\"",
    ]


def test_gateways_must_match_the_sources_families() -> None:
    v4, dual = parse_sources("192.168.12.99"), parse_sources("192.168.12.99,2001:db8::99")
    wrong = family_problems(v4, parse_gateways("2001:db8::1"), "EGRESS_SOURCE", "EGRESS_GATEWAY")
    assert [str(p) for p in wrong] == [
        "EGRESS_GATEWAY: no IPv4 gateway for EGRESS_SOURCE's IPv4 address 192.168.12.99 (give one next hop of each family,"
        " comma-separated, e.g. 192.168.12.1,2001:db8::1)",
        "EGRESS_GATEWAY: 2001:db8::1 is an IPv6 gateway but EGRESS_SOURCE has no IPv6 address (it has IPv4); each gateway must"
        ' match a source\'s family: "2001:db8::1"',
    ]
    missing = family_problems(dual, parse_gateways("192.168.12.1"), "EGRESS_SOURCE", "EGRESS_GATEWAY")
    assert [p.reason.split(" (")[0] for p in missing] == ["no IPv6 gateway for EGRESS_SOURCE's IPv6 address 2001:db8::99"]
    same = family_problems(dual, parse_gateways("192.168.12.1,2001:db8::99"), "EGRESS_SOURCE", "EGRESS_GATEWAY")
    assert [str(p) for p in same] == ['EGRESS_GATEWAY: must differ from EGRESS_SOURCE: "2001:db8::99"']
    with pytest.raises(ConfigError, match="two IPv4 addresses"):
        parse_gateways("192.168.12.1,192.168.12.2")


@given(st.ip_addresses(v=6), st.integers(1, 128))
def test_every_usable_ipv6_address_parses(address: IPv6Address, prefix: int) -> None:
    try:
        source = parse_source(f"{address}/{prefix}")
    except ConfigError as error:
        assert str(error).startswith("EGRESS_SOURCE: ")
        return
    assert source.ip == address and source.interface.network.prefixlen == prefix


@given(st.lists(st.one_of(st.ip_addresses(), st.text(max_size=12)), max_size=3))
def test_any_list_parses_to_one_per_family_or_names_the_variable(items: list[object]) -> None:
    try:
        sources = parse_sources(",".join(map(str, items)))
    except ConfigError as error:
        assert all(str(p).startswith("EGRESS_SOURCE: ") for p in error.problems)
        return
    assert 1 <= len(sources.values()) <= 2
    assert [s.family for s in sources.values()] == list(sources.families)
