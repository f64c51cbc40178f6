"""Client connections: aiohttp's C request parser in a plain asyncio protocol, one request at a time.

A connection is in one `State` at a time. Bytes are parsed as they arrive (pipelined requests queue);
one task per connection answers the queued requests in order. What to do at each step is decided by
the pure functions of `exchange`; this module only moves bytes, keeps time and writes the access log.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from ipaddress import ip_address
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError, InvalidURLError, LineTooLong
from aiohttp.http_parser import HttpRequestParser

from egress_router.config.addresses import IPAddress
from egress_router.config.http_acl import Decision
from egress_router.config.http_settings import HttpProxySettings
from egress_router.config.ipv4_in_ipv6 import canonical
from egress_router.http_proxy import exchange as x
from egress_router.http_proxy import messages as m
from egress_router.http_proxy import metrics
from egress_router.http_proxy.access_log import AccessLog
from egress_router.http_proxy.exchange import Answer
from egress_router.http_proxy.flow import FlowControl
from egress_router.http_proxy.upstream import MAX_HEADERS, OpenConnection, Upstream, UpstreamError, UpstreamPool
from egress_router.observe.stats import DURATION_BUCKETS, Stats, observe
from egress_router.runtime.deadline import Deadline
from egress_router.runtime.egress_families import EgressFamilies
from egress_router.runtime.happy_eyeballs import interleave
from egress_router.runtime.tunnel import Tunnel, TunnelEnd, abort_with_reset

log = logging.getLogger(__name__)
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
#: Reading stops while this many parsed requests wait for their turn, or this many bytes wait for a tunnel:
#: a client cannot make the proxy hold more than that (the kernel's socket buffer holds the rest).
MAX_QUEUED = 32
MAX_PENDING_TUNNEL_BYTES = 1 << 16
IN, OUT = ("in",), ("out",)

#: Host name, port -> getaddrinfo-shaped answers; replaceable so tests need no DNS.
Lookup = Callable[[str, int], Awaitable[list[Any]]]


class State(enum.Enum):
    IDLE = "idle"  # no request under way and none queued: the idle timeout runs
    HEAD = "head"  # part of a request head is in: the header timeout runs
    BUSY = "busy"  # a request is being answered; pipelined ones queue behind it
    TUNNEL = "tunnel"  # CONNECT was asked: from here on the client's bytes belong to the tunnel
    CLOSED = "closed"


class ClientWentAway(ConnectionResetError):
    """The client's connection ended in the middle of a request body: that request can never be complete."""


