"""A lazily re-armed timer: moving a deadline costs an assignment, not a new event-loop timer.

Connections move their deadline on every request; creating and cancelling a timer each time costs
more than the request's own bookkeeping. Here the loop timer is only re-armed when it fires early.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self.loop = loop
        self.callback = callback
        self.when: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for = 0.0

    def set(self, delay: float) -> None:
        self.when = self.loop.time() + delay
        if self._handle is not None and self._armed_for > self.when:  # the timer would fire too late
            self._handle.cancel()
            self._handle = None
        if self._handle is None:
            self._armed_for = self.when
            self._handle = self.loop.call_at(self.when, self._fire)

    def clear(self) -> None:
        """No deadline for now (the timer, if any, finds nothing to do and stops)."""
        self.when = None

    def cancel(self) -> None:
        self.when = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        if self.when is None:
            return
        if self.loop.time() >= self.when:
            self.when = None
            self.callback()
        else:
            self._armed_for = self.when
            self._handle = self.loop.call_at(self.when, self._fire)
