"""The two NAT backends in real pods: auto's choice, switching, every rule form nftables gets, rollback."""

from __future__ import annotations

import glob
import json
import os
import sys

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from tests.lab.conftest import NAT_BACKENDS, Pod
from tests.nat_cases import SAMPLES

RULES = "80 tcp 203.0.113.25\n203.0.113.50"


def redirect(pod: Pod, **env: str) -> str:
    done = pod.init(EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=t.GATEWAY_IP, EGRESS_DESTINATION=RULES, EGRESS_ROUTER_MODE="init", **env)
    assert done.returncode == 0, done.stderr
    return done.stderr


def iptc_folder() -> str:
    import iptc

    return os.path.dirname(iptc.__file__)


def libnftables() -> str:
    found = sorted(glob.glob("/usr/lib/*/libnftables.so.1") + glob.glob("/usr/lib*/libnftables.so.1"))
    assert found, "libnftables.so.1 not found"
    return os.path.realpath(found[0])


def init_without(lab: Lab, pod: Pod, hidden: str, mount: str, **env: str) -> tuple[int, str]:
    """Run init in a mount namespace where `hidden` is covered (a tmpfs over a folder, /dev/null over a file)."""
    variables = {"EGRESS_SOURCE": pod.source, "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_DESTINATION": RULES, "EGRESS_ROUTER_MODE": "init"}
    assignments = " ".join(f"{k}='{v}'" for k, v in {**variables, **env}.items())
    script = f"{mount} {hidden} && env {assignments} {sys.executable} -m egress_router init"
    done = lab.run_in(pod.role, ["unshare", "-m", "sh", "-c", script], env=pod.env())
    return done.returncode, done.stderr


def test_auto_takes_legacy_iptables_where_the_kernel_and_the_image_have_it(lab: Lab, pod: Pod) -> None:
    assert os.path.exists("/proc/net/ip_tables_names")  # this machine's kernel has legacy iptables
    log = redirect(pod)
    assert "NAT backend: iptables (EGRESS_NAT_BACKEND=auto: legacy iptables is in the kernel and the image)" in log
    assert "-A EGRESS-ROUTER-SNAT" in pod.snapshot()["nat"]


def test_auto_takes_nftables_in_an_image_without_python_iptables(lab: Lab, pod: Pod) -> None:
    code, log = init_without(lab, pod, iptc_folder(), "mount -t tmpfs none")
    assert code == 0, log
    assert "NAT backend: nftables (EGRESS_NAT_BACKEND=auto: cannot load python-iptables" in log
    state = pod.snapshot()
    assert "EGRESS-ROUTER" not in state["nat"] + state["mangle"] and "jump EGRESS-ROUTER-DNAT" in state["nftables"]
    assert lab.tcp("client", pod.ip, 80).client == pod.source
    assert lab.tcp("client2", pod.ip, 9000).client == pod.source  # the reply marks work through nftables too


@pytest.mark.parametrize(
    ("backend", "hidden", "mount", "message"),
    [
        ("nftables", "lib", "mount --bind /dev/null", "EGRESS_NAT_BACKEND: nftables cannot be used here: cannot load libnftables.so.1 ("),
        ("iptables", "iptc", "mount -t tmpfs none", "EGRESS_NAT_BACKEND: iptables cannot be used here: cannot load python-iptables ("),
    ],
)
def test_a_backend_the_machine_lacks_is_explained_and_changes_nothing(
    lab: Lab, pod: Pod, backend: str, hidden: str, mount: str, message: str
) -> None:
    before = pod.snapshot()
    code, log = init_without(lab, pod, libnftables() if hidden == "lib" else iptc_folder(), mount, EGRESS_NAT_BACKEND=backend)
    assert code == 1
    assert log.startswith(f"egress-router init: error: {message}")
    assert f"(set it to {'iptables' if backend == 'nftables' else 'nftables'} or auto); nothing was changed" in log
    assert "Traceback" not in log and len(log.splitlines()) == 1
    assert pod.snapshot() == before


def test_iptables_works_in_an_image_without_libnftables(lab: Lab, pod: Pod) -> None:
    """There is nothing of ours to remove from nftables where it cannot even be listed."""
    code, log = init_without(lab, pod, libnftables(), "mount --bind /dev/null", EGRESS_NAT_BACKEND="iptables")
    assert code == 0, log
    assert lab.tcp("client", pod.ip, 80).client == pod.source


