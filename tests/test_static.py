"""The habits CI keeps: ruff's rules and format, and mypy --strict on the package (configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["egress_router", "tests", "bench"]


def tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "argv", [["ruff", "check", *PATHS], ["ruff", "format", "--check", *PATHS], ["mypy"]], ids=["ruff", "format", "mypy"]
)
def test_clean(argv: list[str]) -> None:
    done = tool(*argv)
    assert done.returncode == 0, done.stdout + done.stderr
