"""``vm-testbed ganeti up|down|status``: the Ganeti lab from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from vmtestbed.ganeti import demo, envdump
from vmtestbed.ganeti.errors import LabError
from vmtestbed.ganeti.lab import Lab
from vmtestbed.ganeti.layout import DEFAULT_VERSION, VERSIONS
from vmtestbed.ganeti.lock import LabLock


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="vm-testbed ganeti",
                                          description="A real Ganeti 3.0 or 3.1 cluster "
                                                      "on this machine.")
    p.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    sub = p.add_subparsers(dest="ganeti_cmd", required=True)
    up = sub.add_parser("up", help="install packages, build the nodes, init the cluster")
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (1-4, default 2)")
    up.add_argument("--version", choices=VERSIONS, default=DEFAULT_VERSION,
                    help="Ganeti 3.0 (this host's packages, the default) or 3.1 (a Debian "
                         "13 tree each node chroots into)")
    up.add_argument("--no-hookpack", action="store_true",
                    help="do not install hookpack on the nodes")
    sub.add_parser("down", help="destroy the cluster, leave the machine as found")
    rec = sub.add_parser("record-env", help="record the environment Ganeti gives its hooks "
                         "(golden fixtures) on the lab that is up")
    rec.add_argument("out", type=Path, help="directory for the <hpath>-<phase>-<node>.env "
                     "files")
    sub.add_parser("status", help="nodes, instances and timings, as JSON")
    demo = sub.add_parser("demo", help="up, hookpack, a scenario with a summary table, down")
    demo.add_argument("--nodes", type=int, default=2)
    demo.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    return p


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(name)s: %(message)s")
    lab = Lab()
    try:
        if args.ganeti_cmd == "up":
            with LabLock(who="vm-testbed ganeti up"):
                timings = lab.up(nodes=args.nodes, owner="cli", version=args.version)
                if not args.no_hookpack:
                    timings = lab.install_hookpack()
            print(json.dumps({"up": [n.name for n in lab.nodes], "timings": timings}, indent=2))
        elif args.ganeti_cmd == "down":
            with LabLock(who="vm-testbed ganeti down"):
                report = lab.down()
            print(json.dumps(report.__dict__, indent=2))
            return 1 if report.problems else 0
        elif args.ganeti_cmd == "record-env":
            with LabLock(who="vm-testbed ganeti record-env"):
                files = envdump.record(lab, args.out)
            print("\n".join(str(f) for f in files))
        elif args.ganeti_cmd == "demo":
            return demo.main(nodes=args.nodes, keep=args.keep)
        else:
            print(json.dumps(lab.status(), indent=2))
    except LabError as e:
        print(f"vm-testbed ganeti: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
