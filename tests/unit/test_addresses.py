from ipaddress import IPv4Address, IPv4Interface

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.config.addresses import parse_gateway, parse_source
from egress_router.config.errors import ConfigError


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
        ("fe80::1", "not an IPv4 address"),
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
