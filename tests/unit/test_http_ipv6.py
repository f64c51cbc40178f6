"""The HTTP proxy with IPv6 and dual-stack destinations, through fake transports (tests/unit/proxy_harness.py):
which addresses it connects to, in which order, and what it refuses. The lab proves the same over real IPv6."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.http_proxy.messages import unbracketed_ipv6
from egress_router.runtime.happy_eyeballs import ATTEMPT_DELAY
from tests.unit.proxy_harness import Harness, ok, status_of

LIST = "!10.0.0.0/8\n!2001:db8:bad::/48\n*"


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness(LIST, connect_timeout="5s")
    harness.names.update(
        {
            "dual.test": ["2001:db8::10", "2001:db8::11", "203.0.113.10"],
            "v6.test": ["2001:db8::10"],
            "mapped.test": ["::ffff:203.0.113.10"],
            "sneaky.test": ["::ffff:10.0.0.1"],
            "nat64.test": ["64:ff9b::10.0.0.1"],
            "half-bad.test": ["203.0.113.10", "2001:db8:bad::1"],
        }
    )
    yield harness
    harness.close()


def get(target: str, host: str = "a") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def test_an_ipv6_literal_is_reached_with_a_bracketed_host_header(h: Harness) -> None:
    client = h.client()
    client.send(get("http://[2001:db8::10]:8080/x", "evil.test"))
    server = h.server()
    assert server.address == ("2001:db8::10", 8080)
    assert server.take() == b"GET /x HTTP/1.1\r\nHost: [2001:db8::10]:8080\r\n\r\n"
    server.send(ok())
    h.settle()
    assert status_of(client.take()) == 200
    assert "target=http://[2001:db8::10]:8080/x " in h.log_lines()[-1]


def test_the_families_alternate_and_a_silent_one_costs_only_the_attempt_delay(h: Harness) -> None:
    h.silent.update({("2001:db8::10", 80), ("2001:db8::11", 80)})  # IPv6 black-holed
    client = h.client()
    client.send(get("http://dual.test/"))
    h.settle()
    assert h.servers == []
    h.advance(ATTEMPT_DELAY)  # the second attempt is IPv4 (families alternate), not the second IPv6 address
    server = h.server()
    assert server.address == ("203.0.113.10", 80)
    server.send(ok())
    h.settle()
    assert status_of(client.take()) == 200


def test_every_address_of_both_families_is_tried_and_named_when_all_fail(h: Harness) -> None:
    h.refused.update({("2001:db8::10", 80), ("2001:db8::11", 80), ("203.0.113.10", 80)})
    client, response = h.ask(get("http://dual.test/"))
    assert status_of(response) == 502
    for address in ("2001:db8::10", "2001:db8::11", "203.0.113.10"):
        assert f"{address} port 80: connection refused".encode() in response


def test_an_ipv4_mapped_answer_is_connected_to_as_ipv4(h: Harness) -> None:
    client = h.client()
    client.send(get("http://mapped.test/"))
    assert h.server().address == ("203.0.113.10", 80)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://sneaky.test/", b"sneaky.test resolves to ::ffff:a00:1 (IPv4 10.0.0.1): line 1: !10.0.0.0/8"),
        ("http://[::ffff:10.0.0.1]/", b"::ffff:a00:1 (IPv4 10.0.0.1): line 1: !10.0.0.0/8"),
        ("http://nat64.test/", b"line 1: !10.0.0.0/8 (it carries the IPv4 address 10.0.0.1)"),
        ("http://[64:ff9b::10.0.0.1]/", b"line 1: !10.0.0.0/8 (it carries the IPv4 address 10.0.0.1)"),
        ("http://[2002:a00:1::1]/", b"line 1: !10.0.0.0/8 (it carries the IPv4 address 10.0.0.1)"),
        ("http://half-bad.test/", b"half-bad.test resolves to 2001:db8:bad::1: line 2: !2001:db8:bad::/48"),
        ("http://[::1]:8000/", b"::1 is loopback, link-local or unspecified"),
        ("http://[fe80::1]/", b"fe80::1 is loopback, link-local or unspecified"),
        ("http://[::]/", b":: is loopback, link-local or unspecified"),
        ("http://[::ffff:169.254.169.254]/", b"169.254.169.254 is loopback, link-local or unspecified"),
    ],
)
def test_ipv6_spellings_of_denied_addresses_are_denied(h: Harness, target: str, reason: bytes) -> None:
    client, response = h.ask(get(target))
    assert status_of(response) == 403 and reason in response, response
    assert h.servers == []


@pytest.mark.parametrize(
    ("request_line", "reason"),
    [
        (b"GET http://[fe80::1%25eth0]/ HTTP/1.1", b"bad host or port in the request line"),  # a zone names a client's interface
        (b"GET http://[2001:db8::10/ HTTP/1.1", b"http://[2001:db8::10/"),  # aiohttp's parser refuses these two
        # ambiguous without brackets: the error says how to write it
        (b"CONNECT 2001:db8::10:443 HTTP/1.1", b"written in brackets, the port after them: [2001:db8::10]:443 (got 2001:db8::10:443)"),
        (b"CONNECT ::1:8443 HTTP/1.1", b"[::1]:8443"),
        (b"CONNECT 2001:db8::10 HTTP/1.1", b"[2001:db8::10]:443 (got 2001:db8::10)"),
        (b"CONNECT a:b:c HTTP/1.1", b"bad request: a:b:c\n"),  # no address: the parser's word
    ],
)
def test_malformed_ipv6_targets_get_400_saying_why(h: Harness, request_line: bytes, reason: bytes) -> None:
    client, response = h.ask(request_line + b"\r\nHost: a\r\n\r\n")
    assert status_of(response) == 400 and reason in response, response
    assert h.servers == []


def test_connect_to_an_ipv6_literal_and_to_a_name_with_only_aaaa(h: Harness) -> None:
    for target, address in (("[2001:db8::10]:443", "2001:db8::10"), ("v6.test:443", "2001:db8::10")):
        client = h.client()
        client.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        server = h.server()
        assert server.address == (address, 443)
        assert client.take() == b"HTTP/1.1 200 Connection established\r\n\r\n"
        client.send(b"hello")
        assert server.take() == b"hello"


@given(st.ip_addresses(v=6), st.integers(1, 65535), st.text(max_size=30))
def test_an_unbracketed_ipv6_target_is_explained_with_its_bracketed_form(address: object, port: int, other: str) -> None:
    assert unbracketed_ipv6(f"{address}:{port}") == (
        f"an IPv6 address in a request target is written in brackets, the port after them: [{address}]:{port} (got {address}:{port})"
    )
    explained = unbracketed_ipv6(other)  # anything else: explained only when it is such an address
    assert explained is None or "[" in explained and "[" not in other
