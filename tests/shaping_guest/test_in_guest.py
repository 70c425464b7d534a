"""Run ``inner/`` (the fw-path tests) inside the stock-kernel guest; all must pass."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
INNER = Path(__file__).resolve().parent / "inner"


def _run_inner(run_in_host_guest, selector: str, timeout: float = 900,
               env: dict[str, str] | None = None, select: str | None = None):
    targets = [t if t.startswith(("tests/", "/")) else str(INNER / t) for t in selector.split()]
    run = run_in_host_guest(
        [sys.executable, "-m", "pytest", *targets, *(["-k", select] if select else []),
         "-p", "no:cacheprovider",
         "-q", "-rA", "-s", "-o", "addopts="],
        cwd=REPO, env={"HPG_GUEST": "1", "PYTHONUNBUFFERED": "1", **(env or {})},
        timeout=timeout)
    print(f"guest: boot-to-command {run.boot_to_command:.1f}s, whole run {run.total:.1f}s")
    print(run.output[-6000:])
    summary = run.output.strip().splitlines()[-1] if run.output.strip() else ""
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)",
                                               summary)}
    return run, counts


def test_fw_kernel_path_in_guest(run_in_host_guest):
    run, counts = _run_inner(run_in_host_guest, "test_fw_kernel_path.py")
    assert run.rc == 0, run.output[-4000:]
    assert counts.get("passed") == 2 and set(counts) == {"passed"}, run.output[-4000:]


def test_hookpack_fw_mode_in_guest(run_in_host_guest):
    run, counts = _run_inner(run_in_host_guest, "test_hookpack_fw.py")
    assert run.rc == 0, run.output[-4000:]
    assert counts.get("passed") == 5 and set(counts) == {"passed"}, run.output[-4000:]


def test_floods_and_vlan_aware_bridge_in_guest(run_in_host_guest):
    """Issue 16 on the stock kernel (cls_bpf chosen by auto), in one boot: the host's raw
    and 802.1Q floods and the routed NIC, and a VLAN-aware bridge (not on the host
    kernel). The rest of test_classifier_netns.py (QinQ, UDP, self-healing, migration,
    the openvswitch refusal) does not depend on the kernel's classifier modules and runs
    on the host only: a TCG guest on the shared machine needs ~1.5 min per flood test."""
    run, counts = _run_inner(
        run_in_host_guest, "tests/shaping/test_classifier_netns.py "
        f"{INNER / 'test_vlan_bridge.py'}", timeout=1500,
        # a Python flood in a TCG guest on a loaded 2-core machine reaches a few Mbit/s:
        # a 1 Mbit class, and an unshaped flood must beat 3 Mbit/s
        env={"HP_FLOOD_LIMIT": "1", "HP_FLOOD_ESCAPE": "3"},
        select="raw or vlan or routed")
    assert run.rc == 0, run.output[-4000:]
    assert counts.get("passed") == 3 + 2 and set(counts) == {"passed"}, run.output[-4000:]


# What a TCG guest's fake VMs can carry on this machine is ~30-40 Mbit/s in all
# (measured: see the report), so the fw-path accuracy run uses low rates; the
# 100 and 500 Mbit runs are on the host kernel (CLASSIFY path).
GUEST_ACCURACY_ENV = {
    "SHAPEPROOF_CLASSIFIER": "fw",
    "SHAPEPROOF_RATES": "10,100",
    "SHAPEPROOF_ISOLATION": "20,60",
    "SHAPEPROOF_UNSHAPED_MIN": "120",
    "SHAPEPROOF_SECONDS": "5",
}


def test_accuracy_fw_in_guest(run_in_host_guest):
    run, counts = _run_inner(run_in_host_guest, "tests/shaping_accuracy/test_accuracy.py",
                             timeout=1500, env=GUEST_ACCURACY_ENV)
    assert run.rc == 0, run.output[-4000:]
    assert counts.get("passed") == 5 and set(counts) == {"passed"}, run.output[-4000:]


# Tests of tests/shaping/ that are about the host kernel (no cls_fw there) or the
# CLASSIFY path by design; their fw counterparts are in inner/test_hookpack_fw.py.
HOST_KERNEL_ONLY = (
    "test_forcing_fw_where_cls_fw_is_missing_fails_cleanly",  # expects cls_fw missing
    "test_auto_classifier_probe_and_doctor",  # expects the host's probe result
    "test_hookpack_doctor_shows_the_probe",  # same, and needs Ganeti installed
    "test_apply_creates_exactly_the_desired_objects",  # asserts the bpf filter
    # counts bpf-mode writes for a hotplugged NIC; fw mode also writes the tap's fw
    # filter: checked in inner/test_hookpack_fw.py
    "test_changing_one_instance_touches_only_its_objects",
)


NETNS_SUITE = "tests/shaping/test_shaping_netns.py"


def host_selection(deselect: str) -> tuple[int, int]:
    """(selected, deselected) of NETNS_SUITE with ``-k deselect``, collected here on the
    host from the same checkout the guest runs: the exact count the guest must pass.
    Every HOST_KERNEL_ONLY name must still name a test (a stale name deselects nothing
    and would hide a renamed test)."""
    argv = [sys.executable, "-m", "pytest", NETNS_SUITE, "--collect-only", "-q",
            "-p", "no:cacheprovider", "-o", "addopts="]
    every = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in HOST_KERNEL_ONLY:
        assert f"::{name}" in every, f"{name} is no test of {NETNS_SUITE} any more"
    chosen = subprocess.run([*argv, "-k", deselect], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    found = re.search(r"(\d+)/\d+ tests? collected \((\d+) deselected\)", chosen)
    assert found, chosen[-2000:]
    return int(found.group(1)), int(found.group(2))


def test_shaping_netns_suite_with_fw_in_guest(run_in_host_guest):
    """The shaping engineer's own netns tests, classifier forced to fw (force_fw plugin):
    exactly the tests the host selects pass in the guest, none skipped or deselected
    beyond HOST_KERNEL_ONLY."""
    deselect = " and ".join(f"not {name}" for name in HOST_KERNEL_ONLY)
    selected, deselected = host_selection(deselect)
    run = run_in_host_guest(
        [sys.executable, "-m", "pytest", NETNS_SUITE,
         "-p", "tests.shaping_guest.force_fw", "-k", deselect, "-p", "no:cacheprovider",
         "-q", "-rA", "-o", "addopts=", "--tb=short"],
        cwd=REPO, env={"HPG_GUEST": "1"}, timeout=1200)
    print(f"guest: boot-to-command {run.boot_to_command:.1f}s, whole run {run.total:.1f}s")
    print(run.output[-3000:])
    summary = run.output.strip().splitlines()[-1] if run.output.strip() else ""
    counts = {k: int(v) for v, k in re.findall(
        r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", summary)}
    assert run.rc == 0, run.output[-5000:]
    assert counts == {"passed": selected, "deselected": deselected}, (summary, selected)
    forced = re.search(r"^force_fw: (\d+) CLI results checked as fw$", run.output, re.MULTILINE)
    assert forced and int(forced.group(1)) >= 10, run.output[-3000:]


def test_latency_under_load_in_guest(run_in_host_guest):
    """bench/shaping_latency.py on the stock kernel: the bounded leaf there is fq_codel;
    the default pfifo is measured beside it in the same run. Asserted: fq_codel keeps the
    p95 RTT under a fifth of pfifo's (measured here 21-40 ms against 452-1874 ms). The
    issue's absolute target (p95 <= 20 ms) is a machine figure, not asserted: under TCG on
    this shared 2-core machine even an idle guest's p95 varies; the bench records it."""
    import json

    run = run_in_host_guest([sys.executable, str(REPO / "bench" / "shaping_latency.py"),
                             "--seconds", "10"], cwd=REPO, env={"PYTHONUNBUFFERED": "1"},
                            timeout=600)
    print(f"guest: boot-to-command {run.boot_to_command:.1f}s, whole run {run.total:.1f}s")
    print(run.output[-3000:])
    assert run.rc == 0, run.output[-4000:]
    (line,) = [x for x in run.output.splitlines() if x.startswith("RESULT ")]
    default, bounded = json.loads(line[len("RESULT "):])["modes"]
    assert bounded["leaf"].startswith("fq_codel"), bounded
    assert default["leaf"].startswith("pfifo"), default
    assert bounded["loss"] <= 0.02, bounded
    assert bounded["p95_ms"] * 5 <= default["p95_ms"], (default, bounded)
