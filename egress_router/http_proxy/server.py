"""Client connections: aiohttp's C request parser in a plain asyncio protocol, one request at a time."""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from ipaddress import ip_address
from typing import Any

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.http_parser import HttpRequestParser

from egress_router.config.addresses import IPAddress
from egress_router.config.http_acl import Decision
from egress_router.config.http_settings import HttpProxySettings
from egress_router.http_proxy import messages as m
from egress_router.http_proxy.access_log import AccessLog
from egress_router.http_proxy.upstream import Upstream, UpstreamError, UpstreamPool
from egress_router.runtime.deadline import Deadline
from egress_router.runtime.tunnel import Tunnel, TunnelEnd, abort_with_reset

log = logging.getLogger(__name__)
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
#: Requests that may be sent again when a pooled connection turns out closed (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class ClientWentAway(ConnectionResetError):
    """The client's connection ended in the middle of a request body: that request can never be complete."""


class Proxy:
    """State shared by a worker's connections: settings, pool, resolver, live connections."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: HttpProxySettings, access_log: AccessLog) -> None:
        self.loop = loop
        self.settings = settings
        self.access_log = access_log
        self.pool = UpstreamPool(loop, settings.connect_timeout, settings.max_header_size)
        self.connections: set[ClientConnection] = set()
        self.draining = False

    async def authorize(self, target: m.RequestTarget) -> tuple[list[IPAddress], Decision]:
        """Resolve once, decide on exactly those addresses; the caller connects to nothing else."""
        acl = self.settings.acl
        if target.address is not None:
            return [target.address], acl.decide(None, [target.address])
        early = acl.decide_before_lookup(target.host)
        if early is not None:
            return [], early
        try:
            infos = await self.loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except socket.gaierror as error:
            raise UpstreamError(502, f"cannot resolve {target.host}: {error.strerror}") from error
        addresses: list[IPAddress] = []
        for info in infos:
            address = ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        return addresses, acl.decide(target.host, addresses)

    def protocol(self) -> ClientConnection:
        return ClientConnection(self)


class ClientConnection(TunnelEnd, BaseProtocol):
    """One client connection: requests are parsed as bytes arrive and handled strictly in order."""

    def __init__(self, proxy: Proxy) -> None:
        super().__init__(proxy.loop)
        self.proxy = proxy
        self.settings = proxy.settings
        self.parser = self._parser = HttpRequestParser(  # aiohttp's flow control reaches it as _parser
            self,
            proxy.loop,
            2**16,
            max_line_size=self.settings.max_header_size // 2,
            max_field_size=self.settings.max_header_size // 2,
            max_headers=256,
            auto_decompress=False,
        )
        self.queue: collections.deque[tuple[Any, Any]] = collections.deque()
        self.body: Any = None  # the body stream of the request last parsed
        self.bytes_in = 0  # request body bytes passed to the server, this request
        self.bytes_out = 0  # response body bytes written to the client, this request
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.deadline = Deadline(proxy.loop, self.on_deadline)
        self.head_bytes = 0
        self.busy = False
        self.tunnel: Tunnel | None = None
        self.tunnel_pending: list[bytes] = []
        self._peer: str | None = None
        self.closing = False

    # protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not BaseProtocol's: asyncio and uvloop already set TCP_NODELAY, and asking again costs ~10 µs.
        self.transport = transport  # type: ignore[assignment]
        if len(self.proxy.connections) >= self.settings.max_connections:
            self.refuse(503, f"too many connections (EGRESS_HTTP_PROXY_MAX_CONNECTIONS={self.settings.max_connections})")
            return
        self.proxy.connections.add(self)
        self.deadline.set(self.settings.header_timeout)
        self.task = self.proxy.loop.create_task(self.serve())

    def data_received(self, data: bytes) -> None:  # noqa: C901 - split when the exchange becomes a state machine (issue 8)
        if self.tunnel is not None:
            self.tunnel.forward(0, data)
            return
        if self._upgraded:  # CONNECT parsed; bytes for the tunnel wait until it is up
            if data:
                self.tunnel_pending.append(data)
            return
        if not self.busy and not self.queue and data:
            if self.head_bytes == 0:
                self.deadline.set(self.settings.header_timeout)
            self.head_bytes += len(data)
        try:
            messages, upgraded, tail = self.parser.feed_data(data)
        except LineTooLong as error:
            self.refuse(431, f"a header line is longer than {self.settings.max_header_size // 2} bytes ({m.error_text(error)})")
            return
        except HttpProcessingError as error:
            if "Too many headers" in str(error):
                self.refuse(431, "too many header fields")
            else:
                self.refuse(400, m.error_text(error))
            return
        if messages:
            if any(head_size(message) > self.settings.max_header_size for message, _ in messages):
                self.refuse(431, f"request head larger than {self.settings.max_header_size} bytes")
                return
            self.head_bytes = 0
            self.deadline.clear()
            self.body = messages[-1][1]
            self.queue.extend(messages)
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
        elif not self.busy and self.head_bytes > self.settings.max_header_size:
            self.refuse(431, f"request head larger than {self.settings.max_header_size} bytes")
            return
        if upgraded:
            self._upgraded = True
            if tail:
                self.tunnel_pending.append(tail)

    def eof_received(self) -> bool:
        if self.tunnel is not None:
            self.tunnel.end_of_data(0)
            return True
        try:
            self.parser.feed_eof()
        except Exception:  # noqa: BLE001 - the client stopped mid-body
            self.cut_body()
        if not self.busy and not self.queue:
            self.close()
        return True  # half-closed clients still get their response

    def connection_lost(self, exc: BaseException | None) -> None:
        _ = self.peer  # still needed for log lines written after the connection is gone (tunnels)
        super().connection_lost(exc)
        self.deadline.cancel()
        self.proxy.connections.discard(self)
        if self.tunnel is not None:
            self.tunnel.lost(0, exc)
        elif self.task is not None and not self.task.done():
            self.task.cancel()
        try:
            self.parser.feed_eof()
        except Exception:  # noqa: BLE001 - the client stopped mid-body
            self.cut_body()

    def cut_body(self) -> None:
        """The client ended its side mid-body: the upload of that request fails, which ends its exchange (499)."""
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

    # timers and closing -----------------------------------------------------------------------

    def on_deadline(self) -> None:
        """A request head took too long (408), or the connection sat idle (closed quietly)."""
        if self.head_bytes:
            self.refuse(408, f"request head not complete within {self.settings.header_timeout:g} s")
        elif not self.busy:
            self.close()

    def refuse(self, status: int, reason: str, method: str = "-", target: str = "-") -> None:
        """Answer an error the connection cannot recover from, log it, close."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(m.error_response(status, reason))
        self.proxy.access_log.write(self.peer, method, target, status, 0, 0, 0.0, reason)
        self.close()

    def close(self) -> None:
        self.closing = True
        self.deadline.cancel()
        if self.transport is not None:
            self.transport.close()

    def drain_now(self) -> None:
        """SIGTERM: idle connections go now, busy ones after the current response."""
        self.closing = True
        if not self.busy and not self.queue and self.head_bytes == 0 and self.tunnel is None:
            self.close()

    async def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("client went away")
        self.transport.write(data)
        if self._paused:
            await self._drain_helper()

    # requests ---------------------------------------------------------------------------------

    async def next_request(self) -> tuple[Any, Any] | None:
        while not self.queue:
            if self.transport is None or self.transport.is_closing():
                return None
            self.waiter = self.proxy.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.queue.popleft()

    async def serve(self) -> None:
        try:
            while not self.closing:
                request = await self.next_request()
                if request is None:
                    return
                self.busy = True
                self.bytes_in = self.bytes_out = 0
                started = time.monotonic()
                try:
                    keep = await self.handle(*request)
                except (ConnectionError, asyncio.CancelledError):
                    message = request[0]  # the client went away mid-request: 499, as nginx logs it
                    self.proxy.access_log.write(
                        self.peer,
                        message.method,
                        message.path,
                        499,
                        self.bytes_in,
                        self.bytes_out,
                        time.monotonic() - started,
                        "client went away",
                    )
                    raise
                self.busy = False
                if not keep or self.closing:
                    break
                if not self.queue:
                    self.deadline.set(self.settings.idle_timeout)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as error:
            log.error("unexpected error on a connection from %s: %s: %s", self.peer, type(error).__name__, error)
            log.debug("the traceback of that error", exc_info=True)
        finally:
            if self.tunnel is None:
                self.close()

    async def handle(self, message: Any, payload: Any) -> bool:
        started = time.monotonic()
        if message.version not in ((1, 1), (1, 0)):
            self.refuse(
                505, f"HTTP/{message.version[0]}.{message.version[1]} is not supported (HTTP/1.1 or 1.0 only)", message.method, message.path
            )
            return False
        if message.version == (1, 0) and "Transfer-Encoding" in message.headers:
            self.refuse(400, "Transfer-Encoding in an HTTP/1.0 request: framing is ambiguous (RFC 9112 6.1)", message.method, message.path)
            return False
        if message.method == "CONNECT":
            return await self.connect(message, started)
        target = m.parse_absolute_target(message.path)
        if isinstance(target, str):
            self.refuse(400, target, message.method, message.path)
            return False
        te = message.headers.get("Transfer-Encoding")
        if te is not None and te.strip().lower() != "chunked":
            self.refuse(501, f"Transfer-Encoding '{te}' is not supported (only chunked)", message.method, message.path)
            return False
        try:
            addresses, decision = await self.proxy.authorize(target)
        except UpstreamError as error:
            await self.reply_error(error.status, error.reason, message, started, close=True)
            return False
        if not decision.allowed:
            has_body = message.chunked or int(message.headers.get("Content-Length", "0") or 0) > 0
            await self.reply_error(403, decision.reason, message, started, close=has_body or message.should_close)
            return not (has_body or message.should_close)
        return await self.exchange(message, payload, target, addresses, decision, started)

    async def reply_error(self, status: int, reason: str, message: Any, started: float, *, close: bool) -> None:
        await self.write(m.error_response(status, reason, close=close, announce_keep_alive=message.version < (1, 1)))
        self.proxy.access_log.write(self.peer, message.method, message.path, status, 0, 0, time.monotonic() - started, reason)

    def log_exchange(self, message: Any, code: int, started: float, reason: str) -> None:
        self.proxy.access_log.write(
            self.peer, message.method, message.path, code, self.bytes_in, self.bytes_out, time.monotonic() - started, reason
        )

    async def exchange(  # noqa: C901 - to become small pure decisions and a state machine (issue 8)
        self, message: Any, payload: Any, target: m.RequestTarget, addresses: list[IPAddress], decision: Decision, started: float
    ) -> bool:
        has_body = message.chunked or int(message.headers.get("Content-Length", "0") or 0) > 0
        framing = [("Transfer-Encoding", "chunked")] if message.chunked else []
        request_head = m.head(
            f"{message.method} {target.path} HTTP/1.1", m.forwarded_headers(message.raw_headers, target.host_header), framing
        )
        client_keep = not message.should_close and not self.closing
        for attempt in (1, 2):
            try:
                upstream = await self.proxy.pool.acquire(addresses, target.port, pooled=attempt == 1)
            except UpstreamError as error:
                await self.reply_error(error.status, error.reason, message, started, close=True)
                return False
            upstream.start(message.method)
            upstream.write(request_head)
            body_task = self.proxy.loop.create_task(self.send_body(payload, upstream, message.chunked)) if has_body else None
            try:
                while True:
                    response, body = await upstream.next_response(self.settings.idle_timeout)
                    if 100 <= response.code < 200 and response.code != 101:
                        if message.version >= (1, 1):
                            await self.write(
                                m.head(f"HTTP/1.1 {response.code} {response.reason}", m.forwarded_headers(response.raw_headers, None))
                            )
                        continue
                    break
            except UpstreamError as error:
                self.finish(body_task)
                upstream.abort()
                if (
                    attempt == 1
                    and upstream.exchanges
                    and upstream.lost
                    and not upstream.answered
                    and not has_body
                    and message.method in IDEMPOTENT
                ):
                    continue  # a pooled connection the server closed meanwhile: once more on a new one
                await self.reply_error(error.status, error.reason, message, started, close=True)
                return False
            except (ConnectionError, asyncio.CancelledError):  # the client went away: the server connection goes too
                self.finish(body_task)
                upstream.abort()
                raise
            break
        no_body = message.method == "HEAD" or response.code in (204, 304)
        extra: list[tuple[str, str]] = []
        chunked_out = False
        if not no_body and (response.chunked or "Content-Length" not in response.headers):
            if message.version >= (1, 1):
                extra.append(("Transfer-Encoding", "chunked"))
                chunked_out = True
            else:
                client_keep = False  # HTTP/1.0 has no chunked coding (RFC 9112 7): the body goes as is, ended by the close
        if body_task is not None and not body_task.done():
            client_keep = False  # the client's body was not read to its end: its framing is lost
        client_keep = client_keep and not self.closing  # SIGTERM may have come while the server worked
        if not client_keep:
            extra.append(("Connection", "close"))
        elif message.version < (1, 1):
            extra.append(("Connection", "keep-alive"))  # an HTTP/1.0 client closes unless told otherwise (RFC 9112 9.3)
        response_head = m.head(f"HTTP/1.1 {response.code} {response.reason}", m.forwarded_headers(response.raw_headers, None), extra)
        complete = no_body
        try:
            if no_body:
                await self.write(response_head)
            else:
                # The head leaves with whatever body is already here: one write(2) for a small response.
                first = body.read_nowait()
                self.bytes_out += len(first)
                ending = m.LAST_CHUNK if chunked_out and body.at_eof() and upstream.cut is None else b""
                await self.write(response_head + ((m.chunk(first) if chunked_out else first) if first else b"") + ending)
                if not ending:
                    async for data in body.iter_any():
                        self.bytes_out += len(data)
                        await self.write(m.chunk(data) if chunked_out else data)
                    if upstream.cut is not None:
                        raise UpstreamError(502, upstream.cut)
                    if chunked_out:
                        await self.write(m.LAST_CHUNK)
                complete = True
        except (ConnectionError, asyncio.CancelledError):
            self.finish(body_task)
            upstream.abort()
            raise
        except Exception as error:  # noqa: BLE001 - the server broke off mid-body: the client's copy ends there too
            self.finish(body_task)
            upstream.abort()
            why = error.reason if isinstance(error, UpstreamError) else f"server broke off: {error}"
            self.log_exchange(message, response.code, started, f"{decision.reason}; {why}")
            if self.transport is not None:
                if chunked_out or "Content-Length" in response.headers:
                    self.close()  # what came is sent; then the missing last chunk or bytes tell the client
                else:
                    abort_with_reset(self.transport)  # a body that ends with the connection: only a reset says "cut"
            return False
        body_done = self.finish(body_task)
        reusable = complete and body_done and not response.should_close and not upstream.lost
        if reusable:
            self.proxy.pool.release(upstream)
        else:
            upstream.close()
        self.log_exchange(message, response.code, started, decision.reason)
        return client_keep

    @staticmethod
    def finish(task: asyncio.Task[None] | None) -> bool:
        """Stop an upload still running; whether the whole request body went out (a failure is collected, not left to be logged)."""
        if task is None:
            return True
        if not task.done():
            task.cancel()
            return False
        return not task.cancelled() and task.exception() is None

    async def send_body(self, payload: Any, upstream: Upstream, chunked: bool) -> None:
        try:
            async for data in payload.iter_any():
                self.bytes_in += len(data)
                upstream.write(m.chunk(data) if chunked else data)
                if upstream.writing_paused:
                    await upstream._drain_helper()
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
            self.refuse(400, target, "CONNECT", message.path)
            return False
        if target.port not in self.settings.connect_ports:
            allowed = ",".join(str(p) for p in sorted(self.settings.connect_ports))
            self.refuse(
                403, f"CONNECT to port {target.port} is not allowed (EGRESS_HTTP_PROXY_CONNECT_PORTS={allowed})", "CONNECT", message.path
            )
            return False
        try:
            addresses, decision = await self.proxy.authorize(target)
        except UpstreamError as error:
            self.refuse(error.status, error.reason, "CONNECT", message.path)
            return False
        if not decision.allowed:
            self.refuse(403, decision.reason, "CONNECT", message.path)
            return False
        try:
            upstream = await self.proxy.pool.acquire(addresses, target.port, pooled=False)
        except UpstreamError as error:
            self.refuse(error.status, error.reason, "CONNECT", message.path)
            return False
        if self.transport is None or self.transport.is_closing() or upstream.transport is None:
            upstream.close()
            return False
        self.deadline.cancel()
        self.transport.write(ESTABLISHED)
        tunnel = Tunnel(self.proxy.loop, (self.transport, upstream.transport), self.settings.tunnel_idle_timeout)
        self.tunnel = upstream.tunnel = tunnel
        for data in self.tunnel_pending:
            tunnel.forward(0, data)
        self.tunnel_pending.clear()
        why = await tunnel.closed
        self.proxy.access_log.write(
            self.peer, "CONNECT", message.path, 200, tunnel.sent[0], tunnel.sent[1], time.monotonic() - started, f"{decision.reason}; {why}"
        )
        return False


def head_size(message: Any) -> int:
    """Bytes in a parsed request head, as the client sent them (give or take line-end whitespace)."""
    return len(message.method) + len(message.path) + 12 + sum(len(name) + len(value) + 4 for name, value in message.raw_headers) + 2
