"""IPv6 spellings of IPv4 addresses, and the property that matters: none of them gets round an IPv4 rule."""

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.config.http_acl import parse_acl, special_reason
from egress_router.config.ipv4_in_ipv6 import canonical, canonical_network, embedded_ipv4

v4 = st.ip_addresses(v=4)
bits16 = st.integers(0, 0xFFFF)
bits80 = st.integers(0, 2**80 - 1)


def mapped(address: IPv4Address) -> IPv6Address:
    return IPv6Address(0xFFFF_0000_0000 | int(address))


def nat64(address: IPv4Address) -> IPv6Address:
    return IPv6Address(int(IPv6Address("64:ff9b::")) | int(address))


def nat64_local(address: IPv4Address, subnet: int) -> IPv6Address:
    return IPv6Address(int(IPv6Address("64:ff9b:1::")) | subnet << 32 | int(address))


def sixtofour(address: IPv4Address, rest: int) -> IPv6Address:
    return IPv6Address(0x2002 << 112 | int(address) << 80 | rest)


def teredo_client(address: IPv4Address, server: IPv4Address, port: int) -> IPv6Address:
    return IPv6Address(0x2001_0000 << 96 | int(server) << 64 | (port ^ 0xFFFF) << 32 | (int(address) ^ 0xFFFFFFFF))


def teredo_server(address: IPv4Address, client: IPv4Address) -> IPv6Address:
    return teredo_client(client, address, 0)


def compatible(address: IPv4Address) -> IPv6Address:
    return IPv6Address(int(address))


def translated(address: IPv4Address) -> IPv6Address:
    return IPv6Address(0xFFFF_0000_0000_0000 | int(address))


def isatap(address: IPv4Address, prefix: int, universal: bool) -> IPv6Address:
    return IPv6Address(prefix << 64 | (0x0200 if universal else 0) << 48 | 0x5EFE << 32 | int(address))


#: Every IPv6 form of an IPv4 address that a translator or tunnel turns into IPv4 traffic to it.
embeddings = st.sampled_from(["nat64", "nat64-local", "6to4", "teredo-client", "teredo-server", "compatible", "translated", "isatap"])


def embed(kind: str, address: IPv4Address, data: st.DataObject) -> IPv6Address:
    if kind == "nat64":
        return nat64(address)
    if kind == "nat64-local":
        return nat64_local(address, data.draw(bits16))
    if kind == "6to4":
        return sixtofour(address, data.draw(bits80))
    if kind == "teredo-client":
        return teredo_client(address, data.draw(v4), data.draw(bits16))
    if kind == "teredo-server":
        return teredo_server(address, data.draw(v4))
    if kind == "translated":
        return translated(address)
    if kind == "isatap":
        return isatap(address, data.draw(st.integers(0, 2**64 - 1)), data.draw(st.booleans()))
    return compatible(address)


@given(v4)
def test_a_mapped_address_is_its_ipv4_address(address: IPv4Address) -> None:
    assert canonical(mapped(address)) == address
    assert embedded_ipv4(mapped(address)) == ()  # canonical handles it: never both
    assert canonical(address) == address


@given(st.ip_addresses(v=6))
def test_canonical_changes_only_mapped_addresses(address: IPv6Address) -> None:
    assert (canonical(address) != address) == (address.ipv4_mapped is not None)


@given(embeddings, v4, st.data())
def test_every_embedding_is_found(kind: str, address: IPv4Address, data: st.DataObject) -> None:
    if kind == "compatible" and int(address) <= 1:
        return  # ::0.0.0.0 and ::0.0.0.1 are :: and ::1, IPv6's own unspecified and loopback addresses
    assert address in embedded_ipv4(embed(kind, address, data))


@pytest.mark.parametrize("text", ["2001:db8::1", "fd00::1", "fe80::1", "::", "::1", "2606:4700::6810:84e5"])
def test_ordinary_ipv6_addresses_carry_nothing(text: str) -> None:
    assert embedded_ipv4(ip_address(text)) == ()


@pytest.mark.parametrize(
    ("rule", "network"),
    [("::ffff:10.0.0.0/104", "10.0.0.0/8"), ("::ffff:0:0/96", "0.0.0.0/0"), ("::ffff:1.2.3.4/128", "1.2.3.4/32"), ("::/0", "::/0")],
)
def test_a_rule_written_mapped_is_the_ipv4_rule(rule: str, network: str) -> None:
    assert canonical_network(ip_network(rule)) == ip_network(network)


# The property: an IPv4 address the list refuses is refused in every IPv6 spelling too -------------

cidrs = st.builds(lambda a, length: ip_network(f"{a}/{length}", strict=False), v4, st.integers(0, 32))
names = st.sampled_from(["api.example.com", "x.partner.test", "partner.test"])
rule_lines = st.one_of(
    st.tuples(st.booleans(), cidrs).map(lambda r: ("!" if r[0] else "") + str(r[1])),
    st.tuples(st.booleans(), st.sampled_from(["api.example.com", "*.partner.test", "*.example.com"])).map(
        lambda r: ("!" if r[0] else "") + r[1]
    ),
)
#: Lists with IPv4 address rules only: an IPv6 address rule may allow what it names, by design (README).
lists = st.tuples(st.lists(rule_lines, min_size=1, max_size=6), st.booleans()).map(lambda r: "\n".join(r[0] + (["*"] if r[1] else [])))
special_v4 = st.sampled_from(["127.0.0.1", "127.9.9.9", "169.254.169.254", "0.0.0.0"]).map(IPv4Address)


@given(lists, st.none() | names, v4 | special_v4)
def test_mapped_addresses_are_decided_exactly_as_ipv4(text: str, host: str | None, address: IPv4Address) -> None:
    acl = parse_acl(text)
    as_v4, as_v6 = acl.decide(host, [address]), acl.decide(host, [mapped(address)])
    assert (as_v4.allowed, as_v4.line) == (as_v6.allowed, as_v6.line)


@given(lists, st.none() | names, v4 | special_v4, embeddings, st.data())
def test_no_embedding_gets_round_an_ipv4_refusal(text: str, host: str | None, address: IPv4Address, kind: str, data: st.DataObject) -> None:
    acl = parse_acl(text)
    if acl.decide(host, [address]).allowed:
        return
    disguised = embed(kind, address, data)
    decision = acl.decide(host, [disguised])
    assert not decision.allowed, (text, host, str(disguised), decision)


@given(special_v4, embeddings, st.data())
def test_special_addresses_are_refused_in_every_spelling(address: IPv4Address, kind: str, data: st.DataObject) -> None:
    if kind == "compatible" and int(address) <= 1:
        return
    assert special_reason(mapped(address)) is not None
    assert special_reason(embed(kind, address, data)) is not None
    assert not parse_acl("*").decide("anything.test", [embed(kind, address, data)]).allowed
