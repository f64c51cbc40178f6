"""One line per request or tunnel on stdout, in key=value form that both people and log shippers read."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def quote(text: str) -> str:
    if text and not any(ch in text for ch in ' "=\\') and text.isprintable():
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


class AccessLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def write(self, client: str, method: str, target: str, status: int, bytes_in: int, bytes_out: int, seconds: float, rule: str) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        self.stream.write(
            f"{stamp} client={client} method={method} target={quote(target)} status={status} "
            f"in={bytes_in} out={bytes_out} ms={seconds * 1000:.1f} rule={quote(rule)}\n"
        )
        self.stream.flush()
