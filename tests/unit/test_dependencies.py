"""The proxies need neither pyroute2 nor python-iptables: the proxy image has neither (they are the `init` extra)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "egress_router"
INIT_ONLY = ("pyroute2", "iptc", "egress_router.init")
PROXIES = ("egress_router.http_proxy.service", "egress_router.dns_proxy.service")


def module_file(name: str) -> Path | None:
    path = PACKAGE.parent.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported(name: str) -> set[str]:
    """Every module `name` imports, at any depth of its code (imports inside functions too)."""
    path = module_file(name)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())) if path else ():
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if module_file(f"{node.module}.{alias.name}"))
    return found


def closure(roots: tuple[str, ...]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(m for m in imported(name) if m.startswith("egress_router"))
    return seen | {m for name in seen for m in imported(name)}


def test_nothing_the_proxies_run_imports_pyroute2_or_iptc() -> None:
    reached = closure(PROXIES)
    assert not [m for m in reached if m.startswith(INIT_ONLY)]
    assert "egress_router.runtime.workers" in reached and "prometheus_client.registry" in reached  # the walk does reach


def test_proxy_commands_start_without_the_init_extra() -> None:
    """With pyroute2 and iptc unimportable, as in the proxy image, the CLI loads and both proxy commands answer."""
    script = (
        "import sys\n"
        "sys.modules['pyroute2'] = sys.modules['iptc'] = None  # importing either now fails\n"
        "from click.testing import CliRunner\n"
        "from egress_router.cli import main\n"
        "import egress_router.http_proxy.service, egress_router.dns_proxy.service\n"
        "for command in ('http-proxy', 'dns-proxy'):\n"
        "    result = CliRunner().invoke(main, [command, '--help'])\n"
        "    assert result.exit_code == 0, result.output\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_init_and_monitor_without_the_init_extra_say_which_image_to_use() -> None:
    script = (
        "import sys\n"
        "sys.modules['pyroute2'] = sys.modules['iptc'] = None\n"
        "sys.argv = ['egress-router', 'monitor']\n"
        "from egress_router.cli import run\n"
        "run()\n"
    )
    env = {**os.environ, "EGRESS_SOURCE": "192.168.12.99", "EGRESS_GATEWAY": "192.168.12.1", "EGRESS_DESTINATION": "80 tcp 203.0.113.25"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 70 and "Traceback" not in done.stderr
    assert "egress-router monitor: error: pyroute2 is not installed here: init and monitor run from the init image" in done.stderr
