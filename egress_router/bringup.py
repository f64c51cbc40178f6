"""`init`: apply a NetworkPlan to the pod, all or nothing, and announce the address."""

from __future__ import annotations

import logging

from egress_router import arp, nat, sysctl
from egress_router.errors import ApplyError
from egress_router.netlink import Journal, PodNetwork
from egress_router.plan import NetworkPlan, render_plan

log = logging.getLogger(__name__)


def _egress_link(net: PodNetwork, plan: NetworkPlan) -> int:
    index = net.link_index(plan.interface)
    if index is not None:
        return index
    if plan.create_macvlan is None:
        raise ApplyError(
            f"EGRESS_INTERFACE: no interface '{plan.interface}' in this pod; add the annotation "
            "pod.network.openshift.io/assign-macvlan: \"true\", attach one with Multus (and set EGRESS_INTERFACE), "
            "or set EGRESS_MACVLAN_MASTER to the node interface to create it on"
        )
    return net.create_macvlan(plan.interface, plan.create_macvlan)


def apply_plan(plan: NetworkPlan) -> bool:
    """Returns whether anything changed. On failure, undoes what was done and raises ApplyError."""
    for line in render_plan(plan).splitlines():
        log.debug("plan: %s", line)
    journal = Journal()
    net = PodNetwork(journal)
    try:
        index = _egress_link(net, plan)
        changed = [
            net.set_up(index, plan.interface),
            net.set_only_address(index, plan.interface, plan.address),
            net.set_gateway_route(index, plan.interface, plan.gateway),
            net.set_default_route(index, plan.interface, plan.gateway),
            *[sysctl.set_sysctl(journal, key, value) for key, value in plan.sysctls],
            plan.nat_rules is not None and nat.apply_nat(plan.nat_rules),
        ]
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
            "%s is %s via %s%s",
            plan.interface,
            plan.address,
            plan.gateway,
            "" if plan.nat_rules is None else f", {len(plan.nat_rules)} NAT rules installed",
        )
    else:
        log.info("nothing to change: %s is already set up as planned", plan.interface)
    arp.announce_now_and_later(plan.interface, plan.address.ip)
    return any(changed)
