"""Run inside the node's netns: another firewall tool writing the mangle table.

``python -m tests.reliability.foreign IPTABLES SEED STOPFILE LEDGER FIRST`` loops until
STOPFILE exists: each step adds (-A) or deletes (-D) one of its own rules, in FORWARD
(next to hookpack's jump) or in its own chain, with ``iptables -w``. Every rule carries
the comment ``relload-fw-<n>``. At the end it writes LEDGER (JSON): the rules it left
in place, its write count and every failed write.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

CHAIN = "RELLOAD-FOREIGN"


def rule(n: int) -> list[str]:
    chain = "FORWARD" if n % 2 else CHAIN
    return [chain, "-s", f"198.51.100.{n}/32", "-m", "comment", "--comment",
            f"relload-fw-{n}", "-j", "RETURN"]


def main() -> int:
    ipt, seed, stop, ledger = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    first = int(sys.argv[5])  # its rules are first..first+39: one range per writer
    rng = random.Random(seed)  # noqa: S311 - a seeded test mix
    failures: list[str] = []
    present: set[int] = set()
    writes = 0

    def write(op: str, args: list[str]) -> bool:
        nonlocal writes
        writes += 1
        proc = subprocess.run([ipt, "-w", "-t", "mangle", op, *args], capture_output=True,
                              text=True, timeout=60, check=False)
        if proc.returncode:
            failures.append(f"{op} {' '.join(args)}: {proc.stderr.strip()}")
        return proc.returncode == 0

    exists = subprocess.run([ipt, "-w", "-t", "mangle", "-S", CHAIN], capture_output=True,
                            timeout=60, check=False).returncode == 0
    if not exists:
        write("-N", [CHAIN])
    while not stop.exists():
        time.sleep(0.01)  # a busy tool, not a fork bomb on a shared 2-core host
        n = first + rng.randrange(40)
        if n in present:
            if write("-D", rule(n)):
                present.discard(n)
        elif write("-A", rule(n)):
            present.add(n)
    Path(ledger).write_text(json.dumps({"present": sorted(present), "writes": writes,
                                        "failures": failures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
