"""One listener per destination: each client connection is relayed to an address of the destination.

Sockets are accepted and connected directly (no asyncio transports), then handed to the zero-copy
splice pump; where the kernel has no splice for them, to the transport-based Tunnel instead.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from egress_router import splice
from egress_router.config.dns_settings import DnsProxySettings
from egress_router.dns_proxy.names import Destination
from egress_router.relay import Tunnel, TunnelEnd

log = logging.getLogger(__name__)


class _Side(TunnelEnd, asyncio.Protocol):
    """A socket wrapped in a transport for the Tunnel fallback; holds what arrives before the Tunnel exists."""

    def __init__(self, side: int) -> None:
        self.side = side
        self.early: list[bytes] = []
        self.early_eof = False
        self.lost_early: tuple[BaseException | None] | None = None

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


class Listener:
    """Connections to one local port; `destination` may be swapped when the list file changes."""

    def __init__(self, sock: socket.socket, destination: Destination, settings: DnsProxySettings, active: set[asyncio.Task[None]]) -> None:
        self.sock = sock
        self.destination = destination
        self.settings = settings
        self.active = active
        self.task: asyncio.Task[None] | None = None
        self.use_splice = settings.splice and splice.available()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.accept())

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.sock.close()

    async def accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, peer = await loop.sock_accept(self.sock)
            if len(self.active) >= self.settings.max_connections:
                log.warning("port %d: connection limit (%d) reached, closing a new connection", self.destination.target.local_port, self.settings.max_connections)
                client.close()
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self.relay(client, peer))
            self.active.add(task)
            task.add_done_callback(self.active.discard)

    async def relay(self, client: socket.socket, peer: tuple[str, int]) -> None:
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
                client.close()
                return
        server = None
        chosen = "-"
        failures = []
        for address in destination.order():
            candidate = socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
            candidate.setblocking(False)
            try:
                async with asyncio.timeout(self.settings.connect_timeout):
                    await loop.sock_connect(candidate, (str(address), target.remote_port))
            except (OSError, TimeoutError) as error:
                candidate.close()
                destination.failed(address)
                failures.append(f"{address}: {'timeout' if isinstance(error, TimeoutError) else error.strerror or error}")
                continue
            except asyncio.CancelledError:
                candidate.close()
                client.close()
                raise
            candidate.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server, chosen = candidate, str(address)
            break
        if server is None:
            log.warning("port %d: no address of %s answered (%s)", target.local_port, target.host, "; ".join(failures) or "no address")
            client.close()
            return
        if self.use_splice:
            pump = splice.SplicePump(loop, client, server, self.settings.idle_timeout)
            pump.start()
            closed, counts = pump.finished, pump.sent
        else:
            client_transport, client_side = await loop.connect_accepted_socket(lambda: _Side(0), client)
            server_transport, server_side = await loop.create_connection(lambda: _Side(1), sock=server)
            tunnel = Tunnel(loop, (client_transport, server_transport), self.settings.idle_timeout)  # type: ignore[arg-type]
            client_side.join(tunnel)
            server_side.join(tunnel)
            closed, counts = tunnel.closed, tunnel.sent
        try:
            why = await closed
        except asyncio.CancelledError:  # the drain deadline after SIGTERM
            if self.use_splice:
                pump.finish("drain deadline")
            else:
                tunnel.close("drain deadline")
            raise
        self._log(peer, chosen, counts[0], counts[1], started, why)

    def _log(self, peer: tuple[str, int] | None, address: str, sent: int, received: int, started: float, why: str) -> None:
        if not self.settings.debug:
            return
        client = f"{peer[0].removeprefix('::ffff:')}:{peer[1]}" if peer else "-"
        target = self.destination.target
        log.info(
            "client=%s port=%d target=%s address=%s in=%d out=%d ms=%.1f closed=%s",
            client, target.local_port, target.describe, address, sent, received, (time.monotonic() - started) * 1000, why.replace(" ", "_"),
        )
