"""NAT rules in chains the router owns, committed to the kernel in one transaction (python-iptables)."""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
import types
from typing import TYPE_CHECKING, Any

from egress_router.config.addresses import IPV4, IPV6
from egress_router.errors import ApplyError
from egress_router.init import nat_helper
from egress_router.init.plan import ChainSet

if TYPE_CHECKING:  # not imported at run time: the helper process starts without pyroute2
    from egress_router.init.journal import Journal

log = logging.getLogger(__name__)


def _prepare_iptc_import() -> None:
    """Point python-iptables straight at its libraries, so importing it costs milliseconds, not ~250 ms.

    Left to itself it runs ldconfig (and gcc, via ctypes.util) to find libxtables, libip4tc and its own
    wrapper, and imports setuptools' distutils for one path. Settings the user made are kept.
    """
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{os.uname().machine}-linux-gnu"
    for libdir in (f"/usr/lib/{multiarch}", "/usr/lib64", "/usr/lib"):
        if os.path.isdir(os.path.join(libdir, "xtables")):
            os.environ.setdefault("XTABLES_LIBDIR", os.path.join(libdir, "xtables"))
            os.environ.setdefault("IPTABLES_LIBDIR", f"{libdir}:{sysconfig.get_path('platlib')}")
            break
    if "distutils.sysconfig" not in sys.modules:  # python-iptables' own fallback when distutils is absent
        package = sys.modules.setdefault("distutils", types.ModuleType("distutils"))
        module = types.ModuleType("distutils.sysconfig")
        module.get_python_lib = lambda *args, **kwargs: sysconfig.get_path("purelib")  # type: ignore[attr-defined]
        sys.modules["distutils.sysconfig"] = module
        package.sysconfig = module  # type: ignore[attr-defined]


def _iptc() -> Any:
    _prepare_iptc_import()
    try:
        import iptc  # imported late: it needs libxtables, which unit-test mode must not require
        import iptc.easy
    except Exception as error:
        raise ApplyError(f"cannot load python-iptables ({error}); is the iptables package installed?") from error
    return iptc


def _build(iptc: Any, shape: dict[str, Any], family: str = IPV4) -> Any:
    return iptc.easy.encode_iptc_rule(shape, family == IPV6)


def _jump(chain: str) -> dict[str, Any]:
    return {"target": chain}


def _shape(iptc: Any, rule: Any) -> dict[str, Any]:
    """A rule as comparable data: python-iptables' own equality sees stray bytes in SNAT targets."""
    decoded = dict(iptc.easy.decode_iptc_rule(rule, isinstance(rule, iptc.Rule6)))
    decoded.pop("counters", None)
    return decoded


_TABLES = {"nat": "NAT", "mangle": "MANGLE"}


def _open(iptc: Any, name: str, family: str = IPV4) -> Any:
    """The table (ip6tables' for `ipv6`), fresh from the kernel, collecting changes for one commit."""
    kind = iptc.Table6 if family == IPV6 else iptc.Table
    table = kind(getattr(kind, _TABLES[name]))
    table.autocommit = False
    table.refresh()
    return table


def _state(iptc: Any, table: Any, chains: ChainSet) -> dict[str, Any]:
    """Our chains' rules (None: chain absent) and how many jumps each built-in chain has to them."""
    state: dict[str, Any] = {}
    for chain, parents in chains.chains:
        state[chain] = [_shape(iptc, r) for r in iptc.Chain(table, chain).rules] if table.is_chain(chain) else None
        for parent in parents:
            state[f"{parent}->{chain}"] = sum(_shape(iptc, r) == _jump(chain) for r in iptc.Chain(table, parent).rules)
    return state


def _write(iptc: Any, table: Any, chains: ChainSet, rules: dict[str, list[Any] | None]) -> None:
    """Make each owned chain hold `rules[chain]` with one jump from each parent; None removes chain and jumps."""
    for chain_name, parents in chains.chains:
        wanted = rules[chain_name]
        if wanted is not None:
            chain = iptc.Chain(table, chain_name) if table.is_chain(chain_name) else table.create_chain(chain_name)
            chain.flush()
            for rule in wanted:
                chain.append_rule(rule)
        for parent_name in parents:
            parent = iptc.Chain(table, parent_name)
            jumps = [r for r in parent.rules if _shape(iptc, r) == _jump(chain_name)]
            keep = 0 if wanted is None else 1
            for rule in jumps[keep:]:
                parent.delete_rule(rule)
            if keep and not jumps:
                jump = iptc.Rule6() if chains.family == IPV6 else iptc.Rule()
                jump.create_target(chain_name)
                parent.insert_rule(jump)
        if wanted is None and table.is_chain(chain_name):
            chain = iptc.Chain(table, chain_name)
            chain.flush()
            chain.delete()


