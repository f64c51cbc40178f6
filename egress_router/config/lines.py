"""The line format shared by every list variable: comments, blank lines, spaces or tabs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Line:
    """A meaningful line: its 1-based number, its text without comment, and its fields."""

    number: int
    text: str
    fields: tuple[str, ...]


def meaningful_lines(value: str) -> Iterator[Line]:
    """Yield the lines that carry a rule; `#` starts a comment anywhere on a line."""
    for number, raw in enumerate(value.splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if text:
            yield Line(number, text, tuple(text.split()))


def parse_port(text: str) -> int | None:
    """A TCP/UDP/SCTP port, 1-65535, plain decimal digits only; None when invalid."""
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


PORT_REASON = "invalid port {port} (must be 1-65535)"


class BadLine(ValueError):
    """Why one line is wrong; the list parser adds the variable, line number and text."""


def port_or_bad(text: str) -> int:
    port = parse_port(text)
    if port is None:
        raise BadLine(PORT_REASON.format(port=text))
    return port
