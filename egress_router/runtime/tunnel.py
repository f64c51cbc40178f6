"""Byte pumping between two connected transports: the HTTP proxy's CONNECT tunnels, the DNS proxy's copy relay.

Both sides' protocols hand their events to one Tunnel, which writes each side's bytes to the other,
pauses reading a side whose peer cannot keep up, passes half-closes on, and ends on idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable


class IdleWatch:
    """Ends a relay that moved no byte for `timeout`, judged from its byte counters every quarter timeout:
    no clock is read per chunk on the hot path."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sent: list[int], timeout: float, on_idle: Callable[[str], None]) -> None:
        self.loop = loop
        self.sent = sent
        self.timeout = timeout
        self.on_idle = on_idle
        self._step = timeout / 4
        self._quiet = 0.0
        self._last = (0, 0)
        self._timer = loop.call_later(self._step, self._check)

    def _check(self) -> None:
        counters = (self.sent[0], self.sent[1])
        self._quiet = self._quiet + self._step if counters == self._last else 0.0
        self._last = counters
        if self._quiet >= self.timeout:
            self.on_idle("idle timeout")
        else:
            self._timer = self.loop.call_later(self._step, self._check)

    def cancel(self) -> None:
        self._timer.cancel()


class Tunnel:
    """Side 0 and side 1; `sent[i]` counts bytes that arrived on side i and were written to the other."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sides: tuple[asyncio.Transport, asyncio.Transport], idle_timeout: float) -> None:
        self.loop = loop
        self.sides = sides
        self.sent = [0, 0]
        self.eof = [False, False]
        self.closed: asyncio.Future[str] = loop.create_future()
        self.idle = IdleWatch(loop, self.sent, idle_timeout, self.close)

    def forward(self, side: int, data: bytes) -> None:
        self.sent[side] += len(data)
        peer = self.sides[1 - side]
        if not peer.is_closing():
            peer.write(data)

    def end_of_data(self, side: int) -> None:
        """A half-close: tell the peer no more bytes come; close when both directions are done."""
        self.eof[side] = True
        peer = self.sides[1 - side]
        if all(self.eof):
            self.close("both sides closed")
        elif not peer.is_closing() and peer.can_write_eof():
            peer.write_eof()

    def peer_full(self, side: int) -> None:
        """Side `side` cannot take more bytes for now: stop reading the other side."""
        other = self.sides[1 - side]
        if not other.is_closing():
            other.pause_reading()

    def peer_drained(self, side: int) -> None:
        other = self.sides[1 - side]
        if not other.is_closing():
            other.resume_reading()

    def lost(self, side: int, exc: BaseException | None) -> None:
        if exc is not None:
            self.close(f"{'client' if side == 0 else 'server'} reset", reset=True)
        else:
            self.close("client closed" if side == 0 else "server closed")

    def close(self, why: str, *, reset: bool = False) -> None:
        """Close both sides: gracefully (buffered bytes are flushed), or with a reset passed on as a reset."""
        if self.closed.done():
            return
        self.idle.cancel()
        for transport in self.sides:
            if reset:
                abort_with_reset(transport)
            else:
                transport.close()
        self.closed.set_result(why)


def abort_with_reset(transport: asyncio.Transport) -> None:
    """Close so that the peer sees a TCP reset, as the other side of the relay did."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class TunnelEnd:
    """Mixin for a protocol that may become side `side` of a Tunnel: write pressure pauses the other side."""

    tunnel: Tunnel | None = None
    side = 0

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        if self.tunnel is not None:
            self.tunnel.peer_full(self.side)

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        if self.tunnel is not None:
            self.tunnel.peer_drained(self.side)
