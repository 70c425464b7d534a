"""Run Ganeti's hooks through hookpack's emulator, inside the test root filesystem.

Copied into the chroot and run there by its system Python with the *installed* package
(no checkout on sys.path). Replays the recorded env dumps in SAMPLES_DIR through the
hooks tree, once (``--once``) or in a loop until STOP_FILE exists (``--until``), and
appends one JSON line per entry script run to OUT: sample, entry, status, exit code,
output, start and end time.

usage: python3 hookloop.py SAMPLES_DIR OUT (--once | --until STOP_FILE)
"""

import json
import sys
import time
from pathlib import Path

from hookpack.emulator import run_hooks
from hookpack.env import read_env_dump

HOOKS_ROOT = Path("/etc/ganeti/hooks")


def run_samples(samples: list[Path], out) -> None:
    for sample in samples:
        environ = read_env_dump(sample.read_text())
        start = time.time()
        results = run_hooks(HOOKS_ROOT, environ["GANETI_HOOKS_PATH"],
                            environ["GANETI_HOOKS_PHASE"], environ, timeout=60)
        end = time.time()
        for r in results:
            out.write(json.dumps({"sample": sample.stem, "entry": r.name, "status": r.status,
                                  "exit": r.exit_code, "output": r.output,
                                  "start": start, "end": end}) + "\n")
        out.flush()


def main() -> int:
    samples = sorted(Path(sys.argv[1]).glob("*.env"))
    with open(sys.argv[2], "a") as out:
        if sys.argv[3] == "--once":
            run_samples(samples, out)
            return 0
        stop = Path(sys.argv[4])
        while not stop.exists():
            run_samples(samples, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
