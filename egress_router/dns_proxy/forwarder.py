"""One forwarder per destination: each client connection is relayed to an address of the destination.

uvloop accepts; then either the socket is taken over by the zero-copy splice pump, or (EGRESS_DNS_PROXY_SPLICE
off, or no splice in this kernel) both sides stay asyncio transports joined by the Tunnel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

from egress_router.config.addresses import IPAddress
from egress_router.config.dns_settings import DnsProxySettings
from egress_router.dns_proxy import metrics, splice
from egress_router.dns_proxy.names import FollowedName
from egress_router.observe.stats import Stats, count
from egress_router.runtime.egress_families import unserved_reason
from egress_router.runtime.happy_eyeballs import first_to_connect
from egress_router.runtime.tunnel import Tunnel, TunnelEnd

log = logging.getLogger(__name__)


class _Side(TunnelEnd, asyncio.Protocol):
    """A socket wrapped in a transport for the Tunnel fallback; holds what arrives before the Tunnel exists."""

    def __init__(self, side: int) -> None:
        self.side = side
        self.transport: asyncio.Transport | None = None
        self.on_made: Callable[[asyncio.Transport], None] | None = None
        self.early: list[bytes] = []
        self.early_eof = False
        self.lost_early: tuple[BaseException | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.on_made is not None:
            self.on_made(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.forward(self.side, data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool:
        if self.tunnel is not None:
            self.tunnel.end_of_data(self.side)
        else:
            self.early_eof = True
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.tunnel is not None:
            self.tunnel.lost(self.side, exc)
        else:
            self.lost_early = (exc,)

    def join(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        for data in self.early:
            tunnel.forward(self.side, data)
        self.early.clear()
        if self.early_eof:
            tunnel.end_of_data(self.side)
        if self.lost_early is not None:
            tunnel.lost(self.side, self.lost_early[0])


class _Handoff(asyncio.Protocol):
    """Takes an accepted socket away from asyncio for the splice pump (uvloop still does the fast accept)."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # type: ignore[attr-defined]  # no byte may be read into asyncio's buffers
        fd = os.dup(transport.get_extra_info("socket").fileno())
        peer = transport.get_extra_info("peername")
        transport.abort()  # type: ignore[attr-defined]  # closes asyncio's descriptor only; the connection lives on in ours
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        self.forwarder.spawn(sock, peer)


class Forwarder:
    """Connections to one local port; `destination` may be swapped when the list file changes."""

    def __init__(self, destination: FollowedName, settings: DnsProxySettings, active: set[asyncio.Task[None]], stats: Stats) -> None:
        self.destination = destination
        self.settings = settings
        self.active = active
        self.port = str(destination.target.local_port)
        self.open = 0  # relayed connections open now (a gauge)
        self.connections = stats.counter(metrics.CONNECTIONS)
        self.bytes = stats.relayed(metrics.BYTES)
        self.connect_failures = stats.counter(metrics.CONNECT_FAILURES)
        self.use_splice = settings.splice and splice.available()

    def protocol(self) -> asyncio.Protocol:
        if self.use_splice:
            return _Handoff(self)
        client = _Side(0)
        client.on_made = lambda transport: self.spawn(client, transport.get_extra_info("peername"))
        return client

    def spawn(self, client: socket.socket | _Side, peer: tuple[str, int] | None) -> None:
        if len(self.active) >= self.settings.max_connections:
            log.warning(
                "port %d: connection limit (%d) reached, closing a new connection",
                self.destination.target.local_port,
                self.settings.max_connections,
            )
            _close(client)
            return
        count(self.connections, self.port)
        task = asyncio.get_running_loop().create_task(self.relay(client, peer))
        self.active.add(task)
        task.add_done_callback(self.active.discard)

    async def relay(self, client: socket.socket | _Side, peer: tuple[str, int] | None) -> None:
        self.open += 1
        try:
            await self._relay(client, peer)
        finally:
            self.open -= 1

    async def _relay(self, client: socket.socket | _Side, peer: tuple[str, int] | None) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        destination = self.destination
        target = destination.target
        if not destination.ready.is_set():
            try:
                async with asyncio.timeout(self.settings.connect_timeout):
                    await destination.ready.wait()
            except TimeoutError:
                self._log(peer, "-", 0, 0, started, f"{target.host} does not resolve (yet)")
                _close(client)
                return
        failures = []

        async def attempt(address: IPAddress) -> socket.socket | _Side:
            async with asyncio.timeout(self.settings.connect_timeout):
                return await self._connect(loop, client, str(address), target.remote_port)

        def failed(address: IPAddress, error: OSError | TimeoutError) -> None:
            destination.failed(address)
            count(self.connect_failures, str(address))
            failures.append(f"{address}: {'timeout' if isinstance(error, TimeoutError) else error.strerror or error}")

        try:
            won = await first_to_connect(destination.order(), attempt, failed, _close, outpaced=destination.failed)  # RFC 8305
        except asyncio.CancelledError:
            _close(client)
            raise
        if won is None:
            why = "; ".join(failures) or (unserved_reason(destination.addresses) if destination.addresses else "no address")
            log.warning("port %d: no address of %s answered (%s)", target.local_port, target.host, why)
            _close(client)
            return
        address, server = won
        if isinstance(client, socket.socket):
            assert isinstance(server, socket.socket)
            pump = splice.SplicePump(loop, client, server, self.settings.idle_timeout)
            pump.start()
            closed, counts, finish = pump.finished, pump.sent, pump.finish
        else:
            assert isinstance(server, _Side) and client.transport is not None and server.transport is not None
            tunnel = Tunnel(loop, (client.transport, server.transport), self.settings.idle_timeout)
            client.join(tunnel)
            server.join(tunnel)
            closed, counts, finish = tunnel.closed, tunnel.sent, tunnel.close
        self.bytes.start((self.port,), counts)
        try:
            why = await closed
        except asyncio.CancelledError:  # the drain deadline after SIGTERM
            finish("drain deadline")
            raise
        finally:
            self.bytes.end(counts)
        self._log(peer, str(address), counts[0], counts[1], started, why)

    @staticmethod
    async def _connect(loop: asyncio.AbstractEventLoop, client: socket.socket | _Side, host: str, port: int) -> socket.socket | _Side:
        """A raw socket for the splice pump, or a transport-backed side for the Tunnel."""
        if isinstance(client, _Side):
            _, side = await loop.create_connection(lambda: _Side(1), host, port)
            return side
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _log(self, peer: tuple[str, int] | None, address: str, sent: int, received: int, started: float, why: str) -> None:
        if not self.settings.debug:
            return
        host = peer[0].removeprefix("::ffff:") if peer else "-"
        client = (f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}") if peer else "-"
        target = self.destination.target
        log.info(
            "client=%s port=%d target=%s address=%s in=%d out=%d ms=%.1f closed=%s",
            client,
            target.local_port,
            target.describe,
            address,
            sent,
            received,
            (time.monotonic() - started) * 1000,
            why.replace(" ", "_"),
        )


def _close(client: socket.socket | _Side) -> None:
    if isinstance(client, socket.socket):
        client.close()
    elif client.transport is not None:
        client.transport.close()
