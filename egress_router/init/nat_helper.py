"""python-iptables serves one address family per process; a dual-stack router's other family goes to a helper process.

libxt_NAT.so (the DNAT and SNAT targets) registers its targets for the family libxtables is set to when the library
is first loaded, and refuses (exiting the process) to register them again; python-iptables then finds no DNAT for
the other family ("invalid rule"), as its maintainer says: use one family per process. So the first family a process
touches is served in it, and the other one by `python -m egress_router.init.nat_helper`, started on first need and
kept while this process runs (the monitor asks it every pass): one JSON request and one answer a line, over a pipe.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
from typing import Any

from egress_router.errors import ApplyError
from egress_router.init.plan import ChainSet, XtRule

_here: str | None = None
_helper: subprocess.Popen[str] | None = None
_lock = threading.Lock()


def served_elsewhere(family: str) -> bool:
    """Whether `family`'s tables are the helper's: the first family asked about is this process's."""
    global _here
    if _here is None:
        _here = family
    return family != _here


def _tuples(value: Any) -> Any:
    """JSON's lists back into the tuples the plan's frozen data classes hold."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def encode(chains: ChainSet) -> dict[str, Any]:
    return dataclasses.asdict(chains)


def decode(data: dict[str, Any]) -> ChainSet:
    rules = tuple(XtRule(**{key: _tuples(value) for key, value in rule.items()}) for rule in data["rules"])
    fields = {key: _tuples(value) for key, value in data.items() if key != "rules"}
    return ChainSet(**fields, rules=rules)


def call(operation: str, chains: ChainSet, before: dict[str, Any] | None = None) -> Any:
    """Run `operation` (apply, remove, restore, counters) on `chains` in the helper; its ApplyError is raised here."""
    global _helper
    request = json.dumps({"operation": operation, "chains": encode(chains), "before": before})
    with _lock:
        if _helper is None or _helper.poll() is not None:
            _helper = subprocess.Popen(
                [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, close_fds=True
            )
        assert _helper.stdin is not None and _helper.stdout is not None
        try:
            _helper.stdin.write(request + "\n")
            _helper.stdin.flush()
            line = _helper.stdout.readline()
        except OSError:
            line = ""
    if not line:
        raise ApplyError(f"the helper process for the {chains.family} tables ended unexpectedly (its error is above)")
    answer = json.loads(line)
    if "error" in answer:
        raise ApplyError(answer["error"])
    return answer["result"]


def serve() -> None:
    """The helper: answer each request line until the parent closes the pipe."""
    from egress_router.init import nat  # here, not above: nat imports this module

    for line in sys.stdin:
        request = json.loads(line)
        chains = decode(request["chains"])
        try:
            answer = {"result": nat.HERE[request["operation"]](chains, request["before"])}
        except ApplyError as error:
            answer = {"error": str(error)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve()
