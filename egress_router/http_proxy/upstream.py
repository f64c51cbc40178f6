"""Connections from the proxy to origin servers: aiohttp's C response parser, a keep-alive pool."""

from __future__ import annotations

import asyncio
import collections
import errno
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aiohttp.http_exceptions import LineTooLong
from aiohttp.http_parser import HttpResponseParser

from egress_router.config.addresses import IPAddress
from egress_router.http_proxy.exchange import Answer
from egress_router.http_proxy.flow import FlowControl
from egress_router.http_proxy.messages import error_text
from egress_router.runtime.deadline import Deadline
from egress_router.runtime.egress_families import EgressFamilies, unserved_reason
from egress_router.runtime.happy_eyeballs import first_to_connect
from egress_router.runtime.tunnel import Tunnel, TunnelEnd

EOF_MARK = None
#: How long an idle upstream connection is kept for reuse; origin servers commonly close at 60 s or more.
POOL_IDLE = 15.0
POOL_PER_HOST = 64
#: errno -> (metrics kind, the access log's words)
CONNECT_FAILURES = {
    errno.ECONNREFUSED: ("refused", "connection refused"),
    errno.ENETUNREACH: ("unreachable", "network unreachable"),
    errno.EHOSTUNREACH: ("unreachable", "host unreachable"),
}
#: Header fields in one head, the same for requests and responses.
MAX_HEADERS = 256
#: loop.create_connection(protocol_factory, host, port), or a stand-in for tests.
OpenConnection = Callable[[Callable[[], "Upstream"], str, int], Awaitable[tuple[asyncio.BaseTransport, "Upstream"]]]