def apply_chains(chains: ChainSet, journal: Journal | None = None) -> bool:
    """Make our chains in `chains.table` hold exactly its rules, in one commit; False when they already did.

    With a journal, the chains' previous content is recorded, so a later failure puts it back.
    """
    changed, before = nat_helper.call("apply", chains) if nat_helper.served_elsewhere(chains.family) else apply_here(chains)
    if not changed:
        log.debug("%s rules already in place (%d rules)", _name(chains), len(chains.rules))
        return False
    log.debug("%s: %d rules committed in one transaction", _name(chains), len(chains.rules))
    if journal is not None:
        journal.record(f"{_name(chains)} rules", lambda: restore(chains, before))
    return True


def apply_here(chains: ChainSet, *, absent: bool = False) -> tuple[bool, dict[str, Any]]:
    """apply_chains (or, `absent`, remove_chains) in this process: whether anything changed, and the chains' state before."""
    iptc = _iptc()
    try:
        table = _open(iptc, chains.table, chains.family)
        wanted = {chain: [r.as_dict() for r in chains.rules if r.chain == chain] for chain, _ in chains.chains}
        before = _state(iptc, table, chains)
        built: dict[str, list[Any] | None] = {
            chain: None if absent else [_build(iptc, shape, chains.family) for shape in shapes] for chain, shapes in wanted.items()
        }
        nothing_there = all(value in (None, 0) for value in before.values())  # no chain, no jump
        if nothing_there if absent else _unchanged(iptc, chains, before, built):  # type: ignore[arg-type]
            return False, before
        _write(iptc, table, chains, built)
        table.commit()
        table.refresh()
        table.autocommit = True
    except iptc.IPTCError as error:
        raise ApplyError(
            f"cannot install {_name(chains)} rules: {error} (is the init container privileged, with the iptables modules loaded?)"
        ) from error
    return True, before


def _unchanged(iptc: Any, chains: ChainSet, before: dict[str, Any], built: dict[str, list[Any]]) -> bool:
    """Whether the kernel already holds `built`; rules are decoded only when the counts already agree."""
    for chain, parents in chains.chains:
        current = before[chain]
        if current is None or len(current) != len(built[chain]) or any(before[f"{p}->{chain}"] != 1 for p in parents):
            return False
    return all(before[chain] == [_shape(iptc, r) for r in built[chain]] for chain, _ in chains.chains)


def _name(chains: ChainSet) -> str:
    """How logs and messages name the table: `nat`, or `ip6 nat` for ip6tables'."""
    return f"ip6 {chains.table}" if chains.family == IPV6 else chains.table


def restore(chains: ChainSet, before: dict[str, Any]) -> None:
    """Put our chains back as `before` (what apply found)."""
    if nat_helper.served_elsewhere(chains.family):
        nat_helper.call("restore", chains, before)
        return
    iptc = _iptc()
    table = _open(iptc, chains.table, chains.family)
    previous = {
        chain: None if before[chain] is None else [_build(iptc, s, chains.family) for s in before[chain]] for chain, _ in chains.chains
    }
    _write(iptc, table, chains, previous)
    table.commit()
    table.autocommit = True


def counters(chains: ChainSet) -> list[tuple[int, int]] | None:
    """Packets and bytes of each of our rules, in the order of `chains.rules`; None when our chains do not hold them."""
    if nat_helper.served_elsewhere(chains.family):
        answer = nat_helper.call("counters", chains)
        return None if answer is None else [(packets, size) for packets, size in answer]
    iptc = _iptc()
    found: list[tuple[int, int]] = []
    try:
        table = _open(iptc, chains.table, chains.family)
        for chain, _ in chains.chains:
            if not table.is_chain(chain):
                return None
            found += [tuple(rule.get_counters()) for rule in iptc.Chain(table, chain).rules]
    except iptc.IPTCError:
        return None
    return found if len(found) == len(chains.rules) else None


def remove_chains(chains: ChainSet, journal: Journal | None = None) -> bool:
    """Remove our chains of `chains.table` (of its family) and the jumps to them; False when there were none."""
    if nat_helper.served_elsewhere(chains.family):
        changed, before = nat_helper.call("remove", chains)
    else:
        changed, before = apply_here(chains, absent=True)
    if changed:
        log.info("removed the router's %s chains", _name(chains))
        if journal is not None:
            journal.record(f"remove {_name(chains)} rules", lambda: restore(chains, before))
    return bool(changed)
