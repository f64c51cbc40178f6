"""NAT rules in chains the router owns, committed to the kernel in one transaction (python-iptables)."""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
import types
from typing import Any

from egress_router.errors import ApplyError
from egress_router.plan import OWNED_CHAINS, NatRule

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
    except Exception as error:  # noqa: BLE001 - any import failure means the same thing to the user
        raise ApplyError(f"cannot load python-iptables ({error}); is the iptables package installed?") from error
    return iptc


def _to_iptc(iptc: Any, rule: NatRule) -> Any:
    built = iptc.Rule()
    if rule.in_interface:
        built.in_interface = rule.in_interface
    if rule.out_interface:
        built.out_interface = rule.out_interface
    if rule.protocol:
        built.protocol = rule.protocol
        if rule.dport is not None:
            match = built.create_match(rule.protocol)
            match.dport = str(rule.dport)
    target = built.create_target(rule.target)
    if rule.target == "DNAT":
        target.to_destination = rule.to
    else:
        target.to_source = rule.to
    return built


def _jump(iptc: Any, chain: str) -> Any:
    rule = iptc.Rule()
    rule.create_target(chain)
    return rule


def apply_nat(rules: tuple[NatRule, ...]) -> bool:
    """Make our chains hold exactly `rules`; returns False when they already did (nothing written)."""
    iptc = _iptc()
    try:
        table = iptc.Table(iptc.Table.NAT)
        table.autocommit = False
        table.refresh()
        wanted = {chain: [_to_iptc(iptc, r) for r in rules if r.chain == chain] for chain, _ in OWNED_CHAINS}
        if _already_applied(iptc, table, wanted):
            log.debug("NAT rules already in place (%d rules)", len(rules))
            return False
        for chain_name, parent_name in OWNED_CHAINS:
            chain = iptc.Chain(table, chain_name) if table.is_chain(chain_name) else table.create_chain(chain_name)
            chain.flush()
            for rule in wanted[chain_name]:
                chain.append_rule(rule)
            parent = iptc.Chain(table, parent_name)
            if not any(_shape(iptc, r) == {"target": chain_name} for r in parent.rules):
                parent.insert_rule(_jump(iptc, chain_name))
        table.commit()
        table.refresh()
        table.autocommit = True
        log.debug("NAT: %d rules committed in one transaction", len(rules))
    except iptc.IPTCError as error:
        raise ApplyError(f"cannot install NAT rules: {error} (is the init container privileged, with the iptables modules loaded?)") from error
    return True


def _shape(iptc: Any, rule: Any) -> dict[str, Any]:
    """A rule as comparable data: python-iptables' own equality sees stray bytes in SNAT targets."""
    decoded = dict(iptc.easy.decode_iptc_rule(rule))
    decoded.pop("counters", None)
    return decoded


def _already_applied(iptc: Any, table: Any, wanted: dict[str, list[Any]]) -> bool:
    for chain_name, parent_name in OWNED_CHAINS:
        if not table.is_chain(chain_name):
            return False
        current = [_shape(iptc, r) for r in iptc.Chain(table, chain_name).rules]
        if current != [_shape(iptc, r) for r in wanted[chain_name]]:
            return False
        jumps = [r for r in iptc.Chain(table, parent_name).rules if _shape(iptc, r) == {"target": chain_name}]
        if len(jumps) != 1:
            return False
    return True
