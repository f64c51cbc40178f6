"""Our own asynchronous DNS resolver on dnslib: what the DNS proxy needs and the C library cannot give,
the records' TTLs. Nameservers, search list and ndots come from /etc/resolv.conf (ResolvConf).

UDP first (a new socket and random port per query, answers checked against id and question), TCP when
the answer is truncated; CNAME chains followed within the answer and beyond it; NXDOMAIN and empty
answers are negative, with the zone's negative TTL.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
from dataclasses import dataclass
from ipaddress import ip_address

from dnslib import QTYPE, RCODE, DNSHeader, DNSQuestion, DNSRecord

from egress_router.config.addresses import IPAddress
from egress_router.config.resolv_conf import ResolvConf, candidates

MAX_CNAME_DEPTH = 8
DEFAULT_NEGATIVE_TTL = 5


@dataclass(frozen=True)
class Answer:
    name: str  # the name that answered (after search list and CNAMEs)
    addresses: tuple[IPAddress, ...]
    ttl: int


class ResolveError(Exception):
    """`negative`: the name or its records do not exist (retry after `ttl`); otherwise DNS itself failed."""

    def __init__(self, message: str, *, negative: bool = False, ttl: int = DEFAULT_NEGATIVE_TTL) -> None:
        super().__init__(message)
        self.negative = negative
        self.ttl = ttl


class _UdpExchange(asyncio.DatagramProtocol):
    def __init__(self, query: DNSRecord, answer: asyncio.Future[DNSRecord]) -> None:
        self.query = query
        self.answer = answer

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 - garbage is ignored, as a spoofed packet would be
            return
        if reply.header.id != self.query.header.id or reply.q.qname != self.query.q.qname or reply.q.qtype != self.query.q.qtype:
            return
        if not self.answer.done():
            self.answer.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


class Resolver:
    def __init__(self, conf: ResolvConf, port: int = 53) -> None:
        self.conf = conf
        self.port = port  # always 53 in a pod; another port for test servers

    async def resolve(self, name: str, qtype: str = "A") -> Answer:
        """The addresses of `name`, trying the search list as the C library would."""
        last: ResolveError | None = None
        for candidate in candidates(name, self.conf):
            try:
                return await self.lookup(candidate, qtype)
            except ResolveError as error:
                if not error.negative:
                    raise
                last = error
        assert last is not None
        raise last

    async def addresses(self, name: str, *, ipv6: bool) -> Answer:
        """IPv4 addresses, and IPv6 ones too when the pod can send IPv6; negative only if every family is."""
        if not ipv6:
            return await self.resolve(name, "A")
        results = await asyncio.gather(self.resolve(name, "A"), self.resolve(name, "AAAA"), return_exceptions=True)
        answers = [r for r in results if isinstance(r, Answer)]
        if answers:
            merged = tuple(dict.fromkeys(a for answer in answers for a in answer.addresses))
            return Answer(answers[0].name, merged, min(answer.ttl for answer in answers))
        errors = [r for r in results if isinstance(r, ResolveError)]
        if len(errors) != len(results):
            raise next(r for r in results if isinstance(r, BaseException))
        failed = [e for e in errors if not e.negative]
        raise failed[0] if failed else errors[0]

    async def lookup(self, qname: str, qtype: str = "A") -> Answer:
        """Follow CNAMEs from `qname` until addresses of `qtype`; the TTL is the chain's smallest."""
        wanted = getattr(QTYPE, qtype)
        name = _norm(qname)
        seen: set[str] = set()
        ttls: list[int] = []
        for _query in range(MAX_CNAME_DEPTH):
            asked = name
            reply = await self.exchange(name, qtype)
            while True:  # walk the chain as far as this answer goes
                if name in seen:
                    raise ResolveError(f"{qname}: CNAME loop at {name}")
                records = [rr for rr in reply.rr if _norm(str(rr.rname)) == name]
                found = [rr for rr in records if rr.rtype == wanted]
                if found:
                    addresses = tuple(dict.fromkeys(ip_address(str(rr.rdata)) for rr in found))
                    return Answer(name, addresses, max(0, min([*ttls, *(rr.ttl for rr in found)])))
                cname = next((rr for rr in records if rr.rtype == QTYPE.CNAME), None)
                if cname is None:
                    break
                seen.add(name)
                ttls.append(cname.ttl)
                name = _norm(str(cname.rdata))
            if reply.header.rcode == RCODE.NXDOMAIN:
                raise ResolveError(f"{qname}: no such name", negative=True, ttl=_negative_ttl(reply))
            if name == asked:
                raise ResolveError(f"{qname}: no {qtype} record", negative=True, ttl=_negative_ttl(reply))
            # the chain leads out of this answer: ask about where it points
        raise ResolveError(f"{qname}: CNAME chain longer than {MAX_CNAME_DEPTH}")

    async def exchange(self, qname: str, qtype: str) -> DNSRecord:
        """One question, asked of each nameserver in turn, `attempts` rounds; TCP when truncated."""
        failures = []
        for _round in range(self.conf.attempts):
            for server in self.conf.nameservers:
                query = DNSRecord(DNSHeader(id=secrets.randbelow(65536), rd=1), q=DNSQuestion(qname, getattr(QTYPE, qtype)))
                try:
                    reply = await self._udp(server, query)
                    if reply.header.tc:
                        reply = await self._tcp(server, query)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
                    failures.append(f"{server}: {type(error).__name__ if isinstance(error, TimeoutError) else error}")
                    continue
                if reply.header.rcode in (RCODE.NOERROR, RCODE.NXDOMAIN):
                    return reply
                failures.append(f"{server}: {RCODE.get(reply.header.rcode)}")
        raise ResolveError(f"{qname}: DNS failed ({'; '.join(failures[-3:])})")

    async def _udp(self, server: str, query: DNSRecord) -> DNSRecord:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[DNSRecord] = loop.create_future()
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpExchange(query, answer), remote_addr=(server, self.port), family=family
        )
        try:
            transport.sendto(query.pack())
            return await asyncio.wait_for(answer, self.conf.timeout)
        finally:
            transport.close()

    async def _tcp(self, server: str, query: DNSRecord) -> DNSRecord:
        async def ask() -> DNSRecord:
            reader, writer = await asyncio.open_connection(server, self.port)
            try:
                data = query.pack()
                writer.write(struct.pack("!H", len(data)) + data)
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = DNSRecord.parse(await reader.readexactly(length))
            finally:
                writer.close()
            if reply.header.id != query.header.id:
                raise ValueError("answer does not match the question")
            return reply

        return await asyncio.wait_for(ask(), self.conf.timeout)


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


def _negative_ttl(reply: DNSRecord) -> int:
    """RFC 2308: the SOA record's TTL or its minimum field, whichever is smaller."""
    for rr in reply.auth:
        if rr.rtype == QTYPE.SOA:
            return max(1, min(int(rr.ttl), int(rr.rdata.times[-1])))
    return DEFAULT_NEGATIVE_TTL
