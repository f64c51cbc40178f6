"""Configuration errors that tell an administrator exactly what to fix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one variable (and, for lists, one line of it)."""

    variable: str
    reason: str
    text: str | None = None
    line_no: int | None = None

    def __str__(self) -> str:
        where = self.variable if self.line_no is None else f"{self.variable} line {self.line_no}"
        shown = "" if self.text is None else f': "{self.text}"'
        return f"{where}: {self.reason}{shown}"


class ConfigError(Exception):
    """All problems found in the configuration; raised before anything is changed.

    Every problem is reported at once so an administrator fixes a manifest in one round trip.
    """

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def single(cls, variable: str, reason: str, text: str | None = None, line_no: int | None = None) -> ConfigError:
        return cls([Problem(variable, reason, text, line_no)])


class Collector:
    """Gathers problems from several parsers so one run reports all of them."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, problem: Problem) -> None:
        self.problems.append(problem)

    def take(self, error: ConfigError) -> None:
        self.problems.extend(error.problems)

    def gather(self, steps: dict[str, Callable[[], Any]]) -> dict[str, Any]:
        """Run each parsing step; keep the values that parsed and the problems of those that did not."""
        values = {}
        for key, step in steps.items():
            try:
                values[key] = step()
            except ConfigError as error:
                self.take(error)
        return values

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)
