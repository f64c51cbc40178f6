"""Our resolver against a scripted DNS server (the edges) inside a namespace with only lo."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Callable, Coroutine, Iterator
from ipaddress import ip_address
from typing import Any

import pytest
from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, SOA, A, DNSRecord

from egress_router.config.resolv_conf import ResolvConf, parse_resolv_conf
from egress_router.dns_proxy.resolver import ResolveError, Resolver
from egress_router.lab import Lab
from egress_router.lab.netns import entered
from egress_router.runtime.egress_families import EgressFamilies, can_send_ipv6

PORT = 5353
LINK_LOCAL = "fe80::53%dns0"  # on an interface of the namespace (a veth pair of its own)
SERVER_ADDRESSES = ("127.0.0.1", "::1", LINK_LOCAL)
Behaviour = Callable[[DNSRecord, str], DNSRecord | None]  # (query, transport) -> reply, or None to stay silent


def answer(query: DNSRecord, *records: RR, rcode: int = RCODE.NOERROR, auth: tuple[RR, ...] = ()) -> DNSRecord:
    reply = query.reply()
    reply.header.rcode = rcode
    for record in records:
        reply.add_answer(record)
    for record in auth:
        reply.add_auth(record)
    return reply


ZONE: dict[str, Behaviour] = {
    "plain.test.": lambda q, t: answer(
        q, RR("plain.test.", QTYPE.A, rdata=A("203.0.113.25"), ttl=30), RR("plain.test.", QTYPE.A, rdata=A("203.0.113.26"), ttl=20)
    ),
    "alias.test.": lambda q, t: answer(
        q,
        RR("alias.test.", QTYPE.CNAME, rdata=CNAME("mid.test."), ttl=10),
        RR("mid.test.", QTYPE.CNAME, rdata=CNAME("plain.test."), ttl=40),
    ),
    "mid.test.": lambda q, t: answer(q, RR("mid.test.", QTYPE.CNAME, rdata=CNAME("plain.test."), ttl=40)),
    "loop.test.": lambda q, t: answer(
        q,
        RR("loop.test.", QTYPE.CNAME, rdata=CNAME("loop2.test."), ttl=5),
        RR("loop2.test.", QTYPE.CNAME, rdata=CNAME("loop.test."), ttl=5),
    ),
    "big.test.": lambda q, t: (
        answer(q, *(RR("big.test.", QTYPE.A, rdata=A(f"198.51.100.{i}"), ttl=60) for i in range(1, 41))) if t == "tcp" else _truncated(q)
    ),
    "broken.test.": lambda q, t: answer(q, rcode=RCODE.SERVFAIL),
    "silent.test.": lambda q, t: None,
    "empty.test.": lambda q, t: answer(q, auth=(RR("test.", QTYPE.SOA, rdata=SOA("ns.test.", "admin.test.", (1, 2, 3, 4, 7)), ttl=60),)),
    "short.corp.test.": lambda q, t: answer(q, RR("short.corp.test.", QTYPE.A, rdata=A("203.0.113.30"), ttl=15)),
    "dual.test.": lambda q, t: (
        answer(q, RR("dual.test.", QTYPE.A, rdata=A("203.0.113.31"), ttl=30))
        if q.q.qtype == QTYPE.A
        else answer(q, RR("dual.test.", QTYPE.AAAA, rdata=AAAA("2001:db8::31"), ttl=12))
    ),
}


def _truncated(query: DNSRecord) -> DNSRecord:
    reply = query.reply()
    reply.header.tc = 1
    return reply


def respond(data: bytes, transport: str) -> bytes | None:
    query = DNSRecord.parse(data)
    behaviour = ZONE.get(str(query.q.qname))
    if behaviour is None:
        return answer(
            query, rcode=RCODE.NXDOMAIN, auth=(RR("test.", QTYPE.SOA, rdata=SOA("ns.test.", "admin.test.", (1, 2, 3, 4, 9)), ttl=60),)
        ).pack()
    reply = behaviour(query, transport)
    return None if reply is None else reply.pack()


class _Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = respond(data, "udp")
        if reply is not None:
            self.transport.sendto(reply, addr)  # type: ignore[attr-defined]


async def _tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    (length,) = struct.unpack("!H", await reader.readexactly(2))
    reply = respond(await reader.readexactly(length), "tcp")
    if reply is not None:
        writer.write(struct.pack("!H", len(reply)) + reply)
        await writer.drain()
    writer.close()


def run_in(lab: Lab, coroutine: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine on a fresh loop in a thread that lives in the lab namespace, with the test server."""
    result: dict[str, Any] = {}

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        servers: list[asyncio.BaseTransport | asyncio.Server] = []
        for address in SERVER_ADDRESSES:
            udp, _ = await loop.create_datagram_endpoint(_Udp, local_addr=(address, PORT))
            servers += [udp, await asyncio.start_server(_tcp, address, PORT)]
        try:
            return await coroutine()
        finally:
            for server in servers:
                server.close()

    def thread() -> None:
        with entered(lab.ns("dns")):
            try:
                result["value"] = asyncio.run(main())
            except BaseException as error:  # noqa: BLE001 - handed to the test thread
                result["error"] = error

    worker = threading.Thread(target=thread)
    worker.start()
    worker.join(30)
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as built:
        built.add_namespace("dns")
        built.ip("dns", "link", "add", "dns0", "type", "veth", "peer", "name", "dns1")
        built.up("dns", "dns1")
        built.up("dns", "dns0", "fe80::53/64")
        yield built


