"""`init`: apply a NetworkPlan to the pod, all or nothing, and announce the address."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from egress_router.config.addresses import FAMILIES, FAMILY_NAMES, IPV6
from egress_router.errors import ApplyError
from egress_router.init import arp, arp_claims, claim, cluster_routes, sysctl
from egress_router.init.cluster_routes import KernelRoute, NoNextHop
from egress_router.init.journal import Journal
from egress_router.init.nat_backend import EDGES, Backend
from egress_router.init.netlink import DadFailed, PodNetwork, PolicyRouting, ipv6_disabled
from egress_router.init.plan import (
    CLUSTER_INTERFACE,
    NAT_CHAINS,
    REPLY_MARK,
    REPLY_RULE_PRIORITY,
    REPLY_TABLE,
    ROUTE_PROTO,
    ChainSet,
    FamilyPlan,
    NetworkPlan,
    mark_chains,
    render_plan,
)

log = logging.getLogger(__name__)


def _egress_link(net: PodNetwork, plan: NetworkPlan) -> int:
    index = net.link_index(plan.interface)
    if index is not None:
        return index
    if plan.create_macvlan is None:
        raise ApplyError(
            f"EGRESS_INTERFACE: no interface '{plan.interface}' in this pod; add the annotation "
            'pod.network.openshift.io/assign-macvlan: "true", attach one with Multus (and set EGRESS_INTERFACE), '
            "or set EGRESS_MACVLAN_MASTER to the node interface to create it on"
        )
    return net.create_macvlan(plan.interface, plan.create_macvlan)


@dataclass(frozen=True)
class ClusterSide:
    """What eth0 keeps for one address family, decided from the pod's routes before anything changes."""

    family: str
    names: dict[int, str]
    reply_routes: tuple[KernelRoute, ...]
    pinned: tuple[KernelRoute, ...]
    kept_now: tuple[KernelRoute, ...]  # REPLY_TABLE as read
    pinned_now: tuple[KernelRoute, ...]  # main-table routes of ours as read


def decide_cluster_side(routing: PolicyRouting, plan: NetworkPlan) -> tuple[ClusterSide, ...]:
    """Read eth0's routes and how each nameserver is reached now, for each family the router moves the default route of;
    raise ApplyError when eth0 has no next hop. A family eth0 has no address of (an IPv4-only pod network under an
    IPv6 egress, say) has nothing arriving to answer and nothing to keep."""
    names = routing.names()
    eth0 = next((index for index, name in names.items() if name == CLUSTER_INTERFACE), None)
    if eth0 is None:
        raise ApplyError(f"no {CLUSTER_INTERFACE} in this pod: the router needs the pod network's interface to answer its clients")
    sides = []
    for family in plan.families:
        if not routing.has_global_address(eth0, family.family):
            name = FAMILY_NAMES[family.family]
            log.debug("%s has no %s address: nothing arrives over %s to answer, its routes stay", CLUSTER_INTERFACE, name, name)
            continue
        sides.append(_decide_family(routing, plan, family, names, eth0))
    return tuple(sides)


def _decide_family(routing: PolicyRouting, plan: NetworkPlan, family: FamilyPlan, names: dict[int, str], eth0: int) -> ClusterSide:
    main, kept = routing.routes(cluster_routes.MAIN_TABLE, family.family), routing.routes(REPLY_TABLE, family.family)
    try:
        default = cluster_routes.eth0_default(main, kept, eth0)
    except NoNextHop:
        others = [r.describe(names) for r in main if r.is_default]
        now = f" (the pod's default route is {', '.join(others)})" if others else ""
        which = "IPv6 " if family.family == IPV6 else ""
        raise ApplyError(
            f"{CLUSTER_INTERFACE} has no {which}default route to keep{now}: replies to clients on other nodes, probes from the node "
            f"and the cluster DNS need {CLUSTER_INTERFACE}'s next hop; let the pod network give {CLUSTER_INTERFACE} the default "
            f'route (with Multus, leave the default route out of the attachment: no "gateway" or default-route for '
            f"{plan.interface}) and the router moves it to {plan.interface} itself"
        ) from None
    nameservers = family.nameservers
    ways = cluster_routes.nameserver_ways(nameservers, {ns: routing.lookup(ns) for ns in nameservers}, main, eth0, names)
    for way in ways:
        log.debug("nameserver %s: %s", way.nameserver, way.reason)
    return ClusterSide(
        family.family,
        names,
        cluster_routes.reply_table(main, kept, eth0),
        cluster_routes.pinned_routes(default, ways, family.cluster_networks),
        tuple(kept),
        tuple(r for r in main if r.proto == ROUTE_PROTO),
    )


