#!/usr/bin/env python3
"""Measure what the testbed can do on this machine: guest boot time, TCP and UDP throughput.

Run as root from the repository: ``.venv/bin/python vm-testbed/tools/measure.py``.
Prints one line per measurement; vm-testbed/README.md records the results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmtestbed.guest import build_guest_image
from vmtestbed.iperf import measure
from vmtestbed.kvmnode import KvmNode, NicSpec
from vmtestbed.netnode import NetNode


def udp(runner, server: str, mbit: int, seconds: int = 3,
        reverse: bool = False) -> tuple[float, float]:
    """(received Mbit/s, loss %) for a UDP stream offered at ``mbit``."""
    out = runner(["iperf3", "-c", server, "-u", "-b", f"{mbit}M", "-t", str(seconds), "-J",
                  "-l", "1400", *(["-R"] if reverse else [])], seconds + 30)
    end = json.loads(out[out.find("{"):out.rfind("}") + 1])["end"]
    s = end.get("sum_received") or end["sum"]
    return s["bits_per_second"] / 1e6, float(end["sum"].get("lost_percent", 0.0))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--vcpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--udp", type=int, nargs="+", default=[10, 50, 100, 200, 400, 800])
    args = parser.parse_args()
    image = build_guest_image()
    with NetNode() as net, tempfile.TemporaryDirectory(prefix="hpt-measure-") as d:
        fvm = net.add_fake_vm()
        print(f"fakevm tcp up {measure(fvm.check_output, net.upstream_ip, 3):.0f} Mbit/s, "
              f"down {measure(fvm.check_output, net.upstream_ip, 3, reverse=True):.0f} Mbit/s")
        for rate in args.udp:
            got, loss = udp(fvm.check_output, net.upstream_ip, rate)
            print(f"fakevm udp offered {rate} Mbit/s: received {got:.1f} Mbit/s, loss {loss:.1f}%")
        with KvmNode(Path(d), netnode=net, image=image) as node:
            for vcpus in args.vcpus:
                boots = []
                for i in range(args.boots):
                    inst = node.start_instance(f"m{vcpus}x{i}", vcpus=vcpus, nics=[NicSpec()])
                    boots.append(inst.boot_seconds or 0)
                    if i < args.boots - 1:
                        inst.stop()
                print(f"boot vcpus={vcpus}: median {statistics.median(boots):.2f} s, "
                      f"max {max(boots):.2f} s over {len(boots)}")
                up = measure(inst.check_output, net.upstream_ip, 5)
                down = measure(inst.check_output, net.upstream_ip, 5, reverse=True)
                print(f"guest vcpus={vcpus} tcp up {up:.0f} Mbit/s, down {down:.0f} Mbit/s")
                for rate in args.udp:
                    got, loss = udp(inst.check_output, net.upstream_ip, rate)
                    print(f"guest vcpus={vcpus} udp offered {rate} Mbit/s: "
                          f"received {got:.1f} Mbit/s, loss {loss:.1f}%")
                    got, loss = udp(inst.check_output, net.upstream_ip, rate, reverse=True)
                    print(f"guest vcpus={vcpus} udp to guest offered {rate} Mbit/s: "
                          f"received {got:.1f} Mbit/s, loss {loss:.1f}%")
                inst.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
