"""Time `egress-router init` against the old image's one-iptables-command-per-rule script.

Run as root: .venv/bin/python bench/init_rules.py [--repeat 3] [--sizes 10,100,1000] [--baseline DIR]
Each trial gets a fresh router pod namespace in the lab; wall-clock time of the whole command,
median of the repeats. Prints a Markdown table with ratios (baseline time / our time).
--baseline DIR also times the `init` of another checkout (`git worktree add DIR <commit>`), interleaved
with ours in the same rounds, so a change's cost is measured under the same load.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

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


def trial(lab: Lab, argv: list[str], env: dict[str, str], *, twice: bool = False) -> tuple[float, float | None]:
    role = f"b{next(_pods)}"  # a new name each time: a deleted namespace's veth peer goes away asynchronously
    lab.add_pod(role, t.ROUTER_IP)
    lab.add_macvlan(role)
    try:
        started = time.perf_counter()
        done = lab.run_in(role, argv, env=env, timeout=600)
        first = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr}")
        again = None
        if twice:
            started = time.perf_counter()
            lab.run_in(role, argv, env=env, timeout=600)
            again = time.perf_counter() - started
        return first, again
    finally:
        lab.remove_namespace(role)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--baseline", help="another checkout whose init to time alongside ours")
    args = parser.parse_args()
    if args.baseline:
        compare(args)
        return
    base = environment()
    rows = []
    with Lab().build(router=False) as lab:
        for n in (int(s) for s in args.sizes.split(",")):
            env = init_env(base, n)
            ours, again, legacy, nft = [], [], [], []
            for _ in range(args.repeat):
                first, second = trial(lab, [sys.executable, "-m", "egress_router", "init"], env, twice=True)
                ours.append(first)
                again.append(second or 0.0)
                legacy.append(trial(lab, ["bash", str(HERE / "old_image_init.sh")], {**env, "IPTABLES": "iptables-legacy"})[0])
                nft.append(trial(lab, ["bash", str(HERE / "old_image_init.sh")], {**env, "IPTABLES": "iptables-nft"})[0])
            rows.append((n, *(statistics.median(x) for x in (ours, again, legacy, nft))))
    print(
        "| rules | egress-router init | init again (no change) | old script, iptables-legacy | ratio | old script, iptables-nft | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, ours_s, again_s, legacy_s, nft_s in rows:
        print(
            f"| {n} | {ours_s:.3f} s | {again_s:.3f} s | {legacy_s:.3f} s | {legacy_s / ours_s:.1f}x "
            f"| {nft_s:.3f} s | {nft_s / ours_s:.1f}x |"
        )


def compare(args: argparse.Namespace) -> None:
    """Ours against another checkout's init, alternating in every round, each in a fresh pod."""
    base = environment()
    theirs_argv = ["sh", "-c", f'cd "{args.baseline}" && exec "{sys.executable}" -m egress_router init']
    ours_argv = ["sh", "-c", f'cd "{HERE.parent}" && exec "{sys.executable}" -m egress_router init']
    print(f"| rules | this checkout | {args.baseline} | this / that (spread) |")
    print("|---:|---:|---:|---:|")
    with Lab().build(router=False) as lab:
        for n in (int(s) for s in args.sizes.split(",")):
            env = init_env(base, n)
            ours, theirs = [], []
            for _ in range(args.repeat):
                theirs.append(trial(lab, theirs_argv, env)[0])
                ours.append(trial(lab, ours_argv, env)[0])
            ratios = sorted(o / t_ for o, t_ in zip(ours, theirs, strict=False))
            print(
                f"| {n} | {statistics.median(ours):.3f} s | {statistics.median(theirs):.3f} s | "
                f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f}) |"
            )


if __name__ == "__main__":
    main()