def keep_cluster_side(routing: PolicyRouting, sides: tuple[ClusterSide, ...], *, reread: bool = False) -> bool:
    """REPLY_TABLE, the mark rule and the pinned routes of each family: replies and cluster traffic keep leaving by eth0.

    `reread`: read the routes again instead of using what `sides` read (the monitor, long after).
    """
    changed = False
    for side in sides:
        names, family = side.names, side.family
        kept = routing.routes(REPLY_TABLE, family) if reread else list(side.kept_now)
        changed |= routing.replace_routes(kept, *cluster_routes.differences(kept, side.reply_routes), names)
        changed |= routing.set_mark_rule(REPLY_MARK, REPLY_TABLE, REPLY_RULE_PRIORITY, family)
        main = routing.routes(cluster_routes.MAIN_TABLE, family) if reread else list(side.pinned_now)
        ours = [r for r in main if r.proto == ROUTE_PROTO]
        changed |= routing.replace_routes(ours, *cluster_routes.differences(ours, side.pinned), names)
    return changed


def served_before(routing: PolicyRouting, family: str) -> bool:
    """Whether an earlier run served `family`: its reply rule or REPLY_TABLE routes, which nothing but the router makes
    (addresses or a default route on the egress interface could be a Multus attachment's, and are left alone)."""
    return routing.has_mark_rule(REPLY_MARK, REPLY_TABLE, REPLY_RULE_PRIORITY, family) or bool(routing.routes(REPLY_TABLE, family))


def drop_family(net: PodNetwork, routing: PolicyRouting, plan: NetworkPlan, egress: int, family: str, journal: Journal) -> bool:
    """Undo what an earlier run did for a family this plan no longer serves (dual-stack to single, or the other family):
    its address and routes on the egress interface, reply rule, table and routes on eth0, and chains go, and eth0's
    default route of that family (kept in REPLY_TABLE) comes back to the main table."""
    log.info("%s is no longer in EGRESS_SOURCE: removing what an earlier run set up for it", FAMILY_NAMES[family])
    names = routing.names()
    eth0 = next((index for index, name in names.items() if name == CLUSTER_INTERFACE), None)
    kept = routing.routes(REPLY_TABLE, family)
    changed = net.clear_family(egress, plan.interface, family)
    main = routing.routes(cluster_routes.MAIN_TABLE, family)
    ours = [r for r in kept + main if r.proto == ROUTE_PROTO]
    changed |= routing.replace_routes(ours, *cluster_routes.differences(ours, []), names)
    if eth0 is not None and not any(r.is_default for r in main):
        try:
            default = cluster_routes.eth0_default([], kept, eth0)
        except NoNextHop:
            pass
        else:
            back = replace(default, table=cluster_routes.MAIN_TABLE, proto=cluster_routes.RTPROT_BOOT)
            changed |= routing.replace_routes([], [], [back], names)
    changed |= routing.set_mark_rule(REPLY_MARK, REPLY_TABLE, REPLY_RULE_PRIORITY, family, keep=False)
    for chains in (mark_chains(family), ChainSet("nat", NAT_CHAINS, (), family)):
        for edge in EDGES.values():  # whichever backend wrote them
            changed |= edge.remove_chains(chains, journal)
    return changed