@pytest.mark.parametrize("to", NAT_BACKENDS)
def test_switching_backends_removes_the_other_backends_rules(lab: Lab, pod: Pod, to: str) -> None:
    other = next(backend for backend in NAT_BACKENDS if backend != to)
    redirect(pod, EGRESS_NAT_BACKEND=other)
    log = redirect(pod, EGRESS_NAT_BACKEND=to)
    where = "nftables table ip egress_router" if other == "nftables" else "iptables"
    assert f"removed our mangle rules from {where}" in log and f"removed our nat rules from {where}" in log
    state = pod.snapshot()
    if to == "nftables":
        assert "EGRESS-ROUTER" not in state["nat"] + state["mangle"] and "jump EGRESS-ROUTER-DNAT" in state["nftables"]
    else:
        assert state["nftables"] == "" and "-A PREROUTING -j EGRESS-ROUTER-DNAT" in state["nat"]  # our table is gone
    assert lab.tcp("client", pod.ip, 80).client == pod.source
    assert lab.tcp("client2", pod.ip, 9000).client == pod.source
    assert "nothing to change" in redirect(pod, EGRESS_NAT_BACKEND=to)


ROUND_TRIP = """
import json, subprocess, sys
from egress_router.init import nft, nft_rules
from tests.nat_cases import SAMPLES
chains = SAMPLES[sys.argv[1]]
assert nft.apply_chains(chains), "first apply changed nothing"
assert not nft.apply_chains(chains), "the kernel's listing differs from what was written"
assert nft.counters(chains) == [(0, 0)] * len(chains.rules)
assert nft.remove_chains(chains) and not nft.remove_chains(chains)
assert subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout == ""
subprocess.run(["nft", "-f", "-"], input=nft_rules.render_text(chains), text=True, check=True)
assert not nft.apply_chains(chains), "the text is not the same rules as the JSON"
print(json.dumps(nft.counters(chains)))
"""


@pytest.mark.parametrize("sample", SAMPLES)
def test_every_rule_form_reads_back_as_written(lab: Lab, pod: Pod, sample: str) -> None:
    done = lab.run_in(pod.role, [sys.executable, "-c", ROUND_TRIP, sample], env=pod.env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[0, 0]] * len(SAMPLES[sample].rules)


IPTABLES_ROUND_TRIP = """
import subprocess, sys
from egress_router.init import nat
from tests.nat_cases import SAMPLES
chains = SAMPLES[sys.argv[1]]
assert nat.apply_chains(chains) and not nat.apply_chains(chains)
assert nat.counters(chains) == [(0, 0)] * len(chains.rules)
save = "ip6tables-legacy-save" if chains.family == "ipv6" else "iptables-legacy-save"
print(subprocess.run([save, "-t", chains.table], capture_output=True, text=True).stdout)
assert nat.remove_chains(chains) and not nat.remove_chains(chains)
"""


@pytest.mark.parametrize("sample", ["nat-ipv4", "nat-ipv6"])
def test_the_iptables_backend_takes_both_families(lab: Lab, pod: Pod, sample: str) -> None:
    done = lab.run_in(pod.role, [sys.executable, "-c", IPTABLES_ROUND_TRIP, sample], env=pod.env())
    assert done.returncode == 0, done.stderr
    expected = "[2001:db8::25]:80" if sample == "nat-ipv6" else "203.0.113.26:80"
    assert f"-j DNAT --to-destination {expected}" in done.stdout


SWITCH_AND_ROLL_BACK = """
import subprocess
from egress_router.init import nat
from egress_router.init.journal import Journal
from egress_router.init.nat_backend import Backend
from egress_router.init.plan import mark_chains
assert not nat.apply_chains(mark_chains())  # in place through iptables
journal = Journal()
assert Backend("nftables", "test").install(mark_chains(), journal)
saved = subprocess.run(["iptables-legacy-save", "-t", "mangle"], capture_output=True, text=True).stdout
assert "EGRESS-ROUTER-MARK" not in saved, saved
assert not journal.rollback()
"""


def test_rolling_back_a_switch_puts_the_old_backends_rules_back(lab: Lab, pod: Pod) -> None:
    marks = lab.run_in(pod.role, [sys.executable, "-c", "from egress_router.init import nat, plan; nat.apply_chains(plan.mark_chains())"])
    assert marks.returncode == 0, marks.stderr
    before = pod.snapshot()
    done = lab.run_in(pod.role, [sys.executable, "-c", SWITCH_AND_ROLL_BACK], env=pod.env())
    assert done.returncode == 0, done.stderr
    assert pod.snapshot() == before  # iptables' chains back, our nftables table gone
