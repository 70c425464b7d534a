"""The shaping tests that need the stock Debian kernel, run inside the stock-kernel guest.

One guest boot runs every step below in turn (a TCG boot costs 10-50 s on this machine;
six boots were six times that): each step is its own process with its own timeout, its
output between markers, and each test here asserts on its own step's exit status and
counts. Only the steps of the tests pytest selected are run. The steps share one guest
kernel, so a step that leaves objects behind can fail a later one: that is a leak the
tests must not have.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from vmtestbed.hostguest import GuestRun, HostGuestImage
from vmtestbed.hostguest_plugin import run_once_more_on_lockup

from bench.results import read_result
from tests.helpers.guestpytest import GUEST_PYTEST

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
INNER = Path(__file__).resolve().parent / "inner"
PYTEST = [*GUEST_PYTEST, "-q", "-rA"]


@dataclass
class Step:
    argv: list[str]
    timeout: float
    env: dict[str, str] = field(default_factory=dict)

    def shell(self, name: str) -> str:
        env = {"HPG_GUEST": "1", "PYTHONUNBUFFERED": "1", **self.env}
        command = " ".join(shlex.quote(a) for a in ["env", *(f"{k}={v}" for k, v in
                                                              env.items()), *self.argv])
        return (f"echo '@@step {name} begin'; timeout -k 10 {self.timeout:.0f} {command}; "
                f"echo \"@@step {name} rc=$?\"")


@dataclass
class StepResult:
    rc: int | None  # None: the step never ended (the guest stopped first)
    output: str

    def counts(self) -> dict[str, int]:
        summary = self.output.strip().splitlines()[-1] if self.output.strip() else ""
        return {k: int(v) for v, k in re.findall(
            r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", summary)}


STEPS = {
    "fw_path": Step([*PYTEST, "-s", str(INNER / "test_fw_kernel_path.py"),
                     str(INNER / "test_hookpack_fw.py")], timeout=900),
    # Issue 16 on the stock kernel (cls_bpf chosen by auto): the host's raw and 802.1Q
    # floods and the routed NIC, and a VLAN-aware bridge (not on the host kernel). The
    # rest of test_classifier_netns.py (QinQ, UDP, self-healing, migration, the
    # openvswitch refusal) does not depend on the kernel's classifier modules and runs on
    # the host only. A Python flood in a TCG guest on a loaded 2-core machine reaches a
    # few Mbit/s: a 1 Mbit class, and an unshaped flood must beat 3 Mbit/s.
    "floods": Step([*PYTEST, "-s", "tests/shaping/test_classifier_netns.py",
                    str(INNER / "test_vlan_bridge.py"), "-k", "raw or vlan or routed"],
                   timeout=1500, env={"HP_FLOOD_LIMIT": "1", "HP_FLOOD_ESCAPE": "3"}),
    "latency": Step([sys.executable, str(REPO / "bench" / "shaping_latency.py"),
                     "--seconds", "10", "--no-save"], timeout=600),
}


def split_steps(output: str, names: list[str]) -> dict[str, StepResult]:
    results = {}
    for name in names:
        body = re.search(rf"^@@step {name} begin$(.*?)(?:^@@step {name} rc=(\d+)$|\Z)",
                         output, re.MULTILINE | re.DOTALL)
        if body is None:
            results[name] = StepResult(None, "")
        else:
            rc = body.group(2)
            results[name] = StepResult(int(rc) if rc is not None else None, body.group(1))
    return results


@pytest.fixture(scope="module")
def guest_steps(request, host_guest_image: HostGuestImage) -> dict[str, StepResult]:
    """Boot once, run the steps of the selected tests of this module, split the output."""
    module_tests = {item.name for item in request.session.items
                    if item.module is request.module}
    names = [name for name in STEPS if f"test_{name}_in_guest" in module_tests]
    script = "; ".join(STEPS[name].shell(name) for name in names)
    run: GuestRun = run_once_more_on_lockup(
        host_guest_image, ["sh", "-c", script], cwd=REPO,
        timeout=sum(STEPS[name].timeout + 20 for name in names) + 120)
    print(f"guest: boot-to-command {run.boot_to_command:.1f}s, whole run {run.total:.1f}s, "
          f"steps {names}")
    return split_steps(run.output, names)


def step(guest_steps: dict[str, StepResult], name: str) -> StepResult:
    result = guest_steps[name]
    print(result.output[-6000:])
    assert result.rc == 0, f"step {name}: rc {result.rc}\n{result.output[-4000:]}"
    return result


def test_fw_path_in_guest(guest_steps):
    """inner/: the kernel's fw path by hand (2 tests) and hookpack in fw mode (6: probe,
    per-VM classes with real traffic, forced fw, hotplug, the fw lifecycle, doctor)."""
    counts = step(guest_steps, "fw_path").counts()
    assert counts == {"passed": 8}, counts


def test_floods_in_guest(guest_steps):
    counts = step(guest_steps, "floods").counts()
    assert counts.get("passed") == 3 + 2 and set(counts) <= {"passed", "deselected"}, counts


def test_latency_in_guest(guest_steps):
    """bench/shaping_latency.py on the stock kernel: the bounded leaf there is fq_codel;
    the default pfifo is measured beside it in the same run. Asserted: fq_codel keeps the
    p95 RTT under a fifth of pfifo's (measured here 21-40 ms against 452-1874 ms). The
    issue's absolute target (p95 <= 20 ms) is a machine figure, not asserted: under TCG on
    this shared 2-core machine even an idle guest's p95 varies; the bench records it."""
    result = step(guest_steps, "latency")
    figures = read_result(result.output)
    assert figures, result.output[-3000:]
    default, bounded = figures["modes"]
    assert bounded["leaf"].startswith("fq_codel"), bounded
    assert default["leaf"].startswith("pfifo"), default
    assert bounded["loss"] <= 0.02, bounded
    assert bounded["p95_ms"] * 5 <= default["p95_ms"], (default, bounded)
