"""Time `egress-router init`, with each NAT backend, against the old image's one-iptables-command-per-rule script.

Run as root: .venv/bin/python bench/init_rules.py [--rounds 3] [--sizes 10,100,1000] [--baseline DIR]
Each trial gets a fresh router pod namespace in the lab; wall-clock time of the whole command. Every round runs
each contender once, the order alternating from round to round. Prints a Markdown table, a row per rule count:
medians over the rounds with their min-max; nftables / iptables (our two backends), and old script / ours (the
old script with iptables-legacy against our iptables backend, with iptables-nft against our nftables backend):
the ratio of the medians with the min-max of the per-round ratios (above 1: we are faster).
--baseline DIR times the `init` of another checkout (`git worktree add DIR COMMIT`) instead of the old script,
interleaved with ours (each backend) in the same rounds, and gives ours / baseline (below 1: we are faster).
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import THIS, Checkout, Measure, Samples, alternating, options

from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.topology import environment

HERE = Path(__file__).resolve().parent
_pods = itertools.count()


def destination(n: int) -> str:
    lines = [f"{10000 + i} tcp 203.0.113.{25 + i % 3} {80 + i % 5}" for i in range(n - 1)]
    return "\n".join([*lines, t.PUBLIC_SERVER])


def init_env(base: dict[str, str], n: int) -> dict[str, str]:
    """The router pod's environment for a list of `n` rules."""
    return {
        **base,
        "EGRESS_SOURCE": t.EGRESS_SOURCE,
        "EGRESS_GATEWAY": t.GATEWAY_IP,
        "EGRESS_DESTINATION": destination(n),
        "EGRESS_ROUTER_MODE": "init",
    }


def trial(lab: Lab, argv: list[str], env: dict[str, str], runs: int = 1) -> list[float]:
    """Wall-clock seconds of each of `runs` runs of `argv` in one fresh router pod (a second run finds its work done)."""
    role = f"b{next(_pods)}"  # a new name each time: a deleted namespace's veth peer goes away asynchronously
    lab.add_pod(role, t.ROUTER_IP)
    lab.add_macvlan(role)
    try:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            done = lab.run_in(role, argv, env=env, timeout=600)
            times.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(argv)} failed: {done.stderr}")
        return times
    finally:
        lab.remove_namespace(role)


Contender = Callable[[Lab, dict[str, str]], dict[str, float]]  # one trial: seconds for each of its columns


BACKENDS = ("iptables", "nftables")
#: The old script's iptables binary that drives the same kernel backend as each of ours.
OLD_SCRIPT = {"iptables": "iptables-legacy", "nftables": "iptables-nft"}


def old_script_contenders() -> tuple[list[Contender], list[tuple[str, str | None]], str]:
    """Ours with each NAT backend (run twice: again with nothing to change), and the old script with each iptables
    binary; their columns (name, the column its ratio is to); which code is ours."""

    def ours(backend: str) -> Contender:
        def timed(lab: Lab, env: dict[str, str]) -> dict[str, float]:
            first, again = trial(lab, THIS.argv("init"), {**env, "EGRESS_NAT_BACKEND": backend}, runs=2)
            return {f"init, {backend}": first, f"again, {backend}": again}

        return timed

    def old(iptables: str) -> Contender:
        return lambda lab, env: {
            f"old script, {iptables}": trial(lab, ["bash", str(HERE / "old_image_init.sh")], {**env, "IPTABLES": iptables})[0]
        }

    columns: list[tuple[str, str | None]] = [
        ("init, iptables", None),
        ("again, iptables", None),
        ("init, nftables", "init, iptables"),
        ("again, nftables", None),
    ]
    columns += [(f"old script, {OLD_SCRIPT[backend]}", f"init, {backend}") for backend in BACKENDS]
    contenders = [ours("iptables"), ours("nftables"), *[old(OLD_SCRIPT[backend]) for backend in BACKENDS]]
    return contenders, columns, f"egress-router: {THIS.describe()}"


def baseline_contenders(baseline: str) -> tuple[list[Contender], list[tuple[str, str | None]], str]:
    """The baseline checkout's init and ours with each backend, each in a fresh pod; their columns; which code is which.
    The baseline gets no EGRESS_NAT_BACKEND: a checkout from before the option takes iptables."""
    theirs = Checkout.at(baseline, "baseline")
    theirs.compile()

    def init(checkout: Checkout, label: str, backend: str | None = None) -> Contender:
        extra = {"EGRESS_NAT_BACKEND": backend} if backend else {}
        return lambda lab, env: {label: trial(lab, checkout.argv("init"), {**env, **extra})[0]}

    contenders = [init(theirs, "baseline"), *[init(THIS, f"ours, {backend}", backend) for backend in BACKENDS]]
    columns: list[tuple[str, str | None]] = [("baseline", None), *[(f"ours, {backend}", "baseline") for backend in BACKENDS]]
    return contenders, columns, f"baseline: {theirs.describe()}; ours: {THIS.describe()}"


def main() -> None:
    parser = options(__doc__, rounds=3, baseline="init runs in place of the old script, compared with ours")
    parser.add_argument("--sizes", default="10,100,1000", help="rule counts (default 10,100,1000)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    THIS.compile()  # bytecode as the image has it (see Checkout.compile)
    contenders, columns, which = baseline_contenders(args.baseline) if args.baseline else old_script_contenders()
    samples = Samples()
    with Lab().build(router=False) as lab:
        for n in sizes:
            env = init_env(environment(), n)
            for number, contender in alternating(args.rounds, contenders):
                times = contender(lab, env)
                for column, seconds in times.items():
                    samples.add(column, {str(n): seconds})
                done = ", ".join(f"{column} {seconds:.3f} s" for column, seconds in times.items())
                print(f"{n} rules, round {number + 1}/{args.rounds}: {done}", file=sys.stderr, flush=True)
    print(f"{which}\n")
    samples.print_table("rules: seconds", [Measure(str(n), str(n), ".3f") for n in sizes], columns)


if __name__ == "__main__":
    main()
