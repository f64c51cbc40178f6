"""One line per request or tunnel on stdout, in key=value form that both people and log shippers read.

Lines are buffered and flushed every FLUSH_EVERY seconds (and at exit), not one write per line: at
thousands of requests a second a write(2) per line would cost more than the request.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from typing import TextIO

FLUSH_EVERY = 0.25


NEEDS_QUOTES = re.compile(r"[^!#-<>-\[\]-~]")  # anything but printable ASCII without space, quote, = and backslash


def quote(text: str) -> str:
    if text and not NEEDS_QUOTES.search(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


class AccessLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.lines: list[str] = []
        self._second = -1
        self._stamp = ""
        self._flush_handle: asyncio.TimerHandle | None = None

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def write(self, client: str, method: str, target: str, status: int, bytes_in: int, bytes_out: int, seconds: float, rule: str) -> None:
        self.lines.append(
            f"{self._timestamp()} client={client} method={method} target={quote(target)} status={status} "
            f"in={bytes_in} out={bytes_out} ms={seconds * 1000:.1f} rule={quote(rule)}\n"
        )
        if self._flush_handle is None:
            try:
                self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_EVERY, self.flush)
            except RuntimeError:  # no loop: write at once
                self.flush()

    def flush(self) -> None:
        self._flush_handle = None
        if self.lines:
            self.stream.write("".join(self.lines))
            self.lines.clear()
            self.stream.flush()
