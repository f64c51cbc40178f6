"""The kinds of option a command takes; each command's table of them sits next to its loader (config/*_settings.py).

An option is written once: its name (the loader's keyword, the settings field, and `--name-with-dashes`), its
environment variable, its help sentence, its default and its bounds. The loaders parse with it, and cli.py builds
each click option and the "(default ...)" of its help from it, so the help always says what the loader does.
Pure: no click here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from egress_router.config.errors import Collector, ConfigError
from egress_router.config.values import parse_count, parse_duration, parse_port_list, parse_port_value, render_duration

T = TypeVar("T")


@dataclass(frozen=True)
class Option:
    """Text the loader parses itself (an address, a list), with no default to show."""

    name: str
    variable: str
    help: str  # one sentence without its final period; the default is added where it is shown

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def shown_default(self) -> str | None:
        """The default as a user writes it, for --help; None when there is none to show."""
        return None


@dataclass(frozen=True)
class Computed(Generic[T]):
    """A default that depends on the machine, and the words --help uses for it."""

    compute: Callable[[], T]
    words: str


@dataclass(frozen=True, kw_only=True)
class Valued(Option, Generic[T]):
    """An option with a default; unset or blank means the default."""

    default: T | Computed[T]

    def parse(self, text: str | None) -> T:
        if text is None or not text.strip():
            return self.default_value()
        return self.convert(text.strip())

    def default_value(self) -> T:
        return self.default.compute() if isinstance(self.default, Computed) else self.default

    def convert(self, text: str) -> T:
        """The value of a given (stripped, non-blank) text, or a ConfigError naming the variable."""
        raise NotImplementedError

    def render(self, value: T) -> str:
        """`value` as a user writes it: convert(render(v)) == v."""
        return str(value)

    @property
    def shown_default(self) -> str | None:
        return self.default.words if isinstance(self.default, Computed) else self.render(self.default)


@dataclass(frozen=True, kw_only=True)
class Duration(Valued[float]):
    """Seconds, written 30, 30s, 500ms, 5m or 1h; 0 only where it is `allow_zero` (a delay, not a timeout)."""

    allow_zero: bool = False

    def convert(self, text: str) -> float:
        return parse_duration(text, self.variable, self.allow_zero)

    def render(self, value: float) -> str:
        return render_duration(value)


@dataclass(frozen=True, kw_only=True)
class Count(Valued[int]):
    minimum: int = 1
    maximum: int = 10_000_000

    def convert(self, text: str) -> int:
        return parse_count(text, self.variable, self.minimum, self.maximum)


@dataclass(frozen=True, kw_only=True)
class Port(Valued[int]):
    def convert(self, text: str) -> int:
        return parse_port_value(text, self.variable)


@dataclass(frozen=True, kw_only=True)
class PortOrOff(Valued[int | None]):
    """A port, or `off` (None): something that may be switched off."""

    def convert(self, text: str) -> int | None:
        return None if text.lower() == "off" else parse_port_value(text, self.variable)

    def render(self, value: int | None) -> str:
        return "off" if value is None else str(value)


@dataclass(frozen=True, kw_only=True)
class Ports(Valued[frozenset[int]]):
    """Ports separated by commas or spaces."""

    def convert(self, text: str) -> frozenset[int]:
        return parse_port_list(text, self.variable)

    def render(self, value: frozenset[int]) -> str:
        return ",".join(str(port) for port in sorted(value))


@dataclass(frozen=True, kw_only=True)
class Text(Valued[str]):
    """Free text with a default (an interface name, a path); the loader checks what it must be."""

    def convert(self, text: str) -> str:
        return text


@dataclass(frozen=True, kw_only=True)
class Choice(Valued[str]):
    """One of a few words; `what` names them in the error ("unknown {what} (must be one of ...)")."""

    choices: tuple[str, ...]
    what: str
    fold_case: bool = False

    def convert(self, text: str) -> str:
        value = text.lower() if self.fold_case else text
        if value not in self.choices:
            raise ConfigError.single(self.variable, f"unknown {self.what} (must be one of {', '.join(self.choices)})", value)
        return value


@dataclass(frozen=True, kw_only=True)
class Switch(Valued[bool]):
    """on or off, any case."""

    def convert(self, text: str) -> bool:
        value = text.lower()
        if value not in ("on", "off"):
            raise ConfigError.single(self.variable, "must be on or off", value)
        return value == "on"

    def render(self, value: bool) -> str:
        return "on" if value else "off"


@dataclass(frozen=True, kw_only=True)
class Flag(Valued[bool]):
    """Any non-empty value turns it on (as the old images' *_DEBUG); there is no default worth showing."""

    default: bool | Computed[bool] = False

    def convert(self, text: str) -> bool:
        return True

    @property
    def shown_default(self) -> str | None:
        return None


def one_per_cpu() -> int:
    """The CPUs this process may run on (a container's cpuset, not the node's count)."""
    return max(1, len(os.sched_getaffinity(0)))


PER_CPU = Computed(one_per_cpu, "one per CPU")


def parse_each(found: Collector, options: Iterable[Valued[Any]], given: Mapping[str, str | None]) -> dict[str, Any]:
    """Each option's value from `given` (by name; absent means unset); the problems go to `found`."""
    table = {option.name: option for option in options}
    unknown = set(given) - set(table)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return found.gather({name: functools.partial(option.parse, given.get(name)) for name, option in table.items()})


#: Every long-running command's pause between SIGTERM and closing its doors: Kubernetes takes a terminating pod out of
#: its Services while it signals it, and that change reaches every node's Service rules only seconds later.
SHUTDOWN_DELAY = Duration(
    "shutdown_delay",
    "EGRESS_SHUTDOWN_DELAY",
    "On SIGTERM, how long the pod stays unready but still serving, until every node stops sending it new connections;"
    " then it drains. 0: at once",
    default=5.0,
    allow_zero=True,
)

#: Every long-running command's /healthz, /readyz and /metrics (one option, in each command's table).
METRICS_PORT = PortOrOff(
    "metrics_port", "EGRESS_METRICS_PORT", "Port of /healthz, /readyz and /metrics on every pod address; off: none", default=9191
)
