"""The helper process's requests: a plan's chain sets survive the trip through JSON unchanged."""

import json

from egress_router.config.init_settings import load_init_settings
from egress_router.init import nat_helper
from egress_router.init.plan import build_plan


def test_every_chain_set_of_a_dual_stack_plan_round_trips() -> None:
    settings = load_init_settings(
        source="192.168.12.99/24,2001:db8:12::99/64",
        gateway="192.168.12.1,2001:db8:12::1",
        destination="80 tcp 203.0.113.25\n8080 tcp 2001:db8::26 80\n53 udp 2001:db8::27\n203.0.113.50\n2001:db8::50",
        mode="init",
    )
    for chains in build_plan(settings).chain_sets:
        assert nat_helper.decode(json.loads(json.dumps(nat_helper.encode(chains)))) == chains


def test_the_first_family_asked_about_is_this_processs(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(nat_helper, "_here", None)
    assert not nat_helper.served_elsewhere("ipv4")
    assert nat_helper.served_elsewhere("ipv6")
    assert not nat_helper.served_elsewhere("ipv4")
