"""16 hook runs at once on one node, through the installed entries, while another tool
writes the iptables mangle table; the kernel must end exactly as a full reconcile wants.

One node: a netns laid out like a Ganeti KVM node (bridge br0, uplink up0, a tap per
NIC), Ganeti's KVM runtime dir, a real QEMU per running instance (``-accel kvm -S``,
no guest OS). Each burst prepares the world as Ganeti leaves it before the post hooks
(QEMU started/stopped/restarted, taps created/removed, NIC hotplugged), then runs 16
post hooks for 16 different instances at the same moment with a seeded random mix of
start / stop / migrate source / migrate target / reboot / grow-disk / NIC hotplug
(instance-modify), env dumps derived from tests/fixtures/ganeti-env-samples. Shaping
marks frames in nf_tables (``netdev hookpack``) and classifies with one cls_bpf filter
on the uplink: it writes no iptables rule, so the foreign writer's rules (adds and
deletes in FORWARD and in its own chain, during the bursts) must survive untouched.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest

from hookpack.adapters.qmp import session as qmp_session
from tests.reliability.relnode import DISK_MIB, ROOT, RelNode

pytestmark = [pytest.mark.netns, pytest.mark.qemu, pytest.mark.slow]

BURST = 16
UNIVERSE = 24
ROUNDS = 3
DEADLINE = 15.0  # hookpack's default hook deadline
LEAVE = ("stop", "migrate-source")
STAY = ("reboot", "grow-disk", "modify")
ARRIVE = ("start", "migrate-target")


def mix(rng: random.Random, node: RelNode, names: list[str], first: bool) -> list[tuple]:
    """16 (op, instance) pairs for 16 different instances, every op type at least once."""
    running = node.running()
    stopped = [n for n in names if n not in running]
    if first:
        return [(rng.choice(ARRIVE), n) for n in rng.sample(stopped, BURST)]
    # enough arrivals that the rest of the burst finds running instances to act on
    least = max(3, BURST - len(running))
    arrivals = rng.randint(least, max(least, min(len(stopped), 7)))
    ops = [(op, None) for op in ARRIVE] + [(rng.choice(ARRIVE), None)
                                           for _ in range(arrivals - 2)]
    stay = [*LEAVE, *STAY] + [rng.choice(LEAVE + STAY) for _ in range(BURST - arrivals - 5)]
    out = list(zip([o for o, _ in ops], rng.sample(stopped, arrivals), strict=True))
    out += list(zip(stay, rng.sample(running, len(stay)), strict=True))
    rng.shuffle(out)
    return out


def prepare(node: RelNode, op: str, name: str) -> dict[str, str]:
    """Change the world as the operation did, return the post hook's environment."""
    nics = 1
    if op in ARRIVE:
        nics = 1 + (sum(map(ord, name)) % 2)
        node.start(name, nics)
    elif op in LEAVE:
        node.stop(name)
    elif op == "reboot":
        node.reboot(name)
    elif op == "grow-disk":
        node.grow_disk(name)
    elif op == "modify":
        nics = node.hotplug(name)
    return node.env(op, name, nics)[1]


def foreign_rules(lines: list[str]) -> set[tuple[str, int]]:
    out = set()
    for line in lines:
        words = line.split()
        out.add((words[1], int(words[words.index("-s") + 1].split(".")[3].split("/")[0])))
    return out


def qemu_disk_bytes(node: RelNode, name: str) -> int:
    """The size QEMU itself gives its one disk (QMP query-block): it stays at the size
    QEMU opened the file with until someone sends block_resize, whatever the file is."""
    with qmp_session(node.kvm_dir / "ctrl" / f"{name}.qmp", 10) as qmp:
        blocks = qmp.execute("query-block")
    [size] = [b["inserted"]["image"]["virtual-size"] for b in blocks if b.get("inserted")]
    return int(size)


