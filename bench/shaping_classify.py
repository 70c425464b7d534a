"""Benchmark: per-packet cost of the classifier with 1 vs 1000 other taps shaped, same run.

Two throwaway nodes in network namespaces, built the same way (bridge, uplink veth to a
"world" netns, one fake VM on a veth "tap" with a 10gbit class so HTB never limits it),
differing only in how many *other* taps hookpack shapes: 1 on node A, 1000 on node B
(tuntap bridge ports with nic files, each with its own netdev mark chain and uplink
class). The VM sends small UDP packets with iperf3 (64-byte payload, unlimited rate)
through its tap, the bridge and the uplink's HTB; packets per second are counted where
they leave the node (``rx_packets`` of the world side of the uplink). Both nodes'
VMs send **at the same time**, in the same window: on a shared machine whose load
swings the absolute rate by 2-3x from one second to the next, whatever load there is
hits both alike, and the ratio B/A of one window cancels it. The statistic is the
median over the rounds of that ratio (and, for scale, the median pps of each). O(1)
per packet in the number of taps means B within 10 % of A.

Usage (root): .venv/bin/python bench/shaping_classify.py [--others 1000] [--rounds 5]
Prints one line per measurement and the summary; appends one record to
bench/results/shaping_classify.json (bench/results.py): per round ``round<r>_one_pps``,
``round<r>_many_pps``, ``round<r>_ratio``; ``median_one_pps``, ``median_many_pps``,
``median_ratio``, ``median_change_pct`` (the "many" node shapes --others other taps,
in the record's params).
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results import Results  # noqa: E402
from tests.shaping.topo import Node, sh  # noqa: E402

PY = sys.executable
CPU = str(max(0, (os.cpu_count() or 1) - 1))


def config(node: Node, base: Path) -> Path:
    path = base / "hookpack.toml"
    path.write_text(
        f'[log]\nsyslog = false\n\n[node]\nfqdn = "bench.example.test"\n\n[paths]\n'
        f'kvm_dir = "{node.kvm_dir}"\nstate_dir = "{base / "state"}"\n'
        f'run_dir = "{base / "run"}"\nhooks_dir = "{base / "hooks"}"\n\n'
        '[shaping]\nenabled = true\nuplink = "up0"\negress_rate = "10gbit"\n'
        'ingress_rate = "10gbit"\nmax_egress_rate = "10gbit"\nmax_ingress_rate = "10gbit"\n'
        'uplink_rate = "10gbit"\n')
    path.chmod(0o600)
    return path


def build(base: Path, others: int) -> tuple[Node, str]:
    base.mkdir(parents=True)
    node = Node(base)
    node.add_tap("tapvm", vm=True)
    node.nic("vm.example.test", 0, "tapvm")
    taps = [f"tq{i}" for i in range(others)]
    node.add_taps_batch(taps)
    for i, tap in enumerate(taps):
        node.nic(f"o{i}.example.test", 0, tap)
    cfg = config(node, base)
    out = json.loads(node.run(PY, "-m", "hookpack", "shaping", "apply", "--all", "--json",
                              "--config", str(cfg)))
    if out["failures"]:
        raise SystemExit(f"apply failed: {out['failures']}")
    chains = node.run("nft", "list", "chains", "netdev").count("chain ")
    classes = node.run("tc", "class", "show", "dev", "up0").count("class htb")
    print(f"node with {others} other taps: {chains} netdev chains, {classes} uplink classes",
          flush=True)
    return node, str(cfg)


def rx_packets(node: Node) -> int:
    out = sh("ip", "-n", node.world, "-j", "-s", "link", "show", "wo0")
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


def measure(nodes: list[Node], seconds: float) -> list[float]:
    """Packets per second leaving each node's uplink while its VM floods small UDP
    packets, all nodes at once over the same window."""
    servers = [subprocess.Popen(["ip", "netns", "exec", n.world, "iperf3", "-s", "-1", "-p",
                                 "5201"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for n in nodes]
    clients: list[subprocess.Popen[str]] = []
    try:
        time.sleep(0.3)
        # both senders on one CPU: the scheduler shares it between them, so a per-packet
        # cost difference shows as a rate difference instead of drowning in load swings
        clients = [subprocess.Popen(["taskset", "-c", CPU, "ip", "netns", "exec",
                                     n.vms["tapvm"], "iperf3", "-c",
                                     "192.0.2.1", "-p", "5201", "-u", "-b", "0", "-l", "64",
                                     "-t", str(seconds + 1.5)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True) for n in nodes]
        time.sleep(1.0)
        p0 = [rx_packets(n) for n in nodes]
        t0 = time.monotonic()
        time.sleep(seconds)
        p1 = [rx_packets(n) for n in nodes]
        t1 = time.monotonic()
        for client in clients:
            _out, err = client.communicate(timeout=60)
            if client.returncode:
                raise SystemExit(f"iperf3 client failed: {err.strip()}")
    finally:
        for proc in [*clients, *servers]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return [(b - a) / (t1 - t0) for a, b in zip(p0, p1, strict=True)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--others", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces)")
    results = Results("shaping_classify", others=args.others, rounds=args.rounds,
                      seconds=args.seconds)
    with tempfile.TemporaryDirectory(prefix="hp-classify-") as tmp:
        nodes: list[tuple[str, Node]] = []
        try:
            for label, others in (("1", 1), (str(args.others), args.others)):
                node, _cfg = build(Path(tmp) / f"n{others}", others)
                nodes.append((label, node))
            pps: dict[str, list[float]] = {label: [] for label, _ in nodes}
            ratios: list[float] = []
            for r in range(args.rounds):
                one, many = measure([n for _, n in nodes], args.seconds)
                pps[nodes[0][0]].append(one)
                pps[nodes[1][0]].append(many)
                ratios.append(many / one)
                results.add(f"round{r + 1}_one_pps", one)
                results.add(f"round{r + 1}_many_pps", many)
                results.add(f"round{r + 1}_ratio", many / one)
                print(f"round {r + 1}: 1 other tap shaped {one:,.0f} pps, {args.others} "
                      f"other taps shaped {many:,.0f} pps, ratio {many / one:.3f}",
                      flush=True)
        finally:
            for _, node in nodes:
                node.close()
    (one, _), (many, _) = nodes
    m1, mn = statistics.median(pps[one]), statistics.median(pps[many])
    ratio = statistics.median(ratios)
    load = os.getloadavg()[0]
    print(f"median pps: 1 other tap {m1:,.0f}; {many} other taps {mn:,.0f}; median ratio "
          f"of the same windows {ratio:.3f} ({(ratio - 1) * 100:+.1f} %), goal within 10 %: "
          f"{'met' if abs(ratio - 1) <= 0.10 else 'NOT met'} (load {load:.1f})")
    results.add("median_one_pps", m1)
    results.add("median_many_pps", mn)
    results.add("median_ratio", ratio)
    results.add("median_change_pct", (ratio - 1) * 100)
    results.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