def claim_address(net: PodNetwork, index: int, plan: NetworkPlan, family: FamilyPlan) -> bool:
    """Give the egress interface the family's address only when no other host holds it: ARP probes first for
    IPv4, the kernel's duplicate address detection for IPv6 (its culprit named from what we heard meanwhile).
    An address that is already ours (init again in the same pod) is not probed for."""
    ip = family.address.ip
    fresh = ip not in {a.ip for a in net.addresses(index, family.family)}
    if fresh and isinstance(ip, IPv4Address):
        arp_claims.refuse_if_taken(plan.interface, ip, plan.probe)
    changed = False
    if fresh and not isinstance(ip, IPv4Address):  # DAD runs when the address is added: on before that
        changed = any([sysctl.raise_sysctl(net.journal, key, least) for key, least in plan.egress_minimums])
    with arp_claims.DadWitness(plan.interface, ip, listen=fresh) as witness:
        changed |= net.set_only_address(index, plan.interface, family.address)
        try:
            net.wait_for_dad(index, plan.interface, ip)  # IPv4: at once
        except DadFailed as failed:
            culprit = witness.culprit()
            if culprit is None:
                raise
            raise ApplyError(claim.refusal(culprit, plan.interface, "; duplicate address detection failed")) from failed
    return changed


def apply_plan(plan: NetworkPlan, backend: Backend) -> bool:
    """Returns whether anything changed. On failure, undoes what was done and raises ApplyError."""
    for line in render_plan(plan, backend.render).splitlines():
        log.debug("plan: %s", line)
    journal = Journal()
    net = PodNetwork(journal)
    routing = PolicyRouting(net)
    try:
        side = decide_cluster_side(routing, plan)
        index = _egress_link(net, plan)
        served = {f.family for f in plan.families}
        changed = [drop_family(net, routing, plan, index, f, journal) for f in FAMILIES if f not in served and served_before(routing, f)]
        # before it comes up: an up interface solicits router advertisements and would take what they offer at once
        changed += [sysctl.set_sysctl(journal, key, value, missing_ok=True) for key, value in plan.egress_sysctls]
        changed.append(net.set_up(index, plan.interface))  # up without the address, to probe for it
        for family in plan.families:
            changed.append(claim_address(net, index, plan, family))
            changed.append(net.set_gateway_route(index, plan.interface, family.gateway))
        changed.append(keep_cluster_side(routing, side))
        for family in plan.families:
            source = family.address.ip if family.family == IPV6 else None
            changed.append(net.set_default_route(index, plan.interface, family.gateway, source))
        changed += [sysctl.set_sysctl(journal, key, value) for key, value in plan.sysctls]
        log.info("NAT backend: %s (%s)", backend.name, backend.why)
        changed += [backend.install(chains, journal) for chains in plan.chain_sets]
        if plan.egress_sysctls and not ipv6_disabled(plan.interface):
            # what advertisements gave it before they were turned off; last, as nothing can put an advertised default
            # route back as it was (a route added by hand clashes with eth0's IPv6 default route of the same metric)
            changed.append(net.drop_router_advertised(index, plan.interface))
    except BaseException as error:
        steps = len(journal)
        failed = journal.rollback()
        net.close()
        log.debug("rolled back %d change(s) after: %s", steps, error or type(error).__name__)
        if isinstance(error, ApplyError):
            if failed:
                raise ApplyError(f"{error}; rolling back also failed: {'; '.join(failed)}") from error
            undone = f"; {steps} earlier change(s) rolled back, the pod's network is as it was" if steps else "; nothing was changed"
            raise ApplyError(f"{error}{undone}") from error
        raise
    net.close()
    if any(changed):
        log.info(
            "%s is %s%s; replies to what arrives on %s leave through %s",
            plan.interface,
            " and ".join(f"{f.address} via {f.gateway}" for f in plan.families),
            "" if plan.nat_rules is None else f", {len(plan.nat_rules)} NAT rules installed",
            CLUSTER_INTERFACE,
            CLUSTER_INTERFACE,
        )
    else:
        log.info("nothing to change: %s is already set up as planned", plan.interface)
    arp.announce_now_and_later(plan.interface, tuple(f.address.ip for f in plan.families))
    return any(changed)