def resolver(**conf: Any) -> Resolver:
    return Resolver(ResolvConf(**{"nameservers": ("127.0.0.1",), "timeout": 1.0, "attempts": 1, **conf}), port=PORT)


def test_addresses_and_the_smallest_ttl(lab: Lab) -> None:
    found = run_in(lab, lambda: resolver().resolve("plain.test"))
    assert found.addresses == (ip_address("203.0.113.25"), ip_address("203.0.113.26"))
    assert found.ttl == 20


def test_cname_chains_inside_and_beyond_the_answer(lab: Lab) -> None:
    found = run_in(lab, lambda: resolver().resolve("alias.test"))
    assert found.name == "plain.test" and len(found.addresses) == 2
    assert found.ttl == 10  # the chain's smallest TTL


def test_cname_loop_is_an_error(lab: Lab) -> None:
    with pytest.raises(ResolveError, match="CNAME loop"):
        run_in(lab, lambda: resolver().resolve("loop.test"))


def test_truncated_answer_is_asked_again_over_tcp(lab: Lab) -> None:
    found = run_in(lab, lambda: resolver().resolve("big.test"))
    assert len(found.addresses) == 40


def test_servfail_and_timeout_are_failures_not_negative(lab: Lab) -> None:
    for name in ("broken.test", "silent.test"):
        with pytest.raises(ResolveError) as caught:
            run_in(lab, lambda n=name: resolver().resolve(n))
        assert not caught.value.negative


def test_nxdomain_and_nodata_are_negative_with_the_zone_ttl(lab: Lab) -> None:
    with pytest.raises(ResolveError) as caught:
        run_in(lab, lambda: resolver().resolve("missing.test"))
    assert caught.value.negative and caught.value.ttl == 9
    with pytest.raises(ResolveError) as caught:
        run_in(lab, lambda: resolver().resolve("empty.test"))
    assert caught.value.negative and caught.value.ttl == 7


def test_search_list_and_ndots(lab: Lab) -> None:
    found = run_in(lab, lambda: resolver(search=("corp.test",), ndots=2).resolve("short"))
    assert found.name == "short.corp.test"


def test_a_dead_nameserver_is_skipped(lab: Lab) -> None:
    found = run_in(lab, lambda: resolver(nameservers=("127.0.0.2", "127.0.0.1")).resolve("plain.test"))
    assert found.ttl == 20


def test_aaaa_records_join_when_the_pod_sends_ipv6(lab: Lab) -> None:
    only_v4 = run_in(lab, lambda: resolver().addresses("dual.test", ipv6=False))
    assert only_v4.addresses == (ip_address("203.0.113.31"),)
    both = run_in(lab, lambda: resolver().addresses("dual.test", ipv6=True))
    assert both.addresses == (ip_address("203.0.113.31"), ip_address("2001:db8::31")) and both.ttl == 12
    v4_only_name = run_in(lab, lambda: resolver().addresses("plain.test", ipv6=True))  # no AAAA: still fine
    assert len(v4_only_name.addresses) == 2
    with pytest.raises(ResolveError) as caught:
        run_in(lab, lambda: resolver().addresses("missing.test", ipv6=True))
    assert caught.value.negative


def test_ipv6_egress_is_detected_from_the_routing_table(lab: Lab) -> None:
    with entered(lab.ns("dns")):
        assert not can_send_ipv6() and not EgressFamilies().sends_ipv6
    lab.ip("dns", "-6", "addr", "add", "2001:db8::99/64", "dev", "lo", "nodad")
    lab.ip("dns", "-6", "route", "add", "default", "dev", "lo")
    try:
        with entered(lab.ns("dns")):
            assert can_send_ipv6() and EgressFamilies().sends_ipv6
    finally:
        lab.ip("dns", "-6", "route", "del", "default", "dev", "lo")


def test_ipv6_nameservers_over_udp_and_tcp_a_link_local_one_by_its_interface(lab: Lab) -> None:
    conf = parse_resolv_conf(f"nameserver {LINK_LOCAL}\nnameserver ::1\noptions timeout:1 attempts:1\n")
    assert conf.nameservers == (LINK_LOCAL, "::1")
    for nameservers in ((LINK_LOCAL,), ("::1",), ("2001:db8::99", "::1")):  # the first one of the last pair is dead
        found = run_in(lab, lambda n=nameservers: resolver(nameservers=n).resolve("plain.test"))  # type: ignore[misc]
        assert found.addresses == (ip_address("203.0.113.25"), ip_address("203.0.113.26"))
        assert len(run_in(lab, lambda n=nameservers: resolver(nameservers=n).resolve("big.test")).addresses) == 40  # type: ignore[misc]
