"""A Ganeti KVM node for the reliability tests: a netns (bridge, uplink, taps), Ganeti's
KVM runtime dir, real QEMU processes (``-accel kvm -S``, no guest OS: vCPU threads
exist, nothing runs), hookpack's entries installed, and the checks that compare the
kernel with what a full reconcile computes.

Everything started here is torn down by ``close()`` (netns deleted, QEMUs killed by
pid), also after a failure.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hookpack.actions.pinning import node as pnode
from hookpack.actions.pinning.allocate import Policy
from hookpack.actions.pinning.threads import qmp_vcpu_tids, running_instances
from hookpack.adapters.qmp import QmpUnavailable
from hookpack.adapters.qmp import session as qmp_session
from tests.conftest import SAMPLES, load_sample
from tests.helpers.ganeti_env import instance_env
from tests.shaping.topo import Node

ROOT = Path(__file__).resolve().parents[2]
FQDN = "node1.example.test"
OTHER = "node2.example.test"
EGRESS, INGRESS, TAGGED = 10_000_000, 20_000_000, 5_000_000  # bit/s
QEMU = "qemu-system-x86_64"
# disk 0 of the recorded dumps (a file disk): QEMU id as Ganeti 3.0 gives it (-drive)
DISK_UUID = "403d6c96-7c55-47ab-8e70-fb9c2cc6de95"
DISK_ID = "disk-403d6c96-7c55-47ab"
DISK_MIB = 64
_IDS = itertools.count()


@dataclass
class Inst:
    name: str
    qemu: subprocess.Popen | None = None
    taps: dict[int, str] = field(default_factory=dict)

    @property
    def tagged(self) -> bool:  # some instances carry a lower egress tag
        return sum(map(ord, self.name)) % 3 == 0


class RelNode:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.net = Node(base)
        self.kvm_dir = self.net.kvm_dir
        for sub in ("pid", "conf", "ctrl"):
            (self.kvm_dir / sub).mkdir(parents=True, exist_ok=True)
        self.state_dir = base / "state"
        self.run_dir = base / "run"
        self.config = base / "hookpack.toml"
        self.config.write_text(
            f'[log]\nsyslog = false\n\n[node]\nfqdn = "{FQDN}"\n\n[paths]\n'
            f'kvm_dir = "{self.kvm_dir}"\nstate_dir = "{self.state_dir}"\n'
            f'run_dir = "{self.run_dir}"\nspool_dir = "{base / "spool"}"\n'
            f'hooks_dir = "{base / "hooks"}"\ninstance_disks_dir = "{base / "instance-disks"}"\n\n'
            '[shaping]\nenabled = true\nuplink = "up0"\nclassifier = "auto"\n'
            f'egress_rate = "{EGRESS // 10**6}mbit"\ningress_rate = "{INGRESS // 10**6}mbit"\n\n'
            "[pinning]\nenabled = true\n")
        self.config.chmod(0o600)
        self.insts: dict[str, Inst] = {}
        self._tap = itertools.count()
        self.qemus: list[subprocess.Popen] = []

    # -- the world as Ganeti leaves it before the post hooks run ------------------------
    def _new_tap(self) -> str:
        tap = f"tap{next(self._tap)}"
        self.net.add_taps_batch([tap])
        return tap

    def _start_qemu(self, name: str) -> subprocess.Popen:
        qmp = self.kvm_dir / "ctrl" / f"{name}.qmp"
        qmp.unlink(missing_ok=True)
        disks = self.base / "disks"
        disks.mkdir(exist_ok=True)
        image = disks / f"{name}.disk0"
        with image.open("wb") as f:
            f.truncate(DISK_MIB << 20)
        link = self.base / "instance-disks" / f"{name}:0"
        link.parent.mkdir(exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(image)
        argv = [QEMU, "-name", name, "-accel", "kvm", "-m", "32", "-smp", "1", "-S",
                "-nodefaults", "-display", "none", "-qmp", f"unix:{qmp},server=on,wait=off",
                "-drive", f"file={image},format=raw,if=none,id={DISK_ID}"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.qemus.append(proc)
        give_up = time.monotonic() + 30
        while not qmp.exists():
            if proc.poll() is not None or time.monotonic() > give_up:
                raise RuntimeError(f"QEMU for {name} did not come up ({proc.returncode})")
            time.sleep(0.02)
        # the QMP socket exists before QEMU opens its drives: an answer to query-block
        # means they are open (else a disk grown right now is read at its new size)
        while True:
            try:
                with qmp_session(qmp, 10) as session:
                    session.execute("query-block")
                break
            except QmpUnavailable:  # bound, not yet listening
                if proc.poll() is not None or time.monotonic() > give_up:
                    raise
                time.sleep(0.02)
        (self.kvm_dir / "pid" / name).write_text(f"{proc.pid}\n")
        (self.kvm_dir / "conf" / f"{name}.runtime").write_text(
            json.dumps([argv, [], {"cpu_mask": "all"}, [[
                {"dev_type": "file", "uuid": DISK_UUID,
                 "hvinfo": {"id": DISK_ID, "driver": "virtio-blk-pci"}}, str(link), None]]])
            + "\n")
        return proc

    def _stop_qemu(self, inst: Inst) -> None:
        if inst.qemu is not None:
            inst.qemu.kill()
            inst.qemu.wait()
            inst.qemu = None
        (self.kvm_dir / "pid" / inst.name).unlink(missing_ok=True)
        (self.kvm_dir / "conf" / f"{inst.name}.runtime").unlink(missing_ok=True)
        (self.kvm_dir / "ctrl" / f"{inst.name}.qmp").unlink(missing_ok=True)

    def start(self, name: str, nics: int = 1) -> Inst:
        """Instance arrives (start, migrate target): taps, nic files, QEMU."""
        inst = self.insts.setdefault(name, Inst(name))
        assert inst.qemu is None, name
        for index in range(nics):
            inst.taps[index] = self._new_tap()
            self.net.nic(name, index, inst.taps[index])
        inst.qemu = self._start_qemu(name)
        return inst

    def stop(self, name: str) -> None:
        """Instance leaves (stop, migrate source): QEMU ends, taps go, runtime files go."""
        inst = self.insts[name]
        self._stop_qemu(inst)
        for index, tap in sorted(inst.taps.items()):
            self.net.del_link(tap)
            self.net.nic(name, index, None)
        inst.taps.clear()

    def reboot(self, name: str) -> None:
        """KVM reboot: QEMU stopped and started again, new taps, new thread ids."""
        nics = len(self.insts[name].taps)
        self.stop(name)
        self.start(name, nics)

    def hotplug(self, name: str) -> int:
        """NIC hotplug (instance-modify): add NIC 1, or remove it when there. Returns
        the NIC count after."""
        inst = self.insts[name]
        if 1 in inst.taps:
            self.net.del_link(inst.taps.pop(1))
            self.net.nic(name, 1, None)
        else:
            inst.taps[1] = self._new_tap()
            self.net.nic(name, 1, inst.taps[1])
        return len(inst.taps)

    def grow_disk(self, name: str) -> None:
        """grow-disk: Ganeti grows the file (64 -> 128 MiB) before the post hook."""
        with (self.base / "disks" / f"{name}.disk0").open("r+b") as f:
            f.truncate(2 * DISK_MIB << 20)

    def running(self) -> list[str]:
        return sorted(n for n, i in self.insts.items() if i.qemu is not None)

    # -- hook environments from the recorded dumps ---------------------------------------
    def env(self, op: str, name: str, nics: int = 1) -> tuple[str, dict[str, str]]:
        """(hpath, environ) of the post hook of ``op`` for ``name`` on this node."""
        samples = {"start": "instance-start-post-node1", "stop": "instance-stop-post-node1",
                   "grow-disk": "disk-grow-post-node1",
                   "migrate-source": "instance-migrate-post-node1",
                   "migrate-target": "instance-migrate-post-node2"}
        if op in samples:
            environ, _ = load_sample(SAMPLES / f"{samples[op]}.env")
            old = environ["GANETI_INSTANCE_NAME"]
            if op == "migrate-target":  # recorded on the target: make this node it
                environ = {k: v.replace(FQDN, "@@").replace(OTHER, FQDN).replace("@@", OTHER)
                           for k, v in environ.items()}
            environ = {k: v.replace(old, name) for k, v in environ.items()}
        else:
            hpath = {"reboot": "instance-reboot", "modify": "instance-modify"}[op]
            ips = ["192.0.2.50"]
            after = ["192.0.2.50", "192.0.2.51"][:nics] if op == "modify" else None
            environ = instance_env(hpath, "post", name, ips, after_ips=after, master=FQDN)
            environ["GANETI_OP_CODE"] = {"reboot": "OP_INSTANCE_REBOOT",
                                         "modify": "OP_INSTANCE_SET_PARAMS"}[op]
        tags = "hookpack:egress=5mbit" if Inst(name).tagged else ""
        for key in ("GANETI_INSTANCE_TAGS", "GANETI_POST_INSTANCE_TAGS"):
            environ[key] = tags
        return environ["GANETI_HOOKS_PATH"], environ

    # -- reading back and checking -------------------------------------------------------
    def probe(self) -> dict:
        proc = subprocess.run(["ip", "netns", "exec", self.net.ns, sys.executable, "-m",
                               "tests.reliability.probe", str(self.config)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.net.ns, sys.executable, "-m",
                               "hookpack", *args, "--config", str(self.config)],
                              capture_output=True, text=True, timeout=120, check=False)

    def check_shaping(self, probe: dict) -> dict[tuple[str, int, str], tuple[int, int]]:
        """The kernel holds exactly the objects a full reconcile wants for the running
        instances: per NIC one netdev ingress chain on its tap setting the NIC's mark
        (comment hookpack:<instance>:<nic>), one uplink class with that minor under the
        root class (ceil = the NIC's egress limit) with its leaf, one HTB qdisc + class
        + leaf on its tap; the uplink's root/host classes and its one cls_bpf filter;
        nothing else of hookpack's. Returns the normalized state (instance, nic, tap) ->
        (egress, ingress) bit/s for comparisons."""
        want = {(n, i, tap): (TAGGED if self.insts[n].tagged else EGRESS, INGRESS)
                for n in self.running() for i, tap in self.insts[n].taps.items()}
        shaped = {tap for (_, _, tap) in want}
        up = probe["classes"].get("up0", {})
        up_leaves = probe["leaves"].get("up0", {})
        filters = probe["filters"]
        if want:
            assert probe["qdiscs"].get("up0") == "htb 4850:", probe["qdiscs"]
            assert up.get("4850:1", {}).get("parent") == "ffff:ffff", up  # the root class
            assert up.get("4850:2", {}).get("parent") == "4850:1", up  # the host class
            assert "4850:2" in up_leaves, up_leaves
            # one classifier: the cls_bpf program mapping mark -> class
            assert [(f["kind"], f["parent"]) for f in filters] == [("bpf", "4850:")], filters
        assert len(filters) <= 1, filters  # never a second (duplicate) filter
        marks = probe["marks"]
        # a base chain (named after its tap, hooked on it, jumping to the tap's record
        # chain mark/<tap>) for every shaped tap, none else
        assert {c["device"] for c in marks.values()} == shaped, (marks, shaped)
        got: dict[tuple[str, int, str], tuple[int, int]] = {}
        minors = []
        for chain, m in marks.items():
            tap = m["device"]
            assert chain == tap and m["rules"] == 1, (chain, m)
            assert m["jump"] == f"mark/{tap}", (chain, m)
            assert m["mark"] is not None and m["comment"], (chain, m)
            _, inst, nic = m["comment"].split(":")
            minor = f"{m['mark']:x}"
            minors.append(minor)
            klass = up.get(f"4850:{minor}")
            assert klass is not None, f"mark without its class: {chain} {m}"
            assert klass["parent"] == "4850:1", (chain, klass)  # under the root class
            assert f"4850:{minor}" in up_leaves, f"class 4850:{minor} without its leaf"
            tap_class = probe["classes"].get(tap, {}).get("4850:1")
            assert probe["qdiscs"].get(tap) == "htb 4850:", (tap, probe["qdiscs"])
            assert tap_class is not None, tap
            assert probe["leaves"].get(tap, {}).keys() == {"4850:1"}, (tap, probe["leaves"])
            got[(inst, int(nic), tap)] = (klass["ceil"] * 8, tap_class["rate"] * 8)
        assert len(set(minors)) == len(minors), f"class shared by two marks: {marks}"
        # no class without a mark, none lost: exactly root + host + one per mark
        classes = {f"4850:{m}" for m in minors}
        if want:
            assert set(up) == {"4850:1", "4850:2"} | classes, (sorted(up), sorted(classes))
            assert set(up_leaves) == {"4850:2"} | classes, (up_leaves, classes)
        else:  # hookpack's node-wide objects may stay; no VM class, no VM leaf
            assert set(up) <= {"4850:1", "4850:2"}, up
            assert set(up_leaves) <= {"4850:2"}, up_leaves
        assert got == want, (got, want)
        # hookpack's tap qdiscs (and their leaves) only on shaped taps
        ours = {dev for dev, q in probe["qdiscs"].items() if q == "htb 4850:" and dev != "up0"}
        assert ours == shaped, (ours, shaped)
        assert set(probe["leaves"]) - {"up0"} <= shaped, probe["leaves"]
        assert probe["plan"] == [], probe["plan"]  # a full reconcile now changes nothing
        return got

    def check_pinning(self, hooked: set[str] | None = None) -> dict[str, tuple[int, ...]]:
        """Every instance's own reconcile (what its hook computes: QMP vCPU ids for it
        alone, the others read from /proc) moves nothing; no CPU dedicated twice; as many
        instances pinned 1:1, on the same CPUs, as a full rebalance plans. Returns
        instance -> dedicated CPUs as ``hookpack pinning show`` sees them."""
        policy = Policy()
        procs = running_instances(self.kvm_dir, Path("/proc"))
        assert sorted(procs) == self.running(), (sorted(procs), self.running())
        tids = {n: qmp_vcpu_tids(self.kvm_dir / "ctrl" / f"{n}.qmp", 10) for n in procs}
        for name in procs if hooked is None else sorted(hooked & set(procs)):
            state = pnode.observe_node(Path("/sys"), self.kvm_dir, Path("/proc"),
                                       {name: tids[name]}, processes=procs)
            outcome = pnode.pin_instance(state, name, policy)
            assert outcome.moves == [], [m.describe() for m in outcome.moves]
        shown = pnode.observe_node(Path("/sys"), self.kvm_dir, Path("/proc"),
                                   processes=procs)
        dedicated = {n: tuple(o.dedicated) for n, o in shown.observed.items()}
        cpus = [c for d in dedicated.values() for c in d]
        assert len(cpus) == len(set(cpus)), f"a CPU pinned twice: {dedicated}"
        for name, obs in shown.observed.items():  # nobody's threads on others' CPUs
            others = {c for n, d in dedicated.items() if n != name for c in d}
            for tid, on in obs.affinities.items():
                assert not on & others, (name, tid, sorted(on), dedicated)
        if hooked is not None:
            # hooks pin only the instance they run for: after a departure a node-wide
            # rebalance may plan more pins than the hooks made (by design)
            return dedicated
        full = pnode.rebalance(pnode.observe_node(Path("/sys"), self.kvm_dir, Path("/proc"),
                                                  tids, processes=procs), policy, set())
        planned = sorted(tuple(p.vcpu_cpus) for p in full.plans if p.mode == "pinned")
        assert sorted(d for d in dedicated.values() if d) == planned, (dedicated, planned)
        return dedicated

    def leftovers(self) -> list[str]:
        """Temp files in the state and run dirs; pinning/shaping locks that block."""
        from hookpack.locks import node_lock

        found = [str(p) for d in (self.state_dir, self.run_dir) if d.exists()
                 for p in d.rglob(".*") if p.suffix != ".lock"]
        for lock in ("shaping", "pinning"):
            try:
                with node_lock(self.run_dir, lock, 0.0):
                    pass
            except Exception as err:
                found.append(f"{lock} lock: {err}")
        # the per-action run statistics' locks (state_dir/runs/.<action>.lock)
        for path in (self.state_dir / "runs").glob(".*.lock"):
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                found.append(f"{path}: {err}")
            finally:
                os.close(fd)
        return found

    def close(self) -> None:
        for proc in self.qemus:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.net.close()


def unique() -> str:
    return f"{os.getpid() % 100000}{next(_IDS)}"
