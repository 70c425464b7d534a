"""Benchmark: hookpack.record against dataclasses, whole process against whole process.

The classes: every record class that `hookpack shaping apply` imports (found by importing
its modules here and reading their fields), written out twice as a module of the same
class bodies (same fields, defaults, factories, compare/repr flags, frozen or not): once
under ``@dataclasses.dataclass``, once under ``@hookpack.record.record``. Each case is a
whole process of this interpreter (``python -c 'import <module>'``, Python start
included), interleaved round by round so machine load hits all alike; printed per case:
the median wall time over --runs rounds and what it adds to the baseline (``import
typing, collections.abc``: what hookpack imports anyway). Appends to
bench/results/record_cost.json: ``baseline_ms``, ``dataclasses_ms``, ``record_ms``,
``*_added_ms``, ``saved_ms`` (dataclasses_added - record_added), ``classes``.

Usage: .venv/bin/python bench/record_cost.py [--runs 31]
"""

from __future__ import annotations

import argparse
import compileall
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results import Results  # noqa: E402
from hookpack.record import MISSING  # noqa: E402

PATH_MODULES = ("hookpack.cli", "hookpack.action", "hookpack.config", "hookpack.confd",
                "hookpack.actions.shaping.action", "hookpack.actions.shaping.reconcile",
                "hookpack.actions.shaping.legacy", "hookpack.actions.shaping.stream")
SIMPLE = (int, float, str, bytes, bool, type(None), tuple)


def path_records() -> list[type]:
    """The record classes defined in the modules `hookpack shaping apply` imports."""
    before = set(sys.modules)
    for name in PATH_MODULES:
        importlib.import_module(name)
    found = []
    for name in sorted(set(sys.modules) - before | set(PATH_MODULES)):
        module = sys.modules.get(name)
        if module is None or not name.startswith("hookpack"):
            continue
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == name and \
                    "__record_specs__" in value.__dict__:
                found.append(value)
    return found


def class_source(cls: type, deco: str) -> str:
    frozen = cls.__setattr__ is not object.__setattr__
    lines = [f"@{deco}(frozen={frozen})", f"class {cls.__name__}:"]
    for spec in cls.__record_specs__:  # type: ignore[attr-defined]
        flags = "" if spec.compare and spec.repr else \
            f", compare={spec.compare}, repr={spec.repr}"
        if spec.default_factory is not None:
            value = f" = field(default_factory=list{flags})"
        elif spec.default is not MISSING:
            default = spec.default if isinstance(spec.default, SIMPLE) else None
            value = f" = field(default={default!r}{flags})" if flags else f" = {default!r}"
        else:
            value = ""
        lines.append(f"    {spec.name}: object{value}")
    if len(lines) == 2:
        lines.append("    pass")
    return "\n".join(lines)


def write_modules(work: Path, classes: list[type]) -> None:
    for mod, head, deco in (
            ("with_dataclasses", "from dataclasses import dataclass, field", "dataclass"),
            ("with_records", "from hookpack.record import field, record", "record")):
        body = "\n\n\n".join(class_source(c, deco) for c in classes)
        (work / f"{mod}.py").write_text(
            f"from __future__ import annotations\n\n{head}\n\n\n{body}\n")


def wall_ms(code: str, work: Path) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(work)!r}); "
                    f"{code}"], check=True, cwd="/")
    return (time.perf_counter() - t) * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=31)
    args = ap.parse_args()
    classes = path_records()
    results = Results("record_cost", runs=args.runs)
    cases = {"baseline": "import typing, collections.abc",
             "dataclasses": "import typing, collections.abc, with_dataclasses",
             "record": "import typing, collections.abc, with_records"}
    with tempfile.TemporaryDirectory(prefix="hp-record-") as tmp:
        work = Path(tmp)
        write_modules(work, classes)
        # their bytecode written first, as for hookpack (bench.results.write_bytecode)
        compileall.compile_dir(str(work), quiet=1)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, code in cases.items():
                times[name].append(wall_ms(code, work))
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"{len(classes)} record classes on the `hookpack shaping apply` path; "
          f"median of {args.runs} whole processes each")
    results.add("classes", len(classes))
    for name in cases:
        added = med[name] - med["baseline"]
        print(f"{name:12} {med[name]:7.2f} ms   added to the baseline {added:6.2f} ms")
        results.add(f"{name}_ms", round(med[name], 2))
        if name != "baseline":
            results.add(f"{name}_added_ms", round(added, 2))
    saved = med["dataclasses"] - med["record"]
    print(f"saved by records: {saved:.2f} ms a process")
    results.add("saved_ms", round(saved, 2))
    results.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