class UpstreamError(Exception):
    """The origin could not be reached or broke the exchange: the proxy answers `status` with `reason`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    @property
    def answer(self) -> Answer:
        return Answer(self.status, self.reason)


class Upstream(TunnelEnd, FlowControl):
    """One connection to an origin server, used for one request at a time or as one end of a tunnel."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: UpstreamPool, key: tuple[str, int], max_field_size: int) -> None:
        super().__init__(loop)
        self.parser: Any = None  # aiohttp's response parser for the current kind of request (HEAD or not)
        self.pool = pool
        self.key = key
        self.max_field_size = max_field_size
        self.responses: collections.deque[Any] = collections.deque()  # (message, body) pairs, or an UpstreamError
        self.body: Any = None  # the body stream of the response being read in this exchange
        self.cut: str | None = None  # why that body ended before its framing said so (closed, reset, broken)
        self.head_bytes = 0  # bytes received while a response head is incomplete; -1 once the final head is in
        self.in_use = True
        self.exchanges = 0  # completed on this connection; more than 0 means it came from the pool
        self.answered = False  # the server sent bytes in the current exchange
        self.waiter: asyncio.Future[None] | None = None
        self.tunnel: Tunnel | None = None
        self.side = 1
        self.lost = False
        self.idle_since = 0.0
        self.method_kind: bool | None = None  # whether the current parser expects bodies (not HEAD)
        self.silence: float | None = None  # while a body streams: how long the server may send nothing
        self.deadline = Deadline(loop, self._expire)
        self.early: list[bytes] = []  # bytes from a server that spoke before it was given a use (a tunnel's greeting)

    # requests ----------------------------------------------------------------------------------

    def start(self, method: str) -> None:
        """A parser for this exchange: whether a body may follow depends on the request method."""
        with_body = method != "HEAD"
        if self.parser is None or self.method_kind is not with_body:
            self.parser = HttpResponseParser(
                self,  # type: ignore[arg-type]  # the parser's streams need only FlowControl's pause/resume/connected
                self.loop,
                2**16,
                max_line_size=self.max_field_size,
                max_field_size=self.max_field_size,
                max_headers=MAX_HEADERS,
                response_with_body=with_body,
                read_until_eof=True,
                auto_decompress=False,
            )
            self.method_kind = with_body
        self.responses.clear()
        self.body = None
        self.cut = None
        self.head_bytes = 0
        self.answered = False
        self.silence = None

    def stream_body(self, silence: float) -> None:
        """The body is being relayed: cut it if the server sends nothing for `silence` seconds while we read."""
        self.silence = silence
        if not self.reading_paused:
            self.deadline.set(silence)

    def reading_stopped(self) -> None:
        self.deadline.clear()  # we stopped reading (a slow client): the server's silence is ours

    def reading_started(self) -> None:
        if self.silence is not None:
            self.deadline.set(self.silence)

    async def next_response(self, timeout: float) -> Any:
        """(message, payload), or raises UpstreamError when the server closed or said nothing in time."""
        while not self.responses:
            if self.lost:
                raise UpstreamError(502, "the server closed the connection without a response")
            self.waiter = self.loop.create_future()
            self.deadline.set(timeout)
            try:
                await self.waiter
            except TimeoutError:
                raise UpstreamError(504, f"no response from the server within {timeout:g} s") from None
            finally:
                self.deadline.clear()
                self.waiter = None
        item = self.responses.popleft()
        if isinstance(item, UpstreamError):
            raise item
        return item

    def _expire(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(TimeoutError())
        elif self.silence is not None and self.body is not None and not self.body.is_eof():
            self.fail(f"no bytes from the server for {self.silence:g} s mid-body")

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def write(self, data: bytes) -> None:
        """Bytes for the server; dropped once it is gone (waiting for the response then says how it ended)."""
        if self.transport is not None:
            self.transport.write(data)

    # protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # TCP_NODELAY is already on (asyncio, uvloop)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.forward(1, data)
            return
        if not self.in_use:
            if data:  # an idle connection has nothing to say: drop it
                self.close()
            return
        parser = self.parser
        if parser is None:  # broken or gone; a reader draining the last body may still resume reading
            if self.method_kind is None:  # new, its CONNECT tunnel not joined yet: SSH and SMTP servers greet first
                self.early.append(data)
            return
        self.answered = True
        if self.silence is not None:
            self.deadline.set(self.silence)
        if self.head_bytes >= 0:
            self.head_bytes += len(data)
        try:
            messages, _upgraded, _tail = parser.feed_data(data)
        except Exception as error:  # noqa: BLE001 - any parse failure means a broken server
            self.fail(self.parse_failure(error))
            return
        if self.head_bytes > self.max_field_size and (
            not messages or sum(response_head_size(message) for message, _ in messages) > self.max_field_size
        ):  # the parser limits each line; the whole head gets the request head's limit too
            self.fail(f"response head from the server larger than {self.max_field_size} bytes")
            return
        if messages:
            code = messages[-1][0].code
            self.head_bytes = 0 if 100 <= code < 200 and code != 101 else -1  # after a 1xx, a final head is still to come
            self.body = messages[-1][1]
            self.responses.extend(messages)
            self._wake()

    def eof_received(self) -> bool:
        if self.tunnel is not None:
            self.tunnel.end_of_data(1)
            return True
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.deadline.cancel()
        if self.tunnel is not None:
            self.tunnel.lost(1, exc)
        parser = self.parser
        if parser is not None:
            self.parser = None
            if exc is not None and self.body is not None and not self.body.is_eof():
                self.broke("server reset mid-body")  # even a body that ends with the connection is not complete then
            else:
                try:
                    parser.feed_eof()  # ends a read-until-close body, or fails a truncated one
                except Exception:  # noqa: BLE001
                    self.broke("server closed mid-body")
        super().connection_lost(exc)
        self.pool.forget(self)
        self._wake()

    def fail(self, reason: str) -> None:
        """The server's bytes cannot be parsed any further: end the exchange with `reason` and drop the connection."""
        self.parser = None
        self.broke(reason)
        self.close()

    def parse_failure(self, error: Exception) -> str:
        """The parser's error as one line that says which part of the response was bad."""
        if self.body is not None and not self.body.is_eof():
            return f"bad response body from the server: {error_text(error)}"
        if isinstance(error, LineTooLong):
            return f"response head from the server larger than {self.max_field_size} bytes"
        return f"bad response from the server: {error_text(error)}"

    def broke(self, reason: str) -> None:
        """The server broke off: the body being read ends where it is, marked `cut` for the reader to see
        (a stream with an error would drop what it still holds); with no body under way the wait fails instead."""
        body = self.body
        if body is not None and not body.is_eof():
            self.cut = reason
            body.feed_eof()
        else:
            self.responses.append(UpstreamError(502, reason))
            self._wake()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def response_head_size(message: Any) -> int:
    """Bytes in a parsed response head, as the server sent them (give or take line-end whitespace)."""
    return 15 + len(message.reason) + sum(len(name) + len(value) + 4 for name, value in message.raw_headers) + 2


class UpstreamPool:
    """Idle keep-alive connections per (address, port), reused newest first."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, connect_timeout: float, max_field_size: int, open_connection: OpenConnection | None = None
    ) -> None:
        self.loop = loop
        self.open_connection: OpenConnection = open_connection or loop.create_connection
        self.connect_timeout = connect_timeout
        self.max_field_size = max_field_size
        self.idle: dict[tuple[str, int], list[Upstream]] = {}
        self.sweeper: asyncio.TimerHandle | None = None
        self.errors: dict[tuple[str, ...], float] = {}  # failed connects by kind (the proxy's metrics)
        self.families: EgressFamilies | None = None  # the families with an egress default route; None: all

    def _reuse(self, addresses: list[IPAddress], port: int) -> Upstream | None:
        now = self.loop.time()
        for address in addresses:
            idle = self.idle.get((str(address), port))
            while idle:
                upstream = idle.pop()
                if upstream.lost or upstream.transport is None or upstream.transport.is_closing() or now - upstream.idle_since > POOL_IDLE:
                    upstream.close()
                    continue
                upstream.in_use = True
                return upstream
        return None

    async def acquire(self, addresses: list[IPAddress], port: int, *, pooled: bool = True) -> Upstream:
        """A connection to the first address that answers; each address was already allowed by the ACL. Addresses of a
        family the router has no egress route for are passed over: they would leave from the cluster's address."""
        if self.families is not None:
            served = self.families.keep(addresses)
            if not served and addresses:
                raise UpstreamError(502, unserved_reason(addresses))
            addresses = served
        if pooled:
            reused = self._reuse(addresses, port)
            if reused is not None:
                return reused
        failures = []

        async def attempt(address: IPAddress) -> Upstream:
            key = (str(address), port)
            async with asyncio.timeout(self.connect_timeout):  # no extra task, unlike wait_for
                _transport, upstream = await self.open_connection(
                    partial(Upstream, self.loop, self, key, self.max_field_size), key[0], port
                )
            return upstream

        def failed(address: IPAddress, error: OSError | TimeoutError) -> None:
            if isinstance(error, TimeoutError):
                self.count_error("timeout")
                failures.append((504, f"{address} port {port}: no answer within {self.connect_timeout:g} s"))
            else:
                kind, reason = CONNECT_FAILURES.get(error.errno or 0, ("other", error.strerror or str(error)))
                self.count_error(kind)
                failures.append((502, f"{address} port {port}: {reason}"))

        won = await first_to_connect(addresses, attempt, failed, Upstream.close)  # both families, staggered (RFC 8305)
        if won is not None:
            return won[1]
        status = 504 if all(code == 504 for code, _ in failures) else 502
        raise UpstreamError(status, "; ".join(reason for _, reason in failures) or "no address to connect to")

    def count_error(self, kind: str) -> None:
        self.errors[(kind,)] = self.errors.get((kind,), 0) + 1

    def release(self, upstream: Upstream) -> None:
        """Back to the pool after a complete exchange; closed once unused for POOL_IDLE seconds."""
        upstream.in_use = False
        upstream.exchanges += 1
        upstream.silence = None
        upstream.deadline.clear()
        idle = self.idle.setdefault(upstream.key, [])
        if upstream.lost or len(idle) >= POOL_PER_HOST:
            upstream.close()
            return
        upstream.idle_since = self.loop.time()
        idle.append(upstream)
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(POOL_IDLE, self.sweep)

    def sweep(self) -> None:
        """Close connections idle for too long; one timer for the whole pool, not one per connection."""
        self.sweeper = None
        now = self.loop.time()
        for idle in self.idle.values():
            for upstream in [u for u in idle if now - u.idle_since > POOL_IDLE]:
                upstream.close()
        if any(self.idle.values()):
            self.sweeper = self.loop.call_later(POOL_IDLE / 2, self.sweep)

    def forget(self, upstream: Upstream) -> None:
        idle = self.idle.get(upstream.key)
        if idle and upstream in idle:
            idle.remove(upstream)

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        for idle in self.idle.values():
            for upstream in list(idle):
                upstream.close()
        self.idle.clear()
