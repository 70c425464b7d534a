"""Benchmark: wall time of the disk-grow hook against a running guest.

hookpack is installed from a wheel into a fresh venv (this path needs no dependency),
its entries laid out with `hookpack hooks install`, and run the way
Ganeti runs them (emulator: cleared environment, cwd /, closed stdin) against a real
QEMU guest started by vm-testbed the way Ganeti 3.0 starts it. Printed, each a median
over RUNS hook runs, measured in the same run:
  - no-op baseline: the same entry and environment on a node that is not the primary
    (the dispatcher parses the env, resolves roles and runs nothing),
  - grow: Ganeti's storage grew by 1 MiB before each run, the hook sends block_resize
    (observe, plan, apply, read back),
  - in step: a repeat run, QEMU already at the size (observe only; Ganeti 3.1+ case),
and each one's ratio to the baseline, and one query-block through hookpack's QMP adapter
against a bare socket + json sketch. Target (issue #5): grow <= 150 ms median.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "vm-testbed"))

from vmtestbed import host  # noqa: E402
from vmtestbed.disks import DiskSpec, FileDisk  # noqa: E402
from vmtestbed.kvmnode import KvmNode  # noqa: E402

from bench.results import Results  # noqa: E402
from hookpack.emulator import run_hooks  # noqa: E402
from hookpack.env import read_env_dump  # noqa: E402
from hookpack.hooksinstall import install  # noqa: E402
from tests.conftest import SAMPLES  # noqa: E402

RUNS = 20
# For comparison only: one query-block from a bare sketch (no timeouts, no retries).
RAW_QMP = """import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1]); f = s.makefile("rwb")
f.readline()
for cmd in ("qmp_capabilities", "query-block"):
    f.write(json.dumps({"execute": cmd}).encode() + b"\\n"); f.flush()
    while "return" not in json.loads(f.readline()): pass
"""
LIB_QMP = """import sys
from pathlib import Path
from hookpack.adapters.qmp import session
with session(Path(sys.argv[1]), 5) as q: q.execute("query-block")
"""
TARGET_MS = 150
PRIMARY = "node1.example.test"


def wheel_venv(work: Path) -> str:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(work / "wheel"), str(REPO)], check=True)
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(work / "venv")], check=True)
    python = str(work / "venv/bin/python")
    wheel = next((work / "wheel").glob("hookpack-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    return python


def entry(work: Path, python: str, label: str, fqdn: str, kvm: KvmNode) -> Path:
    root = work / label
    root.mkdir()
    config = root / "hookpack.toml"
    config.write_text(
        f'[log]\nsyslog = false\n[node]\nfqdn = "{fqdn}"\n[paths]\n'
        f'kvm_dir = "{kvm.hv_dir}"\ninstance_disks_dir = "{kvm.root / "instance-disks"}"\n'
        f'run_dir = "{root / "run"}"\nstate_dir = "{root / "state"}"\n')
    config.chmod(0o600)
    install(root / "hooks", python=python, config=str(config), dirs=["disk-grow-post.d"])
    return root / "hooks"


def grow_environ(name: str, uuid: str, size_mib: int) -> dict[str, str]:
    environ = read_env_dump((SAMPLES / "disk-grow-post-node1.env").read_text())
    environ = {k: v.replace("inst1.example.test", name) for k, v in environ.items()}
    environ["GANETI_INSTANCE_DISK0_UUID"] = environ["GANETI_POST_INSTANCE_DISK0_UUID"] = uuid
    environ["GANETI_POST_INSTANCE_DISK0_SIZE"] = str(size_mib)
    return environ


def one_run(hooks: Path, environ: dict[str, str], expect: str) -> float:
    start = time.perf_counter()
    [result] = run_hooks(hooks, "disk-grow", "post", environ)
    ms = (time.perf_counter() - start) * 1000
    if expect not in result.output:
        raise SystemExit(f"unexpected hook output (wanted {expect!r}): {result.output!r}")
    return ms


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    results = Results("disk_grow", runs=RUNS, target_ms=TARGET_MS)
    work = Path(tempfile.mkdtemp(prefix="hookpack-bench-dg-"))
    kvm_root = Path(tempfile.mkdtemp(prefix=f"{host.NAME_PREFIX}{host.owner_tag()}-"))
    kvm = KvmNode(kvm_root)
    try:
        python = wheel_venv(work)
        disk = DiskSpec(FileDisk(size_mib=64))
        inst = kvm.start_instance("bench-dg.example.test", disks=[disk], variant="3.0")
        primary = entry(work, python, "primary", PRIMARY, kvm)
        other = entry(work, python, "other", "node9.example.test", kvm)
        size = 64
        environ = grow_environ(inst.name, disk.uuid, size)
        one_run(other, environ, "")  # warm the page cache
        one_run(primary, environ, "nochange")
        noop, grow, in_step = [], [], []
        for _ in range(RUNS):
            noop.append(one_run(other, environ, ""))
            size += 1
            disk.backend.grow(size)
            environ = grow_environ(inst.name, disk.uuid, size)
            grow.append(one_run(primary, environ, ": changed: disk 0: grown"))
            in_step.append(one_run(primary, environ, ": nochange: disk 0: QEMU already sees"))
        raw, lib = [], []
        sock = str(inst.qmp_path)
        for _ in range(RUNS):
            bare = timed([python, "-I", "-c", "pass"])
            raw.append(timed([python, "-I", "-c", RAW_QMP, sock]) - bare)
            lib.append(timed([python, "-I", "-c", LIB_QMP, sock]) - bare)
        guest = int(inst.console.run("cat /sys/block/vda/size")) * 512
        if guest != size << 20:
            raise SystemExit(f"guest sees {guest} bytes, expected {size} MiB")
        base = statistics.median(noop)
        print(f"disk-grow hook, median of {RUNS} runs against a running guest "
              f"(QEMU {inst.pid}, disk grown to {size} MiB, guest agrees)")
        print(f"no-op baseline (not the primary): {base:6.1f} ms")
        results.add("baseline_ms", base)
        for key, label, values in (("grow", "grow (block_resize)", grow),
                                   ("in_step", "in step (repeat run)", in_step)):
            ms = statistics.median(values)
            results.add(f"{key}_ms", ms)
            results.add(f"{key}_ratio", ms / base)
            verdict = "OK" if ms <= TARGET_MS else "OVER"
            print(f"{label:33} {ms:6.1f} ms  ratio {ms / base:4.2f}x  "
                  f"({verdict} target {TARGET_MS} ms)")
        print(f"  one query-block, fresh process, over python start: hookpack's adapter "
              f"{statistics.median(lib):6.1f} ms, plain socket + json "
              f"{statistics.median(raw):6.1f} ms")
        results.add("query_block_hookpack_ms", statistics.median(lib))
        results.add("query_block_plain_ms", statistics.median(raw))
        results.save()
    finally:
        kvm.close()
        shutil.rmtree(kvm_root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
