"""Where a benchmark's figures go: appended to ``bench/results/<bench>.json`` (committed).

Each run appends one record: when (UTC), which commit (``-dirty`` when the tree had
uncommitted changes), which machine (host name, CPU model and count, kernel), the load
average at the start and at the end of the run, the bench's parameters, and its
figures (a flat ``{key: number}``). README, docs and CHANGELOG quote a figure only as a
link to its record (``[78.6 ms](bench/results/announce.json "baseline_ms")``), and
tests/unit/test_doc_figures.py fails when a quoted figure is not in a results file.
Importing this module writes hookpack's bytecode first (``write_bytecode``).

    results = Results("announce", runs=31, cap_s=0.5)
    ...
    results.add("baseline_ms", base)
    results.save()  # prints where
"""

from __future__ import annotations

import compileall
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def write_bytecode() -> None:
    """hookpack's .pyc files, written as an install writes them. A bench that times
    hookpack processes run from this tree would otherwise time, in every process, the
    compilation of each module changed since its .pyc when PYTHONDONTWRITEBYTECODE is set
    (as it is in some shells and CI images). Silent: a read-only tree (a guest's share)
    keeps what it has."""
    compileall.compile_dir(str(REPO / "hookpack"), quiet=2)


write_bytecode()  # every bench imports this module before it times anything


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                          check=False).stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, object]:
    return {"host": platform.node(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
            "kernel": platform.release(), "python": platform.python_version()}


class Results:
    """One run's record; ``save`` appends it to the bench's results file."""

    def __init__(self, bench: str, **params: object) -> None:
        self.bench = bench
        self.params = params
        self.figures: dict[str, float | int] = {}
        self.load_start = [round(x, 2) for x in os.getloadavg()]
        self.started = time.monotonic()

    def add(self, key: str, value: float) -> float:
        self.figures[key] = round(float(value), 3)
        return value

    def record(self) -> dict[str, object]:
        commit = _git("rev-parse", "HEAD")
        if _git("status", "--porcelain", "--untracked-files=no"):
            commit += "-dirty"
        return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit,
                "machine": machine(), "load_start": self.load_start,
                "load_end": [round(x, 2) for x in os.getloadavg()],
                "wall_s": round(time.monotonic() - self.started, 1),
                "params": self.params, "figures": self.figures}

    def save(self, path: Path | None = None) -> Path:
        path = path or RESULTS / f"{self.bench}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        records = json.loads(path.read_text()) if path.exists() else []
        records.append(self.record())
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        print(f"results appended to {shown}")
        return path


# A bench run inside a test guest cannot keep its record (the guest's view of the
# checkout is not this one's): it prints one RESULT line, and the side that started the
# guest reads it back and saves the record.
RESULT_PREFIX = "RESULT "


def result_line(figures: object) -> str:
    return RESULT_PREFIX + json.dumps(figures)


def read_result(output: str) -> Any | None:
    """The last RESULT line's value in a run's output, None when there is none."""
    lines = [x for x in output.splitlines() if x.startswith(RESULT_PREFIX)]
    return json.loads(lines[-1][len(RESULT_PREFIX):]) if lines else None


def run_inner_in_guest(script: Path, where: str, **guest: Any) -> tuple[int, Any | None]:
    """Run ``script --inner`` in the hostguest (vmtestbed.hostguest.run_in_guest, with
    ``guest`` for its size), print its output; (its exit code, its RESULT figures)."""
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "vm-testbed"))
    from vmtestbed.hostguest import run_in_guest

    run = run_in_guest([sys.executable, str(script.resolve()), "--inner"], cwd=repo,
                       modules=(), env={"PYTHONPATH": str(repo)}, timeout=900, **guest)
    print(run.output.strip())
    print(f"(in the hostguest: {where}; whole guest run {run.total:.0f} s)")
    return run.rc, read_result(run.output)
