"""Small typed values shared by the long-running commands: durations, counts, port lists.

Each parser takes a given value (stripped, not blank); what unset means is the option's default (config/options.py).
"""

from __future__ import annotations

from egress_router.config.errors import ConfigError
from egress_router.config.lines import PORT_REASON, parse_port

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, variable: str, allow_zero: bool = False) -> float:
    """Seconds; `30`, `30s`, `500ms`, `5m`, `1h`. Zero is refused (a timeout must end) unless `allow_zero` (a delay may be none)."""
    value = text.lower()
    unit = next((u for u in ("ms", "s", "m", "h") if value.endswith(u)), "")
    number = value[: len(value) - len(unit)] if unit else value
    try:
        seconds = float(number) * UNITS[unit or "s"]
    except ValueError:
        raise ConfigError.single(variable, "not a duration (use e.g. 30, 30s, 500ms, 5m, 1h)", text) from None
    if allow_zero and seconds == 0:
        return 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError.single(variable, "must be zero or more" if allow_zero else "must be more than zero", text)
    return seconds


def render_duration(seconds: float) -> str:
    """A duration as a user writes it, in the largest unit that keeps it whole: 10s, 5m, 1h, 500ms."""
    if seconds == 0:
        return "0s"
    for unit in ("h", "m", "s", "ms"):
        count = round(seconds / UNITS[unit])
        if count >= 1 and count * UNITS[unit] == seconds:  # exactly what parse_duration makes of it
            return f"{count}{unit}"
    return f"{seconds!r}s"


def parse_count(text: str, variable: str, minimum: int, maximum: int) -> int:
    # the length first: int() refuses more than 4300 digits with a ValueError of its own
    if not text.isascii() or not text.isdigit() or len(text.lstrip("0")) > len(str(maximum)) or not minimum <= int(text) <= maximum:
        raise ConfigError.single(variable, f"must be a whole number from {minimum} to {maximum}", text)
    return int(text)


def parse_port_value(text: str, variable: str) -> int:
    port = parse_port(text)
    if port is None:
        raise ConfigError.single(variable, PORT_REASON.format(port=text), text)
    return port


def parse_port_list(text: str, variable: str) -> frozenset[int]:
    """Ports separated by commas or spaces."""
    ports = set()
    for item in text.replace(",", " ").split():
        port = parse_port(item)
        if port is None:
            raise ConfigError.single(variable, PORT_REASON.format(port=item), text)
        ports.add(port)
    return frozenset(ports)
