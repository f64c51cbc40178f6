"""Small typed values shared by the long-running commands: durations, counts, port lists."""

from __future__ import annotations

from egress_router.config.errors import ConfigError
from egress_router.config.lines import PORT_REASON, parse_port

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None, variable: str, default: float) -> float:
    """Seconds; `30`, `30s`, `500ms`, `5m`, `1h`. Zero is refused: a timeout must end."""
    if text is None or not text.strip():
        return default
    value = text.strip().lower()
    unit = next((u for u in ("ms", "s", "m", "h") if value.endswith(u)), "")
    number = value[: len(value) - len(unit)] if unit else value
    try:
        seconds = float(number) * UNITS[unit or "s"]
    except ValueError:
        raise ConfigError.single(variable, "not a duration (use e.g. 30, 30s, 500ms, 5m, 1h)", text.strip()) from None
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError.single(variable, "must be more than zero", text.strip())
    return seconds


def parse_count(text: str | None, variable: str, default: int, minimum: int = 1, maximum: int = 10_000_000) -> int:
    if text is None or not text.strip():
        return default
    value = text.strip()
    if not value.isascii() or not value.isdigit() or not minimum <= int(value) <= maximum:
        raise ConfigError.single(variable, f"must be a whole number from {minimum} to {maximum}", value)
    return int(value)


def parse_port_value(text: str | None, variable: str, default: int) -> int:
    if text is None or not text.strip():
        return default
    port = parse_port(text.strip())
    if port is None:
        raise ConfigError.single(variable, PORT_REASON.format(port=text.strip()), text.strip())
    return port


def parse_port_list(text: str | None, variable: str, default: tuple[int, ...]) -> frozenset[int]:
    """Ports separated by commas or spaces."""
    if text is None or not text.strip():
        return frozenset(default)
    ports = set()
    for item in text.replace(",", " ").split():
        port = parse_port(item)
        if port is None:
            raise ConfigError.single(variable, PORT_REASON.format(port=item), text.strip())
        ports.add(port)
    return frozenset(ports)
