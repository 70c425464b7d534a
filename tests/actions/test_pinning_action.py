"""The pinning action and its /proc read-back on synthetic trees (no QEMU needed).

Applying affinities and QMP need a real QEMU: tests/pinning_qemu/.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from hookpack import registry
from hookpack.actions.pinning.allocate import PINNED, Plan, Policy
from hookpack.actions.pinning.node import observe_node, runtime_cpu_mask, trim_moves
from hookpack.actions.pinning.threads import smp_vcpus
from hookpack.dispatch import dispatch
from hookpack.result import Outcome
from tests.helpers.fakehost import write_qemu, write_sysfs
from tests.helpers.pinning import start_env, write_config


@pytest.fixture
def host(tmp_path):
    write_sysfs(tmp_path / "sys", nodes=2, cores_per_node=2, threads=2)
    return tmp_path


def config_for(root: Path, pinning: str = "") -> Path:
    return write_config(root / "hookpack.toml", root / "kvm", root / "run", pinning,
                        sysfs_root=str(root / "sys"), proc_root=str(root / "proc"))


def run_hook(root: Path, environ: dict[str, str], pinning: str = ""):
    result = dispatch(environ, config=config_for(root, pinning), stream=io.StringIO())
    return [r.result for r in result.runs if r.spec.name == "pinning"]


def test_registered_post_host_only_and_off_by_default():
    spec = registry.by_name("pinning")
    assert spec is not None and not spec.enabled_by_default and spec.cli
    assert spec.roles == ("host",) and spec.phases == ("post",)
    for hpath in ("instance-start", "instance-reboot", "instance-migrate", "instance-failover"):
        assert spec in registry.candidates(hpath, "post")
        assert spec not in registry.candidates(hpath, "pre")


def test_cpu_mask_set_is_left_alone(host):
    (result,) = run_hook(host, start_env("web1.example.test", cpu_mask="1:2"))
    assert result.outcome is Outcome.SKIPPED
    assert result.message == "cpu_mask '1:2' set: left alone"


def test_not_running_here_is_a_clean_skip(host):
    (result,) = run_hook(host, start_env("web1.example.test"))
    assert result.outcome is Outcome.SKIPPED
    assert "no running QEMU" in result.message


def test_runs_only_on_the_migration_target(host):
    environ = start_env("web1.example.test", node="node9.example.test",
                        hpath="instance-migrate")
    assert run_hook(host, environ) == []  # this node (node1) is not the target


def test_bad_reserved_cpus_is_a_config_failure(host):
    (result,) = run_hook(host, start_env("web1.example.test"), 'reserved_cpus = "3-1"')
    assert result.outcome is Outcome.FAILED and "reserved_cpus" in result.message


def test_dead_pid_file_and_reused_pid_are_not_instances(host):
    kvm = host / "kvm"
    write_qemu(host / "proc", kvm, "a.example.test", 100, 1, {100: {0, 1}, 101: {3}})
    (kvm / "pid" / "gone.example.test").write_text("999\n")  # no such process
    (kvm / "pid" / "other.example.test").write_text("100\n")  # pid of a.example.test
    (kvm / "pid" / "bad..name").write_text("100\n")
    state = observe_node(host / "sys", kvm, host / "proc")
    assert list(state.observed) == ["a.example.test"]


def test_read_back_unnamed_threads(host):
    proc, kvm = host / "proc", host / "kvm"
    # pinned: emulator threads share one CPU (0), vCPUs alone on 2 and 3
    write_qemu(proc, kvm, "p.example.test", 100, 2, {100: {0}, 101: {0}, 102: {2}, 103: {3}})
    # floating
    write_qemu(proc, kvm, "f.example.test", 200, 2, {200: {0, 1}, 201: {0, 1}, 202: {0, 1}})
    # Ganeti cpu_mask "5:6": vCPUs pinned by Ganeti; counted as taken, left alone
    write_qemu(proc, kvm, "m.example.test", 300, 2, {300: set(range(16)), 301: {5}, 302: {6}},
               cpu_mask="5:6")
    state = observe_node(host / "sys", kvm, proc)
    assert state.taken() == {2: "p.example.test", 3: "p.example.test",
                             5: "m.example.test", 6: "m.example.test"}
    assert state.vcpus() == 6
    assert state.cpu_masks["m.example.test"] == "5:6"


def test_read_back_named_threads(host):
    """With -name ...,debug-threads=on QEMU names its vCPU threads: used as such."""
    proc, kvm = host / "proc", host / "kvm"
    write_qemu(proc, kvm, "n.example.test", 100, 2, {100: {1}, 101: {1}, 102: {4}, 103: {0, 1}},
               names={100: "qemu-system-x86", 101: "call_rcu", 102: "CPU 0/KVM",
                      103: "CPU 1/TCG"})
    obs = observe_node(host / "sys", kvm, proc).observed["n.example.test"]
    assert obs.named and obs.vcpu_tids == (102, 103) and obs.dedicated == (4,)


def test_new_dedication_trimmed_from_others(host):
    proc, kvm = host / "proc", host / "kvm"
    write_qemu(proc, kvm, "f.example.test", 200, 1, {200: {0, 1, 2}, 201: {0, 1, 2}})
    write_qemu(proc, kvm, "m.example.test", 300, 1, {300: {0, 1, 2}, 301: {0, 1, 2}},
               cpu_mask="0-2")
    state = observe_node(host / "sys", kvm, proc)
    plan = Plan("new.example.test", PINNED, vcpu_cpus=(2,), emulator=frozenset({0}), node=0)
    moves = trim_moves(state, plan, skip=set())
    assert [(m.instance, m.tid, sorted(m.new)) for m in moves] == [
        ("f.example.test", 200, [0, 1]), ("f.example.test", 201, [0, 1])]


@pytest.mark.parametrize(("argv", "n"), [
    (["qemu", "-smp", "4"], 4), (["qemu", "-smp", "cpus=3,sockets=1"], 3),
    (["qemu", "-smp", "2,sockets=2,cores=1"], 2), (["qemu", "-m", "1"], 1),
    (["qemu", "-smp", "sockets=2"], None),
])
def test_smp_parsing(argv, n):
    assert smp_vcpus(tuple(argv)) == n


def test_runtime_cpu_mask_shapes(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.runtime").write_text('[["kvm"], [], {"cpu_mask": "0-1"}, []]\n')
    (tmp_path / "conf" / "b.runtime").write_text("not json")
    assert runtime_cpu_mask(tmp_path, "a") == "0-1"
    assert runtime_cpu_mask(tmp_path, "b") == "all"
    assert runtime_cpu_mask(tmp_path, "missing") == "all"


def test_cli_show(host):
    proc, kvm = host / "proc", host / "kvm"
    write_qemu(proc, kvm, "p.example.test", 100, 2, {100: {0}, 101: {0}, 102: {2}, 103: {3}})
    out = subprocess.run([sys.executable, "-m", "hookpack", "pinning", "show", "--config",
                          str(config_for(host))], capture_output=True, text=True,
                         check=True).stdout
    assert "host: 2 NUMA node(s), 8 online CPU(s), 2 thread(s) per core" in out
    assert "NUMA node 0: CPUs 0-1,4-5" in out
    assert "p.example.test: pid 100, 2 vCPU(s), 1:1 on CPU(s) 2,3; other threads on 0" in out


def test_policy_setting_names_match_the_planner():
    from hookpack.actions.pinning.action import SETTINGS, policy_from

    defaults = {k: f.default for k, f in SETTINGS.items()}
    assert policy_from(defaults) == Policy()


def test_two_cpu_host_second_run_keeps_both(tmp_path):
    """2 CPUs: a is pinned on CPU 1 (emulator threads on 0), b floats on CPU 0 (all its
    threads there). Running the hook again for either changes nothing."""
    from hookpack.actions.pinning.node import pin_instance

    write_sysfs(tmp_path / "sys", nodes=1, cores_per_node=2, threads=1)
    proc, kvm = tmp_path / "proc", tmp_path / "kvm"
    write_qemu(proc, kvm, "a.example.test", 100, 1, {100: {0}, 101: {0}, 102: {1}})
    write_qemu(proc, kvm, "b.example.test", 200, 1, {200: {0}, 201: {0}, 202: {0}})
    for name, vcpu in (("a.example.test", 102), ("b.example.test", 202)):
        state = observe_node(tmp_path / "sys", kvm, proc, {name: [vcpu]})
        outcome = pin_instance(state, name, Policy())
        assert outcome.moves == [], (name, outcome.moves)
    assert outcome.plans[0].reason.startswith("does not fit")
    state = observe_node(tmp_path / "sys", kvm, proc)
    assert state.taken() == {1: "a.example.test"} and state.held() == {0}
