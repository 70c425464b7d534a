"""``vm-testbed up|status|down``: a testbed for humans, left running between commands.

``up`` builds (or reuses) the guest image, creates a network node, boots the
guests and fake VMs, and records everything it created in
``/run/vm-testbed/<name>/state.json``; the KVM runtime root is that directory
too (``kvm-hypervisor/...``, ``instance-disks/...``). ``down`` removes exactly
what the state file lists; ``status`` shows it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from vmtestbed import host, leaks, netbox_cli, prebuild, rootfs_cli
from vmtestbed.disks import DiskSpec, FileDisk, LoopDisk
from vmtestbed.errors import TestbedError
from vmtestbed.ganeti import cli as ganeti_cli
from vmtestbed.guest import build_guest_image
from vmtestbed.kvmnode import KvmNode, NicSpec
from vmtestbed.netnode import NetNode
from vmtestbed.qmp import QMPClient

STATE_ROOT = Path("/run/vm-testbed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vm-testbed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="create a network node and boot guests")
    up.add_argument("--guests", type=int, default=1)
    up.add_argument("--fake-vms", type=int, default=1)
    up.add_argument("--vcpus", type=int, default=1)
    up.add_argument("--memory", type=int, default=128, help="MiB per guest")
    up.add_argument("--disk", type=int, default=64, help="disk size in MiB")
    up.add_argument("--loop", action="store_true",
                    help="loop device disks (block device, like LVM) instead of files")
    up.add_argument("--variant", choices=("3.0", "3.1"), default="3.0")
    st = sub.add_parser("status", help="show running testbeds")
    st.add_argument("name", nargs="?")
    down = sub.add_parser("down", help="tear testbeds down")
    down.add_argument("name", nargs="?", help="default: all of them")
    sub.add_parser("build", help="build the guest image and print its paths")
    rootfs_cli.build_parser(
        sub.add_parser("rootfs", help="Debian root filesystems (mmdebstrap), cached"))
    netbox_cli.build_parser(
        sub.add_parser("netbox", help="a real NetBox 4.7 (cached tree; build|serve)"))
    sub.add_parser("prebuild", help="build the cached trees the slow tests need (NetBox, "
                   "Debian 12 and 13), each once")
    gc = sub.add_parser("gc", help="remove what killed test runs left behind")
    gc.add_argument("--dry-run", action="store_true")
    gc.add_argument("--owner", type=int, help="only what this (dead) pid left behind")
    ganeti_cli.build_parser(
        sub.add_parser("ganeti", help="a real Ganeti 3.0 cluster (up|down|status)"))
    args = parser.parse_args(argv)

    # SIGTERM tears down like Ctrl-C does (context managers and except blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.command == "ganeti":
        return ganeti_cli.run(args)
    if args.command == "rootfs":
        return rootfs_cli.run(args)
    if args.command == "netbox":
        return netbox_cli.run(args)
    if args.command == "prebuild":
        return prebuild.run(say=lambda line: print(line, flush=True))
    try:
        if args.command == "up":
            return cmd_up(args)
        if args.command == "status":
            return cmd_status(args.name)
        if args.command == "down":
            return cmd_down(args.name)
        if args.command == "gc":
            return cmd_gc(args.dry_run, args.owner)
        image = build_guest_image()
        print(f"kernel {image.kernel}\ninitrd {image.initrd}\nmodules {image.modules_dir}")
        return 0
    except TestbedError as exc:
        print(f"vm-testbed: {exc}", file=sys.stderr)
        return 1


def cmd_up(args: argparse.Namespace) -> int:
    image = build_guest_image()
    net = NetNode()
    root = STATE_ROOT / net.name
    node: KvmNode | None = None
    try:
        net.create()
        root.mkdir(parents=True)
        node = KvmNode(root, netnode=net, image=image)
        for _ in range(args.fake_vms):
            net.add_fake_vm()
        for i in range(args.guests):
            backend = LoopDisk(size_mib=args.disk) if args.loop else FileDisk(size_mib=args.disk)
            inst = node.start_instance(f"guest{i}", vcpus=args.vcpus, memory_mib=args.memory,
                                       disks=[DiskSpec(backend)], nics=[NicSpec()],
                                       variant=args.variant)
            print(f"guest{i}: booted in {inst.boot_seconds:.1f} s")
        _save_state(root, net, node)
    except BaseException:
        if node is not None:
            node.close()
        net.close()
        shutil.rmtree(root, ignore_errors=True)
        raise
    print(f"up: {net.name}")
    cmd_status(net.name)
    return 0


def _save_state(root: Path, net: NetNode, node: KvmNode) -> None:
    state = {"netnode": net.to_state(), "kvmnode": node.to_state(),
             "guests": {n: {"pid": i.pid, "ips": i.ips, "taps": i.taps,
                            "qmp": str(i.qmp_path), "serial": str(i.serial_path),
                            "disk_ids": i.disk_ids}
                        for n, i in node.instances.items()}}
    (root / "state.json").write_text(json.dumps(state, indent=2) + "\n")


def _states(name: str | None) -> list[tuple[Path, dict[str, Any]]]:
    if not STATE_ROOT.exists():
        return []
    dirs = [STATE_ROOT / name] if name else sorted(STATE_ROOT.iterdir())
    found = []
    for d in dirs:
        f = d / "state.json"
        if f.exists():
            found.append((d, json.loads(f.read_text())))
        elif name:
            raise TestbedError(f"{name}: no such testbed (no {f})")
    return found


def cmd_status(name: str | None) -> int:
    states = _states(name)
    if not states:
        print("no testbed is up")
    for root, state in states:
        net = state["netnode"]
        print(f"{root.name}: node netns {net['name']}, bridge {net['bridge']}, "
              f"upstream {net['name']}-up at {NetNode(subnet=net['subnet']).upstream_ip} "
              f"(iperf3 -s)")
        print(f"  KVM runtime root {root}")
        for gname, g in state["guests"].items():
            alive = "running" if host.pid_alive(g["pid"]) else "DEAD"
            print(f"  {gname}: pid {g['pid']} {alive}, ip {' '.join(g['ips'])}, "
                  f"taps {' '.join(g['taps'])}, disks {' '.join(g['disk_ids'])}")
            print(f"    qmp {g['qmp']}\n    console: socat -,raw,echo=0 unix-connect:{g['serial']}")
        for f in net["fake_vms"]:
            print(f"  fake VM {f['netns']}: ip {f['ip']}, bridge port {f['host_ifname']}")
    return 0


def cmd_down(name: str | None) -> int:
    for root, state in _states(name):
        for g in state["guests"].values():
            _stop_guest(g["pid"], Path(g["qmp"]))
        kvm = state["kvmnode"]
        for dev in kvm["loop_devices"]:
            host.run(["losetup", "-d", dev], check=False)
        for backing in kvm["loop_backings"]:
            Path(backing).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                Path(backing).parent.rmdir()
        NetNode.from_state(state["netnode"]).close()
        shutil.rmtree(root, ignore_errors=True)
        print(f"down: {root.name}")
    return 0


def _stop_guest(pid: int, qmp_path: Path, timeout: float = 15.0) -> None:
    if not host.pid_alive(pid):
        return
    with contextlib.suppress(OSError, TestbedError), QMPClient(qmp_path, timeout=5) as q:
        q.execute("system_powerdown")
    deadline = time.monotonic() + timeout
    while host.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if host.pid_alive(pid):
        host.kill_owned(pid)


def cmd_gc(dry_run: bool, owner: int | None = None) -> int:
    """Remove testbed objects whose owner process died (never those of ``up`` testbeds)."""
    protected_ns: set[str] = set()
    protected_pids: set[int] = set()
    for _, state in _states(None):
        protected_ns.update(state["netnode"]["namespaces"])
        protected_pids.update(state["netnode"]["pids"])
        protected_pids.update(g["pid"] for g in state["guests"].values())
    found = leaks.stale(protected_ns, protected_pids, owner=owner)
    print(f"stale: {found.describe()}")
    if dry_run:
        return 0
    for pid in found.pids:
        host.kill_owned(pid)
    for loop in found.loops:
        dev, back = loop.split(" ", 1)
        host.run(["losetup", "-d", dev], check=False)
        backing = Path(back.strip("()"))
        backing.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            backing.parent.rmdir()
    for ns in found.netns:
        host.run(["ip", "netns", "delete", ns], check=False)
    for d in leaks.stale_tempdirs(owner=owner):
        shutil.rmtree(d, ignore_errors=True)
    return 0
