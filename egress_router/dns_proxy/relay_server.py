"""One listener per destination: each client connection is relayed to an address of the destination."""

from __future__ import annotations

import asyncio
import logging
import time

from egress_router.config.dns_settings import DnsProxySettings
from egress_router.dns_proxy.names import Destination
from egress_router.relay import Tunnel, TunnelEnd

log = logging.getLogger(__name__)
#: Bytes a client may send before its server connection is up; reading pauses beyond that.
EARLY_LIMIT = 256 * 1024


class Side(TunnelEnd, asyncio.Protocol):
    """Either end of a relayed connection; holds bytes that arrive before the tunnel exists."""

    def __init__(self, side: int) -> None:
        self.side = side
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []
        self.early_size = 0
        self.early_eof = False
        loop = asyncio.get_running_loop()
        self.made: asyncio.Future[None] = loop.create_future()
        self.gone: asyncio.Future[BaseException | None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.forward(self.side, data)
            return
        self.early.append(data)
        self.early_size += len(data)
        if self.early_size > EARLY_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.tunnel is not None:
            self.tunnel.end_of_data(self.side)
        else:
            self.early_eof = True
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.tunnel is not None:
            self.tunnel.lost(self.side, exc)
        if not self.gone.done():
            self.gone.set_result(exc)

    def join(self, tunnel: Tunnel) -> None:
        """Become part of `tunnel` and hand over what arrived early."""
        self.tunnel = tunnel
        for data in self.early:
            tunnel.forward(self.side, data)
        self.early.clear()
        if self.transport is not None and self.early_size > EARLY_LIMIT:
            self.transport.resume_reading()
        if self.early_eof:
            tunnel.end_of_data(self.side)


class Listener:
    """Connections to one local port."""

    def __init__(self, destination: Destination, settings: DnsProxySettings, active: set[asyncio.Task[None]]) -> None:
        self.destination = destination
        self.settings = settings
        self.active = active

    def protocol(self) -> Side:
        client = Side(0)
        if len(self.active) >= self.settings.max_connections:
            asyncio.get_running_loop().call_soon(self._refuse, client)
            return client
        task = asyncio.get_running_loop().create_task(self.relay(client))
        self.active.add(task)
        task.add_done_callback(self.active.discard)
        return client

    def _refuse(self, client: Side) -> None:
        log.warning("port %d: connection limit (%d) reached, closing a new connection", self.destination.target.local_port, self.settings.max_connections)
        if client.transport is not None:
            client.transport.close()

    async def relay(self, client: Side) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        await client.made
        assert client.transport is not None
        peer = client.transport.get_extra_info("peername")
        target = self.destination.target
        if not self.destination.ready.is_set():
            try:
                await asyncio.wait_for(self.destination.ready.wait(), self.settings.connect_timeout)
            except TimeoutError:
                self._log(peer, "-", 0, 0, started, f"{target.host} does not resolve (yet)")
                client.transport.close()
                return
        server: Side | None = None
        chosen = "-"
        failures = []
        for address in self.destination.order():
            try:
                async with asyncio.timeout(self.settings.connect_timeout):  # no extra task, unlike wait_for
                    _, server = await loop.create_connection(lambda: Side(1), str(address), target.remote_port)
                chosen = str(address)
                break
            except (OSError, TimeoutError) as error:
                self.destination.failed(address)
                failures.append(f"{address}: {'timeout' if isinstance(error, TimeoutError) else error.strerror or error}")
            if client.gone.done():
                return
        if server is None or server.transport is None:
            log.warning("port %d: no address of %s answered (%s)", target.local_port, target.host, "; ".join(failures) or "no address")
            client.transport.close()
            return
        if client.gone.done():
            server.transport.close()
            return
        tunnel = Tunnel(loop, (client.transport, server.transport), self.settings.idle_timeout)
        client.join(tunnel)
        server.join(tunnel)
        try:
            why = await tunnel.closed
        except asyncio.CancelledError:  # the drain deadline after SIGTERM
            tunnel.close("drain deadline")
            raise
        self._log(peer, chosen, tunnel.sent[0], tunnel.sent[1], started, why)

    def _log(self, peer: tuple[str, int] | None, address: str, sent: int, received: int, started: float, why: str) -> None:
        if not self.settings.debug:
            return
        client = f"{peer[0].removeprefix('::ffff:')}:{peer[1]}" if peer else "-"
        target = self.destination.target
        log.info(
            "client=%s port=%d target=%s address=%s in=%d out=%d ms=%.1f closed=%s",
            client, target.local_port, target.describe, address, sent, received, (time.monotonic() - started) * 1000, why.replace(" ", "_"),
        )
