"""Back-pressure both ways for a connection whose bytes go through aiohttp's C parser.

Writing: the transport tells us when its buffer is full (`pause_writing`); a writer awaits `drained()`.
Reading: a body stream that holds more than its limit asks us to `pause_reading` (aiohttp's
StreamReader calls exactly `pause_reading`, `resume_reading(resume_parser=...)` and `connected` on its
protocol, nothing else). The parser itself is never paused: it has at most one read's worth to hand on.
"""

from __future__ import annotations

import asyncio

#: What pause_reading()/resume_reading() raise on a transport that is closing or has no flow control.
NO_FLOW_CONTROL = (AttributeError, NotImplementedError, RuntimeError)


class FlowControl(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False
        self.reading_held = False  # held by the connection itself: body streams' resume calls do not undo it
        self.writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    @property
    def connected(self) -> bool:
        return self.transport is not None

    # reading -------------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            try:  # noqa: SIM105 - hot path: try costs less than contextlib.suppress()
                self.transport.pause_reading()
            except NO_FLOW_CONTROL:
                pass
            self.reading_stopped()

    def resume_reading(self, resume_parser: bool = True) -> None:
        if self.reading_paused and not self.reading_held and self.transport is not None:
            self.reading_paused = False
            try:  # noqa: SIM105 - hot path: try costs less than contextlib.suppress()
                self.transport.resume_reading()
            except NO_FLOW_CONTROL:
                pass
            self.reading_started()

    def hold_reading(self) -> None:
        """Stop reading until `release_reading()`, whatever the body streams ask meanwhile."""
        self.reading_held = True
        self.pause_reading()

    def release_reading(self) -> None:
        if self.reading_held:
            self.reading_held = False
            self.resume_reading()

    def reading_stopped(self) -> None:
        """Called when reading really pauses (aiohttp's streams call pause/resume on every read, paused or not)."""

    def reading_started(self) -> None:
        """Called when reading really resumes."""

    # writing -------------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer(None)

    async def drained(self) -> None:
        """Returns once the transport takes more bytes; raises ConnectionResetError once it is gone."""
        if self.transport is None:
            raise ConnectionResetError("connection lost")
        if not self.writing_paused:
            return
        if self._drain_waiter is None:
            self._drain_waiter = self.loop.create_future()
        await self._drain_waiter

    def _wake_writer(self, error: Exception | None) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._wake_writer(ConnectionResetError("connection lost"))
