"""NAT rules in chains the router owns, committed to the kernel in one transaction (python-iptables, legacy xtables).

The iptables NAT backend; init/nft.py is the nftables one, with the same functions.
"""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from egress_router.errors import ApplyError
from egress_router.init import nat_helper
from egress_router.init.plan import ChainSet

if TYPE_CHECKING:  # not imported at run time: the helper process starts without pyroute2
    from egress_router.init.journal import Journal

log = logging.getLogger(__name__)

render = ChainSet.render

#: The legacy tables instantiated in this network namespace; the file exists once the kernel has legacy iptables
#: (built in, or its module loaded), and lists a table once something in the namespace has used it.
TABLE_NAMES = {"ipv4": "/proc/net/ip_tables_names", "ipv6": "/proc/net/ip6_tables_names"}


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


def image_problem() -> str | None:
    """Why this image cannot drive legacy iptables (python-iptables or the iptables package's extensions missing), or None."""
    try:
        _iptc()
    except ApplyError as error:
        return str(error)
    libdir = os.environ.get("XTABLES_LIBDIR")
    if not libdir or not os.path.isdir(libdir):
        return "no xtables extensions here (is the iptables package installed?)"
    return None


def kernel_has_legacy(family: str) -> bool:
    """Read-only: whether the kernel has legacy iptables for `family` now (nothing is loaded or created to find out)."""
    return os.path.exists(TABLE_NAMES[family])


def legacy_tables(family: str) -> set[str]:
    """The legacy tables that exist in this network namespace (empty without legacy iptables)."""
    try:
        with open(TABLE_NAMES[family], encoding="ascii") as f:
            return set(f.read().split())
    except OSError:
        return set()


def kernel_problem(chain_sets: list[ChainSet]) -> str | None:
    """Why the kernel will not give us the tables these chain sets need (opening one creates it, as any iptables
    command does), or None."""
    iptc = _iptc()
    for chains in chain_sets:
        try:
            _open(iptc, chains.table, chains.family)
        except iptc.IPTCError as error:
            return f"{_IPTABLES[chains.family]} cannot open the {chains.table} table: {error}"
    return None


_IPTABLES = {"ipv4": "iptables", "ipv6": "ip6tables"}


def _ipv6(chains: ChainSet) -> bool:
    return chains.family == "ipv6"


def _build(iptc: Any, shape: dict[str, Any], ipv6: bool) -> Any:
    return iptc.easy.encode_iptc_rule(shape, ipv6)


def _jump(chain: str) -> dict[str, Any]:
    return {"target": chain}


def _shape(iptc: Any, rule: Any, ipv6: bool) -> dict[str, Any]:
    """A rule as comparable data: python-iptables' own equality sees stray bytes in SNAT targets."""
    decoded = dict(iptc.easy.decode_iptc_rule(rule, ipv6))
    decoded.pop("counters", None)
    return decoded


def _open(iptc: Any, name: str, family: str) -> Any:
    """The table, fresh from the kernel, collecting changes for one commit."""
    table = iptc.Table6(name) if family == "ipv6" else iptc.Table(name)
    table.autocommit = False
    table.refresh()
    return table


def _state(iptc: Any, table: Any, chains: ChainSet) -> dict[str, Any]:
    """Our chains' rules (None: chain absent) and how many jumps each built-in chain has to them."""
    state: dict[str, Any] = {}
    ipv6 = _ipv6(chains)
    for chain, parents in chains.chains:
        state[chain] = [_shape(iptc, r, ipv6) for r in iptc.Chain(table, chain).rules] if table.is_chain(chain) else None
        for parent in parents:
            state[f"{parent}->{chain}"] = sum(_shape(iptc, r, ipv6) == _jump(chain) for r in iptc.Chain(table, parent).rules)
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
            jumps = [r for r in parent.rules if _shape(iptc, r, _ipv6(chains)) == _jump(chain_name)]
            keep = 0 if wanted is None else 1
            for rule in jumps[keep:]:
                parent.delete_rule(rule)
            if keep and not jumps:
                jump = iptc.Rule6() if _ipv6(chains) else iptc.Rule()
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
    changed, before = _served("apply", chains)
    if not changed:
        log.debug("%s rules already in place (%d rules)", _name(chains), len(chains.rules))
        return False
    log.debug("%s: %d rules committed in one transaction", _name(chains), len(chains.rules))
    if journal is not None:
        journal.record(f"{_name(chains)} rules", lambda: _restore(chains, before))
    return True


def apply_here(chains: ChainSet) -> tuple[bool, dict[str, Any]]:
    """apply_chains in this process: whether anything changed, and the chains' state before."""
    wanted: dict[str, list[dict[str, Any]] | None]
    wanted = {chain: [r.as_dict() for r in chains.rules if r.chain == chain] for chain, _ in chains.chains}
    failure = f"cannot install {_name(chains)} rules: {{error}} (is the init container privileged, with the iptables modules loaded?)"
    return _hold(chains, wanted, failure)


