"""Benchmark: what importing a library costs a hook process (why hookpack has its own
small QMP client and netlink code instead of qemu.qmp and pyroute2 on the hook path).

A fresh venv gets hookpack (from a wheel), qemu.qmp and pyroute2 (the version range of
pyproject.toml). Every case is a whole process of that venv's interpreter, started
the way a hook entry starts (``python -I``), interleaved round by round so machine load
hits all alike; printed per case: the median wall time over RUNS rounds and what it
adds to the baseline ``python -I -c pass`` (same N, same statistic, same run).
Appends to bench/results/imports.json.
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

from bench.results import Results  # noqa: E402

RUNS = 31
CASES = {
    "baseline": "pass",
    "qemu_qmp": "import qemu.qmp",
    "pyroute2": "import pyroute2",
    "pyroute2_iproute": "from pyroute2 import IPRoute",
    "hookpack_qmp": "import hookpack.adapters.qmp",
    "hookpack_hook": "import hookpack.hook",
}


def venv(work: Path) -> str:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(work / "wheel"), str(REPO)], check=True)
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(work / "venv")], check=True)
    python = str(work / "venv/bin/python")
    wheel = next((work / "wheel").glob("hookpack-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel), "qemu.qmp",
                    "pyroute2>=0.9,<0.10"], check=True)
    return python


def wall_ms(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    results = Results("imports", runs=RUNS, cases=CASES)
    work = Path(tempfile.mkdtemp(prefix="hookpack-bench-imports-"))
    try:
        python = venv(work)
        times: dict[str, list[float]] = {name: [] for name in CASES}
        for i in range(RUNS + 1):  # round 0 warms the page cache
            for name, code in CASES.items():
                ms = wall_ms([python, "-I", "-c", code])
                if i:
                    times[name].append(ms)
        base = statistics.median(times["baseline"])
        results.add("baseline_ms", base)
        print(f"whole process, median of {RUNS} interleaved runs, python -I")
        print(f"{'baseline (python -I -c pass)':34} {base:6.1f} ms")
        for name, code in CASES.items():
            if name == "baseline":
                continue
            ms = statistics.median(times[name])
            results.add(f"{name}_ms", ms)
            results.add(f"{name}_added_ms", ms - base)
            print(f"{code:34} {ms:6.1f} ms  +{ms - base:6.1f} ms over the baseline")
        results.save()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
