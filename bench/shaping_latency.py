"""Benchmark: ping RTT from a VM while it saturates its own 10 Mbit/s class.

A node in network namespaces (bridge, uplink veth to a "world" netns, one fake VM on a
veth "tap"), shaped by `hookpack shaping apply --all` to 10 Mbit/s VM -> world. The VM
runs an iperf3 TCP upload to the world (filling its class) and, once the upload runs,
pings the world every 50 ms. Measured for each leaf qdisc in the same run, same
duration: ``default`` (HTB's own pfifo of txqueuelen packets) and the bounded leaf
``auto`` picks on this kernel (fq_codel, or the segmenting tbf where the kernel lacks
it); ``idle`` (no upload) gives the path's own RTT.

Prints one line per mode (RTT p50/p95/max, loss, the upload's rate) and appends one
record to bench/results/shaping_latency.json (bench/results.py) with keys
``<mode>_p50_ms``, ``<mode>_p95_ms``, ``<mode>_max_ms``, ``<mode>_loss`` and
``<mode>_goodput_mbit`` for each mode run. Target (#16): p95 <= 20 ms with the bounded
leaf. Usage (root): .venv/bin/python bench/shaping_latency.py
[--seconds 8] [--modes default,auto] [--in-guest]

``--in-guest``: the same run inside the stock-kernel test guest (vmtestbed.hostguest,
TCG; Debian's kernel has fq_codel, this machine's has not); the record is written here,
with the guest's kernel in its parameters.
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

from bench.results import Results, read_result, result_line  # noqa: E402
from tests.shaping.topo import Node  # noqa: E402

PY = sys.executable
PORT = 5399
INTERVAL = 0.05


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def configure(node: Node, base: Path, leaf: str) -> Path:
    config = base / "hookpack.toml"
    config.write_text(
        f'[log]\nsyslog = false\n[node]\nfqdn = "node1.example.test"\n[paths]\n'
        f'kvm_dir = "{node.kvm_dir}"\nstate_dir = "{base}/state"\nrun_dir = "{base}/run"\n'
        f'[shaping]\nenabled = true\nuplink = "up0"\nclassifier = '
        f'"{os.environ.get("SHAPEPROOF_CLASSIFIER", "auto")}"\n'
        f'leaf_qdisc = "{leaf}"\negress_rate = "10mbit"\ningress_rate = "100mbit"\n')
    config.chmod(0o600)
    return config


def apply(node: Node, config: Path) -> dict:
    out = node.run(PY, "-m", "hookpack", "shaping", "apply", "--all", "--json", "--config",
                   str(config))
    report = json.loads(out)
    if report["failures"]:
        raise RuntimeError(f"apply: {report['failures']}")
    return report


def leaf_of(node: Node) -> str:
    for q in json.loads(node.run("tc", "-j", "qdisc", "show", "dev", "up0") or "[]"):
        if q.get("parent") == "4850:10":
            return f"{q['kind']} {q.get('options', {})}"
    return "pfifo (HTB's default, limit = txqueuelen 1000 packets)"


def one_mode(node: Node, base: Path, vm: str, leaf: str, seconds: int) -> dict:
    """``leaf`` a leaf_qdisc setting, or "idle": the bounded leaf with no upload (the
    path's own RTT, for comparison)."""
    idle = leaf == "idle"
    config = configure(node, base, "auto" if idle else leaf)
    apply(node, config)
    kind = leaf_of(node)
    upload = subprocess.Popen(
        ["ip", "netns", "exec", vm, "iperf3", "-c", "192.0.2.1", "-p", str(PORT), "-t",
         str(seconds + 2), "-J"] if not idle else ["sleep", str(seconds + 2)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # the upload has filled its queue (slow start at 10 Mbit/s)
        count = int(seconds / INTERVAL)
        # fping -C: one RTT per probe on stderr ("-" for a lost one)
        ping = subprocess.run(["ip", "netns", "exec", vm, "fping", "-q", "-C", str(count),
                               "-p", str(int(INTERVAL * 1000)), "-t", "3000", "192.0.2.1"],
                              capture_output=True, text=True, timeout=seconds + 30, check=False)
        out, _err = upload.communicate(timeout=seconds + 30)
    finally:
        if upload.poll() is None:
            upload.kill()
            upload.wait()
    line = ping.stderr.strip().splitlines()[-1] if ping.stderr.strip() else ""
    rtts = [float(x) for x in line.partition(":")[2].split() if x != "-"]
    if not rtts:
        raise RuntimeError(f"no ping answers: {ping.stdout[-400:]} {ping.stderr[-400:]}")
    mbit = 0.0
    if not idle:
        data = json.loads(out[out.find("{"):])
        mbit = data["end"]["sum_received"]["bits_per_second"] / 1e6
    return {"leaf_setting": leaf, "leaf": kind, "samples": len(rtts), "sent": count,
            "loss": round(1 - len(rtts) / count, 3),
            "p50_ms": round(statistics.median(rtts), 2),
            "p95_ms": round(percentile(rtts, 0.95), 2), "max_ms": round(max(rtts), 2),
            "upload_goodput_mbit": round(mbit, 2)}


def run(seconds: int, modes: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="hps-lat-") as tmp:
        base = Path(tmp)
        node = Node(base)
        server = None
        try:
            node.add_tap("tap0", vm=True)
            node.nic("lat.example.test", 0, "tap0")
            vm = node.vms["tap0"]
            server = subprocess.Popen(["ip", "netns", "exec", node.world, "iperf3", "-s", "-B",
                                       "192.0.2.1", "-p", str(PORT)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            return [one_mode(node, base, vm, mode, seconds) for mode in modes]
        finally:
            if server is not None:
                server.kill()
                server.wait()
            node.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--modes", default="default,auto", help="default, auto, tbf, bfifo, "
                    "fq_codel, idle (comma-separated)")
    ap.add_argument("--in-guest", action="store_true", help="run in the stock-kernel guest")
    ap.add_argument("--no-save", action="store_true", help="print only (the guest's side)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)")
        return 2
    if args.in_guest:
        return run_in_guest(args)
    rows = run(args.seconds, args.modes.split(","))
    report(args, rows, where=f"this machine, kernel {os.uname().release}")
    return 0


def run_in_guest(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO / "vm-testbed"))
    from vmtestbed.hostguest import build_image
    from vmtestbed.hostguest import run_in_guest as guest_run

    image = build_image()
    run = guest_run([PY, str(Path(__file__).resolve()), "--seconds", str(args.seconds),
                     "--modes", args.modes, "--no-save"], cwd=REPO, image=image,
                    env={"PYTHONUNBUFFERED": "1"}, timeout=600)
    print(run.output.strip())
    result = read_result(run.output)
    if run.rc or not result:
        print(f"guest run failed (rc {run.rc})")
        return 1
    rows = result["modes"]
    report(args, rows, where=f"stock-kernel guest (TCG), kernel {image.kernel_version}",
           echo=False)
    return 0


def report(args: argparse.Namespace, rows: list[dict], where: str, echo: bool = True) -> None:
    for r in rows if echo else ():
        print(f"leaf {r['leaf_setting']:8} ({r['leaf']}): ping RTT p50 {r['p50_ms']} ms, "
              f"p95 {r['p95_ms']} ms, max {r['max_ms']} ms, loss {r['loss']:.1%} of "
              f"{r['sent']}; upload {r['upload_goodput_mbit']} Mbit/s goodput (class 10 Mbit/s)")
    results = Results("shaping_latency", seconds=args.seconds, modes=args.modes,
                      leaves={r["leaf_setting"]: r["leaf"] for r in rows},
                      classifier=os.environ.get("SHAPEPROOF_CLASSIFIER", "auto"), where=where)
    for r in rows:
        mode = r["leaf_setting"]
        for key in ("p50_ms", "p95_ms", "max_ms", "loss"):
            results.add(f"{mode}_{key}", r[key])
        results.add(f"{mode}_goodput_mbit", r["upload_goodput_mbit"])
        results.add(f"{mode}_samples", r["samples"])
    if echo:  # read by the guest test and by --in-guest
        print(result_line({"seconds": args.seconds, "modes": rows}))
    if not args.no_save:
        results.save()


if __name__ == "__main__":
    sys.exit(main())
