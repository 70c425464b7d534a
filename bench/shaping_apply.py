"""Benchmark: shaping N taps, whole process against whole process, same run.

A throwaway node in network namespaces (uplink veth on a bridge, N tuntap bridge ports,
a fake KVM runtime dir with N/2 instances of 2 NICs). Every side is timed the same way:
the wall time of one command started from here through one `ip netns exec` (process
start included), median of the same number of runs (--runs), in this run.

  full apply, N taps, from nothing
    seed      the seed blog post's per-tap loop (`tc class add` + `tc filter add ... fw`
              + `iptables -A PREROUTING ... MARK` per tap), as one shell script: the
              seed's own objects (no leaf qdiscs, no to-VM side, IPv4 only).
    batch     one shell script: `tc -batch` + `nft -f` creating exactly the objects
              hookpack creates (uplink qdisc, root, host and tap classes with their
              bfifo leaves, the one cls_bpf mark -> class filter, a qdisc + class +
              leaf per tap; table netdev hookpack with an ingress chain and mark rule
              per tap).
    hookpack  `hookpack shaping apply --all` (Python start and imports included); its
              own in-process figure (observe + plan + apply + read back) beside it,
              labelled.
  one instance's hook, N-1 taps shaped (a NIC hotplugged)
    seed      the per-tap loop for the one tap;
    batch     `tc -batch` + `nft -f` for the one tap's objects;
    hookpack  `hookpack hook` with a post instance-modify environment, as Ganeti runs it.
  re-apply with nothing to do
    batch     the reads a script needs to know nothing changed (`tc qdisc show`,
              `tc class show dev up0`, `tc filter show dev up0`,
              `nft list table netdev hookpack`);
    hookpack  `hookpack shaping apply --all`: kernel writes must be 0.
  floor       `ip netns exec ... python3 -c pass`.

Results are printed and one record is appended to bench/results/shaping_apply.json
(bench/results.py): per row ``<row>_ms`` (median), ``<row>_min_ms``, ``<row>_max_ms`` for
rows floor, full_seed, full_batch, full_hookpack, full_hookpack_inproc, one_seed,
one_batch, one_hookpack, noop_batch, noop_hookpack; ratios ``full_hookpack_per_batch_x``,
``full_seed_per_hookpack_x``, ``one_hookpack_per_batch_x``, ``one_hookpack_per_seed_x``,
``noop_hookpack_per_batch_x``; ``full_writes_netlink``, ``full_writes_nf_tables``,
``setup_s``; with --profile ``python_start_ms``, ``python_start_plus_imports_ms``.
Usage (root): .venv/bin/python bench/shaping_apply.py [--taps 1000] [--runs 5] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results import Results  # noqa: E402
from tests.shaping.topo import Node  # noqa: E402

PY = sys.executable
MAJOR = "4850"
EGRESS_BITS, INGRESS_BITS = 10_000_000, 20_000_000


def reset(node: Node, taps: list[str]) -> None:
    """Back to nothing (untimed): root qdiscs gone, mangle empty, hookpack's caches gone."""
    lines = [f"qdisc del dev {d} root" for d in ["up0", *taps]]
    subprocess.run(["ip", "netns", "exec", node.ns, "tc", "-force", "-batch", "-"],
                   input="\n".join(lines) + "\n", capture_output=True, text=True, check=False)
    for tool in ("iptables", "ip6tables"):
        node.run(f"{tool}-restore", input="*mangle\nCOMMIT\n")
    node.run("nft", "delete", "table", "netdev", "hookpack", check=False)
    for d in (node.base / "state", node.base / "run"):
        subprocess.run(["rm", "-rf", str(d / "shaping"), str(d / "shaping-mangle.json")],
                       check=False)


def wall(argv: list[str], **kw: object) -> float:
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    took = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv[:6])}...: exit {proc.returncode}: "
                           f"{proc.stderr.strip()[-400:]}")
    return took