def test_16_concurrent_hooks_converge_exactly_beside_a_foreign_writer(
        relnode, install_hooks, tmp_path, record_property):
    node = relnode
    hooks = install_hooks(node.config)
    seed = int(os.environ.get("RELLOAD_SEED", random.randrange(1 << 30)))  # noqa: S311
    print(f"\nload seed {seed} (rerun: RELLOAD_SEED={seed})")
    rng = random.Random(seed)  # noqa: S311 - a seeded test mix
    names = [f"ld{i}.example.test" for i in range(UNIVERSE)]
    ipt = node.probe()["iptables"]  # the system's iptables, as another tool uses it
    foreign_expected: set[tuple[str, int]] = set()
    stats = []
    for rnd in range(ROUNDS):
        ops = mix(rng, node, names, first=rnd == 0)
        spec = [{"hpath": node.env(op, name)[0], "phase": "post",
                 "env": prepare(node, op, name)} for op, name in ops]
        spec_file = tmp_path / f"burst{rnd}.json"
        spec_file.write_text(json.dumps(spec))
        stop, ledger = tmp_path / f"stop{rnd}", tmp_path / f"ledger{rnd}.json"
        writer = subprocess.Popen(
            ["ip", "netns", "exec", node.net.ns, sys.executable, "-m",
             "tests.reliability.foreign", ipt, str(seed + rnd), str(stop), str(ledger),
             str(1 + 40 * rnd)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            time.sleep(0.3)  # the writer is busy before the burst starts
            burst = subprocess.run(["ip", "netns", "exec", node.net.ns, sys.executable, "-m",
                                    "tests.reliability.burst", str(hooks), str(spec_file)],
                                   cwd=ROOT, capture_output=True, text=True, timeout=300,
                                   check=False)
        finally:
            stop.touch()
            _, werr = writer.communicate(timeout=120)
        assert burst.returncode == 0, burst.stderr
        assert writer.returncode == 0, werr
        out = json.loads(burst.stdout)
        lines = []
        for (op, name), run in zip(ops, out["runs"], strict=True):
            for script, status, code, timed_out, text in run["results"]:
                lines.append(f"{op:15} {name}: {script} {status} {text.strip()}")
                assert status == "success" and code == 0 and not timed_out, lines[-1]
                assert ": failed:" not in text and "internal error" not in text, lines[-1]
            assert any("hookpack shaping:" in r[4] or "hookpack disk-grow:" in r[4]
                       for r in run["results"]), (op, name, run)
        print("\n".join(lines))
        # grow-disk: the hook told each running QEMU (the file alone changes nothing there)
        grown = {name: qemu_disk_bytes(node, name) for op, name in ops if op == "grow-disk"}
        assert set(grown.values()) <= {2 * DISK_MIB << 20}, grown
        assert grown or rnd == 0, ops  # the first round only starts instances
        slowest = max(r["seconds"] for r in out["runs"])
        # the foreign writer: none of its writes failed, its rules are as it left them
        wrote = json.loads(ledger.read_text())
        assert wrote["failures"] == [], wrote["failures"]
        assert wrote["writes"] > 10, wrote  # it really wrote during the burst
        foreign_expected = {(k, v) for k, v in foreign_expected} | {
            ("FORWARD" if n % 2 else "RELLOAD-FOREIGN", n) for n in wrote["present"]}
        probe = node.probe()
        assert foreign_rules(probe["foreign"]) == foreign_expected
        # hookpack: exactly a full reconcile's state, and a full reconcile changes nothing
        burst_state = node.check_shaping(probe)
        pins = node.check_pinning()
        # ... and the same as a full reconcile from scratch computes for this set
        for verb in (["shaping", "clear", "--all", "--yes"], ["shaping", "apply", "--all"]):
            done = node.cli(*verb)
            assert done.returncode == 0, done.stderr
        again = node.probe()
        assert node.check_shaping(again) == burst_state
        assert foreign_rules(again["foreign"]) == foreign_expected
        counts = {op: sum(1 for o, _ in ops if o == op) for op in ARRIVE + LEAVE + STAY}
        stats.append((out["wall"], slowest, wrote["writes"]))
        print(f"round {rnd}: {counts}; {len(node.running())} running, {len(burst_state)} "
              f"NICs shaped, pinned {sorted((n, c) for n, c in pins.items() if c)}; burst "
              f"wall {out['wall']:.1f} s, slowest hook {slowest:.1f} s (deadline "
              f"{DEADLINE:.0f} s); foreign writer: {wrote['writes']} writes, 0 failed")
    record_property("bursts", json.dumps(stats))
