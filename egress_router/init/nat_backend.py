"""Which NAT backend installs our chain sets (EGRESS_NAT_BACKEND), and switching between them.

`auto` takes legacy iptables where both the kernel and the image have it, nftables otherwise: a node that uses
legacy iptables keeps one view of its NAT, and a kernel or image without it (newer distributions drop the legacy
xtables backend) still works. Whichever is used, the other one's chains of ours are removed, so a pod switched from
one to the other never holds both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from egress_router.config.init_settings import NAT_BACKEND
from egress_router.errors import ApplyError
from egress_router.init import nat, nft
from egress_router.init.plan import ChainSet, NetworkPlan

if TYPE_CHECKING:
    from egress_router.init.journal import Journal


class NatEdge(Protocol):
    """What each backend module (init/nat.py, init/nft.py) provides."""

    def apply_chains(self, chains: ChainSet, journal: Journal | None = None) -> bool: ...

    def remove_chains(self, chains: ChainSet, journal: Journal | None = None) -> bool: ...

    def counters(self, chains: ChainSet) -> list[tuple[int, int]] | None: ...

    def render(self, chains: ChainSet) -> str: ...


EDGES: dict[str, NatEdge] = {"iptables": nat, "nftables": nft}


@dataclass(frozen=True)
class Backend:
    """The backend in use, and why (for the log and unit-test mode)."""

    name: str
    why: str

    @property
    def edge(self) -> NatEdge:
        return EDGES[self.name]

    def render(self, chains: ChainSet) -> str:
        return self.edge.render(chains)

    def counters(self, chains: ChainSet) -> list[tuple[int, int]] | None:
        return self.edge.counters(chains)

    def install(self, chains: ChainSet, journal: Journal | None = None) -> bool:
        """Our chains for `chains` through this backend, and none through the other; whether anything changed."""
        changed = self.edge.apply_chains(chains, journal)
        for name, other in EDGES.items():
            if name != self.name:
                changed |= other.remove_chains(chains, journal)
        return changed


def decide(choice: str, iptables_problem: str | None) -> Backend:
    """PURE: the backend for EGRESS_NAT_BACKEND=`choice`, given why legacy iptables is unusable here (None: it is not)."""
    if choice != "auto":
        return Backend(choice, f"{NAT_BACKEND.variable}={choice}")
    if iptables_problem is None:
        return Backend("iptables", f"{NAT_BACKEND.variable}=auto: legacy iptables is in the kernel and the image")
    return Backend("nftables", f"{NAT_BACKEND.variable}=auto: {iptables_problem}")


def legacy_problem(families: Iterable[str]) -> str | None:
    """Read-only: why `auto` should not take legacy iptables here, or None."""
    missing = [nat.TABLE_NAMES[family] for family in sorted(set(families)) if not nat.kernel_has_legacy(family)]
    if missing:
        return f"no legacy iptables in the kernel ({' and '.join(missing)} missing)"
    return nat.image_problem()


def chain_sets(plan: NetworkPlan) -> list[ChainSet]:
    return list(plan.chain_sets)


def resolve(choice: str, plan: NetworkPlan, *, check: bool = True) -> Backend:
    """The backend to use for `plan`. With `check`, make sure it works here before anything is changed
    (ApplyError naming EGRESS_NAT_BACKEND otherwise); unit-test mode only decides, reading nothing but files.
    The caller logs the choice where it starts using it (a run that fails before then prints only its error)."""
    sets = chain_sets(plan)
    backend = decide(choice, legacy_problem(chains.family for chains in sets) if choice == "auto" else None)
    if check:
        problem = usable_problem(backend.name, sets)
        if problem is not None and choice == "auto":
            raise ApplyError(f"{backend.why}, but {backend.name} cannot be used here: {problem}")
        if problem is not None:
            other = "nftables" if backend.name == "iptables" else "iptables"
            raise ApplyError(f"{NAT_BACKEND.variable}: {backend.name} cannot be used here: {problem} (set it to {other} or auto)")
    return backend


def usable_problem(name: str, sets: list[ChainSet]) -> str | None:
    """Why backend `name` cannot be used here for `sets` (None: it can)."""
    return (nat.image_problem() or nat.kernel_problem(sets)) if name == "iptables" else nft.problem()


def follow_installed(backend: Backend, choice: str, plan: NetworkPlan) -> Backend:
    """The monitor's backend: with `auto`, the one init installed the rules with, when that is the other one and it
    works here (init may have been told `nftables` while the monitor was left at `auto`, and moving the rules at the
    first check would be a surprise). An explicit choice is kept: the rules move to it, as that says."""
    sets = [chains for chains in plan.chain_sets if chains.rules]
    if choice != "auto" or not sets:
        return backend
    other = next(name for name in EDGES if name != backend.name)
    if usable_problem(other, sets) is not None or EDGES[other].counters(sets[0]) is None:
        return backend
    if EDGES[backend.name].counters(sets[0]) is not None:
        return backend
    return Backend(other, f"{NAT_BACKEND.variable}=auto: following init, which installed the rules with {other}")