def in_ns(node: Node, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", node.ns, *argv]


# ---- the baselines, as scripts ----------------------------------------------------------


def seed_script(taps: list[str], first_minor: int, with_qdisc: bool) -> str:
    burst = EGRESS_BITS // 8 // 100
    lines = ["#!/bin/sh"]
    if with_qdisc:
        lines.append(f"tc qdisc add dev up0 root handle {MAJOR}: htb r2q 833")
    for i, tap in enumerate(taps):
        minor = f"{i + first_minor:04x}"
        lines += [
            f"tc class add dev up0 parent {MAJOR}: classid {MAJOR}:{minor} htb rate 10mbit "
            f"burst {burst} 2>/dev/null",
            f"tc filter add dev up0 parent {MAJOR}: handle 0x{minor} protocol all fw flowid "
            f"{MAJOR}:{minor} 2>/dev/null",
            f"iptables -t mangle -A PREROUTING -m physdev --physdev-in {tap} -j MARK "
            f"--set-mark 0x{minor}"]
    return "\n".join(lines) + "\n"


def _class(dev: str, parent: str, minor: str, rate: int, ceil: int, prio: int) -> str:
    burst, cburst = max(rate // 800, 1500), max(ceil // 800, 1500)
    r2q = max(1, rate // 8 // 1500)
    quantum = min(200000, max(1000, rate // 8 // r2q))
    return (f"class add dev {dev} parent {parent} classid {MAJOR}:{minor} htb rate {rate}bit "
            f"ceil {ceil}bit burst {burst} cburst {cburst} quantum {quantum} prio {prio}")


def _leaf(dev: str, parent: str, ceil: int) -> str:
    return f"qdisc add dev {dev} parent {parent} bfifo limit {max(3028, ceil // 800)}"


def bpf_bytecode() -> str:
    """hookpack's mark -> class program, as `tc ... bpf bytecode` takes it."""
    from hookpack.actions.shaping import tc

    ops = tc.mark_program(int(MAJOR, 16), 0xFFFF)
    words = [tc._SOCK_FILTER.unpack_from(ops, i) for i in range(0, len(ops), 8)]
    return f"{len(words)}," + ",".join(" ".join(str(x) for x in w) for w in words)


def batch_lines(taps: list[str], first_minor: int, instances: dict[str, str],
                with_base: bool) -> tuple[list[str], list[str]]:
    """tc -batch lines and nft lines for exactly hookpack's objects (leaf bfifo, as the
    benchmark's hookpack config asks: 10 ms at the class's ceil)."""
    up, host = 10**10, 10**9
    tc_lines: list[str] = []
    nft: list[str] = []
    if with_base:
        tc_lines += [f"qdisc add dev up0 root handle {MAJOR}: htb default 2 r2q 833333",
                     _class("up0", f"{MAJOR}:", "1", up, up, 0),
                     _class("up0", f"{MAJOR}:1", "2", host, up, 0),
                     _leaf("up0", f"{MAJOR}:2", up),
                     f"filter add dev up0 parent {MAJOR}: prio 4850 handle 1 protocol all "
                     f"bpf bytecode \"{bpf_bytecode()}\""]
        nft.append("add table netdev hookpack")
    for i, tap in enumerate(taps):
        minor = f"{i + first_minor:x}"
        tc_lines += [
            _class("up0", f"{MAJOR}:1", minor, 10**6, EGRESS_BITS, 0),
            _leaf("up0", f"{MAJOR}:{minor}", EGRESS_BITS),
            f"qdisc add dev {tap} root handle {MAJOR}: htb default 1 r2q 1666",
            _class(tap, f"{MAJOR}:", "1", INGRESS_BITS, INGRESS_BITS, 0),
            _leaf(tap, f"{MAJOR}:1", INGRESS_BITS)]
        nft += [f"add chain netdev hookpack mark/{tap}",
                f"add rule netdev hookpack mark/{tap} meta mark set meta mark & 0xffff0000 | "
                f'0x{minor} comment "hookpack:{instances[tap]}"',
                f'add chain netdev hookpack {tap} {{ type filter hook ingress device "{tap}" '
                "priority -150; policy accept; }",
                f"add rule netdev hookpack {tap} jump mark/{tap}"]
    return tc_lines, nft


def batch_script(base: Path, tag: str, tc_lines: list[str], nft: list[str]) -> Path:
    tc_file, nf_file = base / f"{tag}.tc", base / f"{tag}.nft"
    tc_file.write_text("\n".join(tc_lines) + "\n")
    nf_file.write_text("\n".join(nft) + "\n")
    script = base / f"{tag}.sh"
    script.write_text(f"#!/bin/sh\nset -e\ntc -batch {tc_file}\nnft -f {nf_file}\n")
    return script


READS = ("#!/bin/sh\nset -e\ntc qdisc show >/dev/null\ntc class show dev up0 >/dev/null\n"
         "tc filter show dev up0 >/dev/null\nnft list table netdev hookpack >/dev/null\n")


# ---- the runs ---------------------------------------------------------------------------


def median_of(runs: int, before: Callable[[], None], timed: Callable[[], float]) -> list[float]:
    out = []
    for _ in range(runs):
        before()
        out.append(timed())
    return out


def hookpack_apply(node: Node, config: Path, sink: list[dict]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(in_ns(node, PY, "-m", "hookpack", "shaping", "apply", "--all",
                                "--json", "--config", str(config)),
                          capture_output=True, text=True, check=False)
    took = time.perf_counter() - t
    report = json.loads(proc.stdout)
    if proc.returncode or report["failures"]:
        raise RuntimeError(f"hookpack apply: {proc.stderr.strip()[-400:]} {report['failures']}")
    sink.append(report)
    return took


def hook_env(inst: str, k: int) -> dict[str, str]:
    return {"PATH": "/sbin:/bin:/usr/sbin:/usr/bin", "GANETI_HOOKS_VERSION": "2",
            "GANETI_HOOKS_PHASE": "post", "GANETI_HOOKS_PATH": "instance-modify",
            "GANETI_OP_CODE": "OP_INSTANCE_SET_PARAMS", "GANETI_OBJECT_TYPE": "INSTANCE",
            "GANETI_CLUSTER": "cluster1.example.test", "GANETI_MASTER": "node1.example.test",
            "GANETI_DATA_DIR": "/var/lib/ganeti", "GANETI_INSTANCE_NAME": inst,
            "GANETI_INSTANCE_PRIMARY": "node1.example.test", "GANETI_INSTANCE_SECONDARIES": "",
            "GANETI_INSTANCE_STATUS": "up", "GANETI_INSTANCE_TAGS": "",
            "GANETI_INSTANCE_NIC_COUNT": "0", "GANETI_INSTANCE_DISK_COUNT": "0",
            "GANETI_POST_INSTANCE_NAME": inst, "GANETI_POST_INSTANCE_PRIMARY":
            "node1.example.test", "GANETI_POST_INSTANCE_TAGS": "",
            "GANETI_POST_INSTANCE_STATUS": "up"}


def run_hook(node: Node, config: Path, inst: str, k: int) -> float:
    t = time.perf_counter()
    proc = subprocess.run(in_ns(node, PY, "-m", "hookpack", "hook", "--config", str(config)),
                          env=hook_env(inst, k), cwd="/", capture_output=True, text=True,
                          check=False)
    took = time.perf_counter() - t
    if proc.returncode or "shaping" not in proc.stderr or "failed" in proc.stderr:
        raise RuntimeError(f"hook: {proc.stderr.strip()[-400:]}")
    return took


def med(values: list[float]) -> float:
    return statistics.median(values)


def fmt(values: list[float]) -> str:
    return f"{med(values) * 1000:8.1f} ms (median of {len(values)}; " \
           f"min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f})"


def measure(node: Node, base: Path, args: argparse.Namespace, results: Results) -> None:
    n, runs = args.taps, args.runs
    taps = [f"tap{i}" for i in range(n)]
    t0 = time.perf_counter()
    node.add_taps_batch(taps)
    instances = {}
    for i, tap in enumerate(taps):
        name = f"vm{i // 2:04d}.example.test"
        node.nic(name, i % 2, tap)
        instances[tap] = f"{name}:{i % 2}"
    setup = results.add("setup_s", time.perf_counter() - t0)
    print(f"setup: {n} taps on a bridge in netns {node.ns} ({setup:.1f} s)")
    config = base / "hookpack.toml"
    config.write_text(
        f'[log]\nsyslog = false\n[node]\nfqdn = "node1.example.test"\n[paths]\n'
        f'kvm_dir = "{node.kvm_dir}"\nstate_dir = "{base}/state"\nrun_dir = "{base}/run"\n'
        f'[shaping]\nenabled = true\nuplink = "up0"\nclassifier = "auto"\n'
        f'leaf_qdisc = "bfifo"\negress_rate = "10mbit"\ningress_rate = "20mbit"\n')
    config.chmod(0o600)
    def nothing() -> None:
        return None

    floor = median_of(runs, nothing, lambda: wall(in_ns(node, PY, "-c", "pass")))
    # -- full apply
    seed = base / "seed.sh"
    seed.write_text(seed_script(taps, 0x10, True))
    full_seed = median_of(runs, lambda: reset(node, taps),
                          lambda: wall(in_ns(node, "sh", str(seed))))
    tc_lines, rules = batch_lines(taps, 0x10, instances, True)
    script = batch_script(base, "full", tc_lines, rules)
    full_batch = median_of(runs, lambda: reset(node, taps),
                           lambda: wall(in_ns(node, "sh", str(script))))
    reports: list[dict] = []
    full_hp = median_of(runs, lambda: reset(node, taps),
                        lambda: hookpack_apply(node, config, reports))
    writes = reports[-1]["writes"]
    in_proc = [r["ms"] / 1000 for r in reports]
    # -- re-apply, nothing to do (hookpack's objects are in place from its last run)
    again: list[dict] = []
    noop_hp = median_of(runs, nothing, lambda: hookpack_apply(node, config, again))
    assert all(r["writes"] == {"netlink": 0, "nf_tables": 0} for r in again), again
    reads = base / "reads.sh"
    reads.write_text(READS)
    noop_batch = median_of(runs, nothing, lambda: wall(in_ns(node, "sh", str(reads))))
    # -- one instance's hook: a NIC hotplugged on one instance, the others shaped
    inst = "vm0007.example.test"
    new = [f"tapnew{k}" for k in range(runs)]
    node.add_taps_batch(new)

    def plug(k: int) -> Callable[[], None]:
        def do() -> None:
            node.nic(inst, 2, new[k])
        return do


    def unplug() -> None:  # untimed: back to N-1 shaped for the next run
        node.nic(inst, 2, None)
        subprocess.run(in_ns(node, PY, "-m", "hookpack", "shaping", "apply", inst,
                             "--config", str(config)), capture_output=True, check=True)
    one_hp = []
    for k in range(runs):
        plug(k)()
        one_hp.append(run_hook(node, config, inst, k))
        unplug()
    # the baselines add the same objects for one more tap (minor past hookpack's)
    spare = [f"tapb{k}" for k in range(runs)]
    node.add_taps_batch(spare)
    one_batch, one_seed = [], []
    for k in range(runs):
        tap = spare[k]
        inst_of = {tap: f"{inst}:2"}
        tc1, r1 = batch_lines([tap], 0x4000 + k, inst_of, False)
        s1 = batch_script(base, f"one{k}", tc1, r1)
        one_batch.append(wall(in_ns(node, "sh", str(s1))))
        sd = base / f"seed{k}.sh"
        sd.write_text(seed_script([tap], 0x5000 + k, False))
        one_seed.append(wall(in_ns(node, "sh", str(sd))))

    rows = [
        ("floor", "floor: ip netns exec <venv python> -c pass", floor),
        ("full_seed", f"full apply {n} taps: seed loop script", full_seed),
        ("full_batch", f"full apply {n} taps: batch tools script", full_batch),
        ("full_hookpack", f"full apply {n} taps: hookpack process", full_hp),
        ("full_hookpack_inproc",
         f"full apply {n} taps: hookpack in-process (label: no start/imports)", in_proc),
        ("one_seed", "one instance hook: seed loop script (1 tap)", one_seed),
        ("one_batch", "one instance hook: batch tools script (1 tap)", one_batch),
        ("one_hookpack", f"one instance hook: hookpack hook process ({n} shaped)", one_hp),
        ("noop_batch", "re-apply nothing to do: batch reads script", noop_batch),
        ("noop_hookpack", "re-apply nothing to do: hookpack process", noop_hp),
    ]
    for key, label, values in rows:
        print(f"{label:70} {fmt(values)}")
        results.add(f"{key}_ms", med(values) * 1000)
        results.add(f"{key}_min_ms", min(values) * 1000)
        results.add(f"{key}_max_ms", max(values) * 1000)
    ratios = [
        ("full_hookpack_per_batch_x", "full: hookpack / batch", med(full_hp) / med(full_batch)),
        ("full_seed_per_hookpack_x", "full: seed / hookpack", med(full_seed) / med(full_hp)),
        ("one_hookpack_per_batch_x", "one instance: hookpack / batch",
         med(one_hp) / med(one_batch)),
        ("one_hookpack_per_seed_x", "one instance: hookpack / seed",
         med(one_hp) / med(one_seed)),
        ("noop_hookpack_per_batch_x", "re-apply: hookpack / batch reads",
         med(noop_hp) / med(noop_batch)),
    ]
    for key, label, value in ratios:
        print(f"ratio {label:40} {value:6.2f}x (medians, whole process each)")
        results.add(key, value)
    print(f"hookpack full apply writes: {writes}")
    for kind, count in writes.items():
        results.add(f"full_writes_{kind}", count)
    if args.profile:
        for key, value in profile(node, config, taps, base).items():
            results.add(key, value)


def profile(node: Node, config: Path, taps: list[str], base: Path) -> dict[str, float]:
    """Where a whole `apply --all` process goes: start, imports, then the work (cProfile's
    top entries printed)."""
    reset(node, taps)
    imp = wall(in_ns(node, PY, "-c", "import hookpack.cli, hookpack.actions.shaping.action, "
                     "hookpack.actions.shaping.reconcile, hookpack.actions.shaping.nft, "
                     "hookpack.actions.shaping.classifier"))
    bare = wall(in_ns(node, PY, "-c", "pass"))
    out = base / "prof.out"
    wall(in_ns(node, PY, "-m", "cProfile", "-o", str(out), "-m", "hookpack", "shaping",
               "apply", "--all", "--config", str(config)))
    import pstats

    stats = pstats.Stats(str(out))
    stats.sort_stats("cumulative").print_stats(18)
    return {"python_start_ms": round(bare * 1000, 1),
            "python_start_plus_imports_ms": round(imp * 1000, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--taps", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5, help="runs per side (median of these)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)")
        return 2
    results = Results("shaping_apply", taps=args.taps, runs=args.runs, profile=args.profile)
    with tempfile.TemporaryDirectory(prefix="hps-bench-") as tmp:
        base = Path(tmp)
        node = Node(base)
        try:
            measure(node, base, args, results)
        finally:
            node.close()
    results.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
