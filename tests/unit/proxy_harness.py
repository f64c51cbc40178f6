"""One HTTP proxy worker driven through fake transports: bytes in, bytes out, the clock moved by hand.

No socket, no root, no real time: `Peer.send()` is the client or the server speaking, `Peer.take()` is
what the proxy wrote to it, and `Harness.advance()` moves the event loop's clock so every timer the
proxy set (header, idle, connect timeouts) fires exactly when the test says so (as uvicorn's tests do).
"""

from __future__ import annotations

import asyncio
import errno
import io
import socket
from collections.abc import Callable
from typing import Any

from egress_router.config.http_settings import load_http_settings
from egress_router.http_proxy.access_log import AccessLog
from egress_router.http_proxy.server import ClientConnection, Proxy
from egress_router.http_proxy.upstream import Upstream


class ManualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when the test moves it."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def time(self) -> float:
        return self.now


class Peer(asyncio.Transport):
    """The proxy's transport to one peer, and the test's handle on that peer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, address: tuple[str, int]) -> None:
        super().__init__()
        self.loop = loop
        self.protocol = protocol
        self.address = address
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.reading = True
        self.lost = False

    # what the proxy calls ----------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed:
            self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self._end(None)

    def abort(self) -> None:
        self.aborted = True
        self._end(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.address}.get(name, default)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def _end(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self._lose, exc)

    def _lose(self, exc: Exception | None) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost(exc)

    # what the test calls -----------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """The peer speaks."""
        self.protocol.data_received(data)

    def send_eof(self) -> None:
        """The peer half-closes."""
        if not self.protocol.eof_received():
            self.close()

    def hang_up(self) -> None:
        """The peer closes its side entirely."""
        self.closed = True
        self._lose(None)

    def reset(self) -> None:
        self.closed = True
        self._lose(ConnectionResetError("reset by peer"))

    def take(self) -> bytes:
        """What the proxy wrote to this peer since the last take."""
        data = bytes(self.written)
        self.written.clear()
        return data

    def fill(self) -> None:
        """The peer stops reading: the transport's buffer fills up."""
        self.protocol.pause_writing()

    def drain(self) -> None:
        self.protocol.resume_writing()


class Harness:
    """A proxy worker with a list, fake DNS names and fake origin servers (any address accepts unless refused)."""

    def __init__(self, destination: str = "!*.blocked.test\n127.0.0.1\n*.test\n203.0.113.0/24", **settings: str) -> None:
        self.loop = ManualClockLoop()
        asyncio.set_event_loop(self.loop)
        self.log = io.StringIO()
        options = {"workers": "1", "connect_ports": "443,8000", **settings}
        self.settings = load_http_settings(destination=destination, **options)
        self.names: dict[str, list[str]] = {"origin.test": ["203.0.113.10"]}
        self.refused: set[tuple[str, int]] = set()
        self.silent: set[tuple[str, int]] = set()
        self.servers: list[Peer] = []
        self.proxy = Proxy(self.loop, self.settings, AccessLog(self.log), lookup=self.lookup, open_connection=self.open)
        self._ports = iter(range(40000, 60000))

    async def lookup(self, host: str, port: int) -> list[Any]:
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in self.names[host]]

    async def open(self, factory: Callable[[], Upstream], host: str, port: int) -> tuple[asyncio.BaseTransport, Upstream]:
        if (host, port) in self.silent:
            await asyncio.sleep(3600)  # never answers: only the connect timeout ends this
        if (host, port) in self.refused:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        upstream = factory()
        server = Peer(self.loop, upstream, (host, port))
        upstream.connection_made(server)
        self.servers.append(server)
        return server, upstream

    def client(self, address: str = "10.128.0.7") -> Peer:
        connection = self.proxy.protocol()
        client = Peer(self.loop, connection, (address, next(self._ports)))
        connection.connection_made(client)
        return client

    def ask(self, raw: bytes) -> tuple[Peer, bytes]:
        """A new client sends `raw`; what the proxy answered once everything ready has run."""
        client = self.client()
        client.send(raw)
        self.settle()
        return client, client.take()

    def connection(self, client: Peer) -> ClientConnection:
        assert isinstance(client.protocol, ClientConnection)
        return client.protocol

    def settle(self) -> None:
        """Run everything that is ready, then stop (the clock does not move)."""

        async def spin() -> None:
            for _ in range(64):
                await asyncio.sleep(0)

        self.loop.run_until_complete(spin())

    def advance(self, seconds: float) -> None:
        self.loop.now += seconds
        self.settle()

    def server(self, index: int = -1) -> Peer:
        self.settle()
        return self.servers[index]

    def log_lines(self) -> list[str]:
        self.proxy.access_log.flush()
        return self.log.getvalue().splitlines()

    def close(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.settle()
        self.proxy.pool.close()
        self.loop.close()
        asyncio.set_event_loop(None)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.") else 0


def ok(body: bytes = b"hello", headers: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body
