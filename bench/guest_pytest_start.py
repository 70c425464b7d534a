"""Benchmark: pytest's start in the stock-kernel test guest, with and without Hypothesis.

The guest steps of tests/shaping_guest and tests/pinning_numa start pytest in a TCG
guest; tests/helpers/guestpytest.py leaves the Hypothesis plugin out. This measures
what that saves: ``pytest --collect-only`` of the shaping suites the guest runs, as a
whole process (start to exit), alternately with the plugin (the project's default
pytest command) and without it (GUEST_PYTEST), the same number of runs, medians, and
the ratio with / without. The first run of each is counted apart (cold page cache).

This runs in the guest (``--inner``), booted once by the outer run, which saves the
record. TCG: absolute figures are an emulated machine's; the ratio is like for like.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results import Results, result_line, run_inner_in_guest  # noqa: E402
from tests.helpers.guestpytest import GUEST_PYTEST  # noqa: E402

RUNS = 5
SUITES = ("tests/shaping/test_shaping_netns.py", "tests/shaping/test_classifier_netns.py")
WITH_PLUGIN = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=")


def timed(argv: tuple[str, ...]) -> float:
    start = time.perf_counter()
    subprocess.run([*argv, "--collect-only", "-q", *SUITES], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def inner() -> None:
    times: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(RUNS + 1):
        times["with"].append(timed(WITH_PLUGIN))
        times["without"].append(timed(GUEST_PYTEST))
    figures = {f"{k}_first_s": round(v[0], 3) for k, v in times.items()}
    figures |= {f"{k}_s": round(statistics.median(v[1:]), 3) for k, v in times.items()}
    figures["ratio"] = round(figures["with_s"] / figures["without_s"], 3)
    for key, value in figures.items():
        print(f"  {key}: {value}")
    print(result_line(figures))


def main() -> None:
    if "--inner" in sys.argv:
        inner()
        return
    rc, figures = run_inner_in_guest(Path(__file__), "TCG, 2 vCPUs")
    if rc == 0 and figures:
        results = Results("guest_pytest_start", runs=RUNS, statistic="median",
                          suites=list(SUITES), where="hostguest, TCG, 2 vCPUs")
        for key, value in figures.items():
            results.add(key, value)
        results.save()
    sys.exit(rc)


if __name__ == "__main__":
    main()
