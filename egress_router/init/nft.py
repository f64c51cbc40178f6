"""EDGE: NAT and reply marks in the router's own nftables table (libnftables), one transaction per chain set.

The same contract as init/nat.py (python-iptables): apply_chains writes only when the kernel holds something
else, records how to put the old chains back in the journal, and counters() reads each rule's counter.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from egress_router.errors import ApplyError
from egress_router.init import libnftables, nft_rules
from egress_router.init.libnftables import NftError
from egress_router.init.nft_rules import TABLE, Chain
from egress_router.init.plan import ChainSet

if TYPE_CHECKING:
    from egress_router.init.journal import Journal

log = logging.getLogger(__name__)

render = nft_rules.render_text


def _found(family: str) -> dict[str, Chain]:
    """Our table's chains now (empty when there is no table)."""
    tables = libnftables.run([{"list": {"tables": {"family": family}}}])
    if not any(item.get("table", {}).get("name") == TABLE for item in tables):
        return {}
    return nft_rules.read_table(libnftables.run([{"list": {"table": {"family": family, "name": TABLE}}}]), family)


def problem() -> str | None:
    """Why nftables cannot be used here (no library, a kernel without nf_tables, no privilege), or None."""
    try:
        libnftables.load()
        libnftables.run([{"list": {"tables": None}}])
    except NftError as error:
        return str(error)
    return None


def apply_chains(chains: ChainSet, journal: Journal | None = None) -> bool:
    """Make our chains for `chains` hold exactly its rules, in one transaction; False when they already did."""
    family = nft_rules.nft_family(chains)
    wanted = nft_rules.layout(chains)
    try:
        found = _found(family)
        if nft_rules.holds(found, wanted):
            log.debug("%s rules already in place (%d rules)", chains.table, len(chains.rules))
            return False
        libnftables.run(nft_rules.write_batch(family, found, {chain.name: chain for chain in wanted}))
    except NftError as error:
        raise ApplyError(
            f"cannot install {chains.table} rules in nftables table {family} {TABLE}: {error} (is the init container privileged?)"
        ) from error
    log.debug("%s: %d rules committed in one transaction", chains.table, len(chains.rules))
    if journal is not None:
        before = {chain.name: found.get(chain.name) for chain in wanted}
        journal.record(f"{chains.table} rules", lambda: _write(family, before))
    return True


def remove_chains(chains: ChainSet, journal: Journal | None = None) -> bool:
    """Take our chains for `chains` out (the table too once it is empty); False when there were none.

    Where nftables cannot even be listed (no libnftables, a kernel without nf_tables) there is nothing of ours in it.
    """
    family = nft_rules.nft_family(chains)
    names = [chain.name for chain in nft_rules.layout(chains)]
    try:
        found = _found(family)
    except NftError as error:
        log.debug("no nftables rules of ours to look for: %s", error)
        return False
    if not any(name in found for name in names):
        return False
    try:
        libnftables.run(nft_rules.write_batch(family, found, dict.fromkeys(names)))
    except NftError as error:
        raise ApplyError(f"cannot remove our {chains.table} rules from nftables table {family} {TABLE}: {error}") from error
    log.info("removed our %s rules from nftables table %s %s", chains.table, family, TABLE)
    if journal is not None:
        before = {name: found.get(name) for name in names}
        journal.record(f"{chains.table} rules in nftables", lambda: _write(family, before))
    return True


def _write(family: str, chains: dict[str, Chain | None]) -> None:
    """Put `chains` back as they were (None: absent); the journal's undo step."""
    libnftables.run(nft_rules.write_batch(family, _found(family), chains))


def counters(chains: ChainSet) -> list[tuple[int, int]] | None:
    """Packets and bytes of each of our rules, in the order of `chains.rules`; None when our chains do not hold them."""
    try:
        return nft_rules.counters(_found(nft_rules.nft_family(chains)), chains)
    except NftError:
        return None
