"""Run inside the node's netns: many hook runs at once, as Ganeti's node daemon runs
hooks of concurrent jobs (one hooks-dir run per job, through the installed entries).

``python -m tests.reliability.burst HOOKS_DIR SPEC.json`` where the spec is a list of
``{"hpath", "phase", "env"}``; all runs are released together by a barrier. Prints a
JSON list of {"results": [[name, status, exit_code, timed_out, output]], "seconds"}
in the spec's order, then the burst's wall time.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from hookpack.emulator import run_hooks


def main() -> int:
    hooks = Path(sys.argv[1])
    spec = json.loads(Path(sys.argv[2]).read_text())
    barrier = threading.Barrier(len(spec))
    out: list[dict | None] = [None] * len(spec)

    def one(i: int, item: dict) -> None:
        barrier.wait()
        start = time.monotonic()
        results = run_hooks(hooks, item["hpath"], item["phase"], item["env"])
        out[i] = {"seconds": time.monotonic() - start,
                  "results": [[r.name, r.status, r.exit_code, r.timed_out, r.output]
                              for r in results]}

    start = time.monotonic()
    threads = [threading.Thread(target=one, args=(i, item)) for i, item in enumerate(spec)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"runs": out, "wall": time.monotonic() - start}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