class Proxy:
    """State shared by a worker's connections: settings, pool, resolver, live connections."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: HttpProxySettings,
        access_log: AccessLog,
        *,
        lookup: Lookup | None = None,
        open_connection: OpenConnection | None = None,
        families: EgressFamilies | None = None,
    ) -> None:
        self.loop = loop
        self.settings = settings
        self.access_log = access_log
        self.pool = UpstreamPool(loop, settings.connect_timeout, settings.max_header_size, open_connection)
        self.pool.families = families  # None (tests' stand-in connections): every family
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.stats = Stats(metrics.METRICS)
        self.requests = self.stats.counter(metrics.REQUESTS)  # the hot path adds to these dicts directly
        self.list_decisions = self.stats.counter(metrics.LIST_DECISIONS)
        self.relayed = self.stats.relayed(metrics.BYTES)
        self.bytes = self.relayed.done
        self.durations = self.stats.histogram(metrics.DURATION)
        self.tunnel_durations = self.stats.histogram(metrics.TUNNEL_DURATION)
        self.pool.errors = self.stats.counter(metrics.CONNECT_ERRORS)
        self.stats.computed(metrics.CONNECTIONS, lambda: {(): len(self.connections)})
        self.stats.computed(metrics.TUNNELS, lambda: {(): sum(1 for c in self.connections if c.tunnel is not None)})
        self.lookup: Lookup = lookup or self._getaddrinfo

    async def _getaddrinfo(self, host: str, port: int) -> list[Any]:
        return await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)

    async def authorize(self, target: m.RequestTarget) -> tuple[list[IPAddress], Decision] | Answer:
        """Resolve once, decide on exactly those addresses (the caller connects to nothing else), or say why not."""
        acl = self.settings.acl
        if target.address is not None:
            return [canonical(target.address)], self.decided(acl.decide(None, [target.address]))
        early = acl.decide_before_lookup(target.host)
        if early is not None:
            return [], self.decided(early)
        try:
            infos = await self.lookup(target.host, target.port)
        except socket.gaierror as error:
            return Answer(502, f"cannot resolve {target.host}: {error.strerror}")
        answers = [ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]  # in RFC 6724 order (glibc)
        decision = self.decided(acl.decide(target.host, answers))
        return interleave(list(dict.fromkeys(canonical(a) for a in answers))), decision  # ::ffff:a.b.c.d connects as IPv4

    def decided(self, decision: Decision) -> Decision:
        key = (str(decision.line) if decision.line is not None else "none", "allow" if decision.allowed else "deny")
        self.list_decisions[key] = self.list_decisions.get(key, 0) + 1
        return decision

    def drain(self) -> None:
        """SIGTERM: idle connections go now, busy ones after their current response."""
        self.draining = True
        for connection in list(self.connections):
            connection.drain_now()

    def protocol(self) -> ClientConnection:
        return ClientConnection(self)


class ClientConnection(TunnelEnd, FlowControl):
    """One client connection: requests are parsed as bytes arrive and answered strictly in order."""

    def __init__(self, proxy: Proxy) -> None:
        super().__init__(proxy.loop)
        self.proxy = proxy
        self.settings = proxy.settings
        self.parser = HttpRequestParser(
            self,  # type: ignore[arg-type]  # the parser's streams need only FlowControl's pause/resume/connected
            proxy.loop,
            2**16,
            max_line_size=self.settings.max_header_size // 2,
            max_field_size=self.settings.max_header_size // 2,
            max_headers=MAX_HEADERS,
            auto_decompress=False,
        )
        self.state = State.IDLE
        #: Requests parsed and waiting for their turn; an Answer in it is a refusal of what came after them.
        self.queue: collections.deque[tuple[Any, Any]] = collections.deque()
        self.client_done = False  # the client half-closed: once the queue is answered, nothing more comes
        self.refused = False  # bytes that were no request came: reading never resumes
        self.body: Any = None  # the body stream of the request last parsed
        self.head_bytes = 0  # bytes of the request head under way (State.HEAD)
        self.bytes_in = 0  # request body bytes passed to the server, this request
        self.bytes_out = 0  # response body bytes written to the client, this request
        self.allowed = False  # whether the list allowed this request (the metrics' decision label)
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.deadline = Deadline(proxy.loop, self.on_deadline)
        self.tunnel: Tunnel | None = None
        self.tunnel_pending: list[bytes] = []  # bytes that came after CONNECT, before the tunnel is up
        self.pending_bytes = 0
        self.tunnel_eof = False  # and whether the client half-closed meanwhile
        self._peer: str | None = None

    # protocol events ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio and uvloop already set TCP_NODELAY; asking again costs ~10 µs.
        self.transport = transport  # type: ignore[assignment]
        if len(self.proxy.connections) >= self.settings.max_connections:
            self.answer(Answer(503, f"too many connections (EGRESS_HTTP_PROXY_MAX_CONNECTIONS={self.settings.max_connections})"))
            return
        self.proxy.connections.add(self)
        self.deadline.set(self.settings.header_timeout)
        self.task = self.loop.create_task(self.serve())

    def data_received(self, data: bytes) -> None:
        if self.state is State.TUNNEL:
            self.tunnel_bytes(data)
            return
        if self.state is State.IDLE and data:
            self.state = State.HEAD
            self.deadline.set(self.settings.header_timeout)
        if self.state is State.HEAD:
            self.head_bytes += len(data)
        try:
            messages, upgraded, tail = self.parser.feed_data(data)
        except (HttpProcessingError, LineTooLong) as error:
            self.refuse(self.parse_failure(error))
            return
        problem = self.took(messages)
        if problem is not None:
            self.refuse(problem)
            return
        if upgraded:  # CONNECT: what follows its head is for the tunnel
            self.state = State.TUNNEL
            self.tunnel_bytes(tail)

    def took(self, messages: list[tuple[Any, Any]]) -> Answer | None:
        """Queue the requests parsed so far; a head over the limit is refused whole or in part."""
        limit = self.settings.max_header_size
        if not messages:
            if self.state is State.HEAD and self.head_bytes > limit:
                return Answer(431, f"request head larger than {limit} bytes")
            return None
        if any(head_size(message) > limit for message, _ in messages):
            return Answer(431, f"request head larger than {limit} bytes")
        if self.state is State.HEAD:
            self.state = State.BUSY
            self.head_bytes = 0
            self.deadline.clear()
        self.body = messages[-1][1]
        self.queue.extend(messages)
        if len(self.queue) >= MAX_QUEUED:
            self.hold_reading()
        self.wake()
        return None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def refuse(self, answer: Answer) -> None:
        """Bytes that are no request: answered in their turn, after every request that came before them, and
        the connection ends there. Nothing more is read: the parser cannot find where a next request starts."""
        self.refused = True
        self.hold_reading()
        if self.state in (State.IDLE, State.HEAD):  # nothing is being answered: now
            self.answer(answer)
        else:
            self.queue.append((answer, None))
            self.wake()

    def parse_failure(self, error: Exception) -> Answer:
        if isinstance(error, LineTooLong):
            return Answer(431, f"a header line is longer than {self.settings.max_header_size // 2} bytes ({m.error_text(error)})")
        if "Too many headers" in str(error):
            return Answer(431, "too many header fields")
        text = m.error_text(error)
        return Answer(400, (isinstance(error, InvalidURLError) and m.unbracketed_ipv6(text)) or text)

    def tunnel_bytes(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.forward(0, data)
        elif data:
            self.tunnel_pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes >= MAX_PENDING_TUNNEL_BYTES:
                self.hold_reading()

    def eof_received(self) -> bool:
        if self.state is State.TUNNEL:
            if self.tunnel is not None:
                self.tunnel.end_of_data(0)
            else:
                self.tunnel_eof = True
            return True
        self.end_of_requests()
        self.client_done = True
        if self.state in (State.IDLE, State.HEAD):
            self.close()
        self.wake()
        return True  # half-closed clients still get their response, then the connection closes

    def connection_lost(self, exc: BaseException | None) -> None:
        _ = self.peer  # still needed for log lines written after the connection is gone (tunnels)
        super().connection_lost(exc)
        self.state = State.CLOSED
        self.deadline.cancel()
        self.proxy.connections.discard(self)
        if self.tunnel is not None:
            self.tunnel.lost(0, exc)
        elif self.task is not None and not self.task.done():
            self.task.cancel()
        self.end_of_requests()

    def end_of_requests(self) -> None:
        """No more bytes from the client: a request body still under way fails, which ends its exchange (499)."""
        try:
            self.parser.feed_eof()
        except Exception:  # noqa: BLE001 - the client stopped mid-body
            if self.body is not None and not self.body.is_eof() and self.body.exception() is None:
                self.body.set_exception(ClientWentAway("client went away mid-body"))

    @property
    def peer(self) -> str:
        """The client as `address:port`, for the access log (worked out once, when first logged)."""
        if self._peer is None:
            peer = self.transport.get_extra_info("peername") if self.transport is not None else None
            host = peer[0].removeprefix("::ffff:") if peer else "-"
            self._peer = (f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}") if peer else "-"
        return self._peer

    # timers, answers and closing ---------------------------------------------------------------

    def on_deadline(self) -> None:
        """A request head took too long (408), or the connection sat idle (closed quietly)."""
        if self.state is State.HEAD:
            self.answer(Answer(408, f"request head not complete within {self.settings.header_timeout:g} s"))
        elif self.state is State.IDLE:
            self.close()

    def answer(self, answer: Answer, message: Any = None, started: float | None = None) -> None:
        """The one way the proxy speaks for itself: status and a one-line reason to the client and the log."""
        http10 = message is not None and message.version < x.HTTP_11
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(m.error_response(answer.status, answer.reason, close=answer.close, announce_keep_alive=http10))
        self.log_exchange(message, answer.status, started, answer.reason)
        if answer.close:
            self.close()

    def log_exchange(self, message: Any, status: int, started: float | None, reason: str, tunnel_up: float | None = None) -> None:
        """Once per request, whatever its end: the access-log line and the request's metrics.

        `tunnel_up`: when a CONNECT's tunnel was up; its bytes were counted as they flowed."""
        proxy = self.proxy
        self.logged = True
        method = message.method if message is not None and message.method in metrics.METHODS else "other"
        code = str(status)
        key = (method, code if code in metrics.CODES else "other", "allow" if self.allowed else "deny")
        proxy.requests[key] = proxy.requests.get(key, 0) + 1
        now = time.monotonic()
        if tunnel_up is None:
            proxy.bytes[IN] = proxy.bytes.get(IN, 0) + self.bytes_in
            proxy.bytes[OUT] = proxy.bytes.get(OUT, 0) + self.bytes_out
            if started is not None:
                observe(proxy.durations, DURATION_BUCKETS, now - started)
        else:
            observe(proxy.durations, DURATION_BUCKETS, tunnel_up - (started or tunnel_up))
            observe(proxy.tunnel_durations, metrics.TUNNEL_BUCKETS, now - tunnel_up)
        self.proxy.access_log.write(
            self.peer,
            message.method if message is not None else "-",
            message.path if message is not None else "-",
            status,
            self.bytes_in,
            self.bytes_out,
            now - started if started is not None else 0.0,
            reason,
        )
        self.bytes_in = self.bytes_out = 0  # counted: a refusal logged next (no request) must not count them again
        self.allowed = False

    def close(self) -> None:
        self.state = State.CLOSED
        self.deadline.cancel()
        if self.transport is not None:
            self.transport.close()

    def drain_now(self) -> None:
        if self.state is State.IDLE:
            self.close()

    async def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("client went away")
        self.transport.write(data)
        if self.writing_paused:
            await self.drained()

    # requests ----------------------------------------------------------------------------------

    async def next_request(self) -> tuple[Any, Any] | None:
        while not self.queue:
            if self.client_done or self.state is State.CLOSED or self.transport is None or self.transport.is_closing():
                return None
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        request = self.queue.popleft()
        if self.reading_held and not self.backlogged():
            self.release_reading()
        return request

    def backlogged(self) -> bool:
        """Whether reading stays held: a refusal is queued, the queue is still long, or a tunnel's bytes wait."""
        waiting = self.tunnel is None and self.pending_bytes >= MAX_PENDING_TUNNEL_BYTES
        return self.refused or waiting or len(self.queue) >= MAX_QUEUED // 2

    async def serve(self) -> None:
        try:
            while not self.proxy.draining:
                request = await self.next_request()
                if request is None:
                    break
                if isinstance(request[0], Answer):  # what came after the requests before it was no request
                    self.answer(request[0])
                    break
                if not await self.answer_request(*request):
                    break
                if not self.queue and self.state is State.BUSY:
                    self.state = State.IDLE
                    self.deadline.set(self.settings.idle_timeout)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as error:
            log.error("unexpected error on a connection from %s: %s: %s", self.peer, type(error).__name__, error)
            log.debug("the traceback of that error", exc_info=True)
        finally:
            if self.tunnel is None:
                self.close()

    async def answer_request(self, message: Any, payload: Any) -> bool:
        """One request, start to end; whether the connection carries another."""
        # the parser stops at a CONNECT: once one is queued, what follows is tunnel bytes, whatever is answered first
        self.state = State.TUNNEL if message.method == "CONNECT" or self.state is State.TUNNEL else State.BUSY
        self.bytes_in = self.bytes_out = 0
        self.allowed = False
        self.logged = False
        started = time.monotonic()
        try:
            keep = await self.handle(message, payload, started)
        except (ConnectionError, asyncio.CancelledError):
            if not self.logged:
                self.log_exchange(message, 499, started, "client went away")  # as nginx logs it
            raise
        if not self.logged:  # every path answers and logs; this only keeps the one-line-per-request promise
            log.error("a %s request from %s ended without an answer", message.method, self.peer)
            self.answer(Answer(500, "internal error: the request ended without an answer"), message, started)
            return False
        return keep

    async def handle(self, message: Any, payload: Any, started: float) -> bool:
        te = message.headers.get("Transfer-Encoding")
        problem = x.version_problem(message.version, te)
        if problem is None and message.method == "CONNECT":
            return await self.connect(message, started)
        target = problem or request_target(message.path, te)
        if isinstance(target, Answer):
            self.answer(target, message, started)
            return False
        verdict = await self.proxy.authorize(target)
        if isinstance(verdict, Answer):
            self.answer(verdict, message, started)
            return False
        addresses, decision = verdict
        self.allowed = decision.allowed
        has_body = x.request_has_body(message.chunked, message.headers.get("Content-Length"))
        if not decision.allowed:
            answer = x.denied(decision.reason, has_body=has_body, client_asked_close=message.should_close or self.proxy.draining)
            self.answer(answer, message, started)
            return not answer.close
        return await self.forward(message, payload, target, addresses, decision.reason, started, has_body)

    # forwarding --------------------------------------------------------------------------------

    async def forward(
        self, message: Any, payload: Any, target: m.RequestTarget, addresses: list[IPAddress], rule: str, started: float, has_body: bool
    ) -> bool:
        sent = await self.send_request(message, payload, target, addresses, started, has_body)
        if sent is None:
            return False
        upstream, response, body, upload = sent
        framing = x.response_framing(
            message.method, message.version, response.code, chunked=response.chunked, has_length="Content-Length" in response.headers
        )
        keep = x.keep_client(
            client_asked_close=message.should_close,
            draining=self.proxy.draining,
            upload_complete=upload is None or upload.done(),
            framing=framing,
        )
        extra = [("Transfer-Encoding", "chunked")] if framing.rechunk else []
        connection = x.connection_header(keep, message.version)
        if connection is not None:
            extra.append(connection)
        head = m.head(f"HTTP/1.1 {response.code} {response.reason}", m.forwarded_headers(response.raw_headers, None), extra)
        try:
            cut = await self.relay_response(head, body, upstream, framing)
        except (ConnectionError, asyncio.CancelledError):
            self.finish(upload)
            upstream.abort()
            raise
        upload_complete = self.finish(upload)
        if cut is not None:  # the server broke off mid-body: the client's copy ends there too
            upstream.abort()
            self.log_exchange(message, response.code, started, f"{rule}; {cut}")
            if self.transport is not None:
                if framing.cut_needs_reset:
                    abort_with_reset(self.transport)
                else:
                    self.close()  # what came is sent; the missing bytes or last chunk tell the client
            return False
        if x.reusable(complete=True, upload_complete=upload_complete, server_asked_close=response.should_close, lost=upstream.lost):
            self.proxy.pool.release(upstream)
        else:
            upstream.close()
        self.log_exchange(message, response.code, started, rule)
        return keep and not self.proxy.draining  # SIGTERM may have come while the body streamed

    async def send_request(
        self, message: Any, payload: Any, target: m.RequestTarget, addresses: list[IPAddress], started: float, has_body: bool
    ) -> tuple[Upstream, Any, Any, asyncio.Task[None] | None] | None:
        """The request to a server and its final response head (1xx passed on), retried once on a stale pooled
        connection; None when the proxy answered instead."""
        framing = [("Transfer-Encoding", "chunked")] if message.chunked else []
        request_head = m.head(
            f"{message.method} {target.path} HTTP/1.1", m.forwarded_headers(message.raw_headers, target.host_header), framing
        )
        for attempt in (1, 2):
            try:
                upstream = await self.proxy.pool.acquire(addresses, target.port, pooled=attempt == 1)
            except UpstreamError as error:
                self.answer(error.answer, message, started)
                return None
            upstream.start(message.method)
            upstream.write(request_head)
            upload = self.loop.create_task(self.upload(payload, upstream, message.chunked)) if has_body else None
            try:
                response, body = await self.final_response(upstream, message.version)
                return upstream, response, body, upload
            except UpstreamError as error:
                self.finish(upload)
                upstream.abort()
                reused, lost, answered = upstream.exchanges > 0, upstream.lost, upstream.answered
                if x.may_retry(attempt=attempt, reused=reused, lost=lost, answered=answered, has_body=has_body, method=message.method):
                    continue
                self.answer(error.answer, message, started)
                return None
            except (ConnectionError, asyncio.CancelledError):  # the client went away: the server connection goes too
                self.finish(upload)
                upstream.abort()
                raise
        return None  # not reached: the second attempt never retries

    async def final_response(self, upstream: Upstream, client_version: x.Version) -> tuple[Any, Any]:
        while True:
            response, body = await upstream.next_response(self.settings.idle_timeout)
            if not x.is_interim(response.code):
                return response, body
            if x.forward_interim(client_version):
                await self.write(m.head(f"HTTP/1.1 {response.code} {response.reason}", m.forwarded_headers(response.raw_headers, None)))

    async def relay_response(self, head: bytes, body: Any, upstream: Upstream, framing: x.ResponseFraming) -> str | None:
        """The response to the client; returns why the server broke off mid-body, or None when it is complete."""
        if not framing.body:
            await self.write(head)
            return None
        # The head leaves with whatever body is already here: one write(2) for a small response.
        first = body.read_nowait()
        self.bytes_out += len(first)
        complete = body.at_eof() and upstream.cut is None
        data = (m.chunk(first) if framing.rechunk else first) if first else b""
        await self.write(head + data + (m.LAST_CHUNK if complete and framing.rechunk else b""))
        if complete or (body.at_eof() and upstream.cut is not None):
            return upstream.cut
        upstream.stream_body(self.settings.idle_timeout)
        try:
            async for data in body.iter_any():
                self.bytes_out += len(data)
                await self.write(m.chunk(data) if framing.rechunk else data)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as error:  # noqa: BLE001 - any failure of the body stream is the server breaking off
            return f"server broke off: {error}"
        if upstream.cut is not None:
            return upstream.cut
        if framing.rechunk:
            await self.write(m.LAST_CHUNK)
        return None

    @staticmethod
    def finish(task: asyncio.Task[None] | None) -> bool:
        """Stop an upload still running; whether the whole request body went out (a failure is collected, not left to be logged)."""
        if task is None:
            return True
        if not task.done():
            task.cancel()
            return False
        return not task.cancelled() and task.exception() is None

    async def upload(self, payload: Any, upstream: Upstream, chunked: bool) -> None:
        try:
            async for data in payload.iter_any():
                self.bytes_in += len(data)
                upstream.write(m.chunk(data) if chunked else data)
                if upstream.writing_paused:
                    await upstream.drained()
        except ClientWentAway:
            if self.task is not None:
                self.task.cancel()  # the request can never be complete: end the exchange now, not when the server gives up
            return
        if chunked:
            upstream.write(m.LAST_CHUNK)

    # CONNECT -----------------------------------------------------------------------------------

    async def connect(self, message: Any, started: float) -> bool:
        target = m.parse_connect_target(message.path)
        if isinstance(target, str):
            self.answer(Answer(400, target), message, started)
            return False
        problem = x.connect_port_problem(target.port, self.settings.connect_ports)
        if problem is not None:
            self.answer(problem, message, started)
            return False
        verdict = await self.proxy.authorize(target)
        if isinstance(verdict, Answer) or not verdict[1].allowed:
            self.answer(verdict if isinstance(verdict, Answer) else Answer(403, verdict[1].reason), message, started)
            return False
        addresses, decision = verdict
        self.allowed = True
        try:
            upstream = await self.proxy.pool.acquire(addresses, target.port, pooled=False)
        except UpstreamError as error:
            self.answer(error.answer, message, started)
            return False
        if self.transport is None or self.transport.is_closing():
            upstream.close()
            raise ConnectionResetError("client went away before the tunnel was up")
        if upstream.transport is None or upstream.transport.is_closing():
            upstream.close()
            self.answer(Answer(502, "the server closed the connection before the tunnel was up"), message, started)
            return False
        self.deadline.cancel()
        self.transport.write(ESTABLISHED)
        up = time.monotonic()
        tunnel = Tunnel(self.loop, (self.transport, upstream.transport), self.settings.tunnel_idle_timeout)
        self.tunnel = upstream.tunnel = tunnel
        self.proxy.relayed.start((), tunnel.sent)
        for data in self.tunnel_pending:
            tunnel.forward(0, data)
        self.tunnel_pending.clear()
        self.pending_bytes = 0
        self.release_reading()
        for data in upstream.early:
            tunnel.forward(1, data)
        upstream.early.clear()
        if self.tunnel_eof:
            tunnel.end_of_data(0)
        try:
            why = await tunnel.closed
        finally:
            self.proxy.relayed.end(tunnel.sent)
        self.bytes_in, self.bytes_out = tunnel.sent
        self.log_exchange(message, 200, started, f"{decision.reason}; {why}", tunnel_up=up)
        return False


def request_target(path: str, transfer_encoding: str | None) -> m.RequestTarget | Answer:
    """Where a plain (not CONNECT) request goes, or the answer when it cannot go anywhere."""
    target = m.parse_absolute_target(path)
    if isinstance(target, str):
        return Answer(400, target)
    return x.framing_problem(transfer_encoding) or target


def head_size(message: Any) -> int:
    """Bytes in a parsed request head, as the client sent them (give or take line-end whitespace)."""
    return len(message.method) + len(message.path) + 12 + sum(len(name) + len(value) + 4 for name, value in message.raw_headers) + 2