def _hold(chains: ChainSet, wanted: dict[str, list[dict[str, Any]] | None], failure: str) -> tuple[bool, dict[str, Any]]:
    """Make our chains hold `wanted` (None: no chain, no jumps to it) in one commit, unless they already do: whether
    anything changed, and the chains' state before. An iptables error becomes ApplyError(`failure` with its {error})."""
    iptc = _iptc()
    try:
        table = _open(iptc, chains.table, chains.family)
        before = _state(iptc, table, chains)
        ipv6 = _ipv6(chains)
        built = {chain: None if shapes is None else [_build(iptc, s, ipv6) for s in shapes] for chain, shapes in wanted.items()}
        if _unchanged(iptc, chains, before, built):
            return False, before
        _write(iptc, table, chains, built)
        table.commit()
        table.refresh()
        table.autocommit = True
    except iptc.IPTCError as error:
        raise ApplyError(failure.format(error=error)) from error
    return True, before


def _name(chains: ChainSet) -> str:
    """How logs and messages name the table: `nat`, or `ip6 nat` for ip6tables'."""
    return f"ip6 {chains.table}" if _ipv6(chains) else chains.table


def _unchanged(iptc: Any, chains: ChainSet, before: dict[str, Any], built: dict[str, list[Any] | None]) -> bool:
    """Whether the kernel already holds `built` (None: neither the chain nor a jump to it); rules are decoded only
    when the counts already agree."""
    for chain, parents in chains.chains:
        current, rules, jumps = before[chain], built[chain], [before[f"{p}->{chain}"] for p in parents]
        if rules is None:
            if current is not None or any(jumps):
                return False
        elif current is None or len(current) != len(rules) or any(count != 1 for count in jumps):
            return False
    return all(rules is None or before[chain] == [_shape(iptc, r, _ipv6(chains)) for r in rules] for chain, rules in built.items())


def remove_chains(chains: ChainSet, journal: Journal | None = None) -> bool:
    """Take our chains for `chains` and their jumps out (when switching to nftables); False when there were none.

    Looks only where the legacy table already exists in this namespace: a pod that never used legacy iptables
    has no rules of ours there, and looking would create the table.
    """
    if chains.table not in legacy_tables(chains.family):
        return False
    try:
        _iptc()
    except ApplyError as error:
        log.debug("no iptables rules of ours to look for: %s", error)
        return False
    changed, before = _served("remove", chains)
    if not changed:
        return False
    log.info("removed our %s rules from %s", chains.table, _IPTABLES[chains.family])
    if journal is not None:
        journal.record(f"{chains.table} rules in iptables", lambda: _restore(chains, before))
    return True


def remove_here(chains: ChainSet) -> tuple[bool, dict[str, Any]]:
    """remove_chains in this process: whether there was anything to remove, and the chains' state before."""
    failure = f"cannot remove our {chains.table} rules from {_IPTABLES[chains.family]}: {{error}}"
    return _hold(chains, dict.fromkeys((chain for chain, _ in chains.chains), None), failure)


def _restore(chains: ChainSet, before: dict[str, Any]) -> None:
    """Put our chains back as `before` (what apply or remove found)."""
    _served("restore", chains, before)


def restore_here(chains: ChainSet, before: dict[str, Any]) -> None:
    """_restore in this process."""
    iptc = _iptc()
    table = _open(iptc, chains.table, chains.family)
    ipv6 = _ipv6(chains)
    previous = {chain: None if before[chain] is None else [_build(iptc, s, ipv6) for s in before[chain]] for chain, _ in chains.chains}
    _write(iptc, table, chains, previous)
    table.commit()
    table.autocommit = True


def counters(chains: ChainSet) -> list[tuple[int, int]] | None:
    """Packets and bytes of each of our rules, in the order of `chains.rules`; None when our chains do not hold them."""
    answer = _served("counters", chains)
    return None if answer is None else [(packets, size) for packets, size in answer]  # JSON's lists from the helper


def counters_here(chains: ChainSet) -> list[tuple[int, int]] | None:
    """counters in this process."""
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


#: Each operation as done in the process that serves the family's tables; the helper process answers from this table too.
HERE: dict[str, Callable[[ChainSet, Any], Any]] = {
    "apply": lambda chains, _before: apply_here(chains),
    "remove": lambda chains, _before: remove_here(chains),
    "restore": restore_here,
    "counters": lambda chains, _before: counters_here(chains),
}


def _served(operation: str, chains: ChainSet, before: dict[str, Any] | None = None) -> Any:
    """`operation` where `chains.family`'s tables are served: in this process, or in the helper (one family a process)."""
    if nat_helper.served_elsewhere(chains.family):
        return nat_helper.call(operation, chains, before)
    return HERE[operation](chains, before)
