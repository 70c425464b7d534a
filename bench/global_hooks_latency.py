"""Benchmark: what the global hooks' entry (00-hookpack-global) costs a hook run when
the operator has no global scripts (the common case: one directory listing), and when
`global-pre.d` holds one trivial script. Same method as bench/hook_latency.py: wheel
venv, emulator, median wall time and its ratio to `python -I -c pass` of that venv."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hook_latency import RUNS, SAMPLES, median_ms, wheel_venv

from bench.results import Results
from hookpack.emulator import run_hooks
from hookpack.env import read_env_dump
from hookpack.hooksinstall import GLOBAL_PRE_ENTRY, install


def main() -> None:
    import subprocess

    results = Results("global_hooks_latency", runs=RUNS)
    work = Path(tempfile.mkdtemp(prefix="hookpack-bench-global-"))
    python = wheel_venv(work)
    environ = read_env_dump((SAMPLES / "disk-grow-pre-node1.env").read_text())
    baseline = median_ms(lambda: subprocess.run([python, "-I", "-c", "pass"], check=True))
    print(f"baseline  python -I -c pass: {baseline:6.1f} ms")
    results.add("baseline_ms", baseline)
    config = work / "hookpack.toml"
    config.write_text('[log]\nsyslog = false\n[node]\nfqdn = "node1.example.test"\n')
    for key, label, script in (("no_scripts", "no global-pre.d", None),
                               ("one_script", "one global-pre.d script", "true")):
        root = work / label.replace(" ", "_").replace(".", "")
        install(root, python=python, config=str(config),
                entries={GLOBAL_PRE_ENTRY: ["disk-grow-pre.d"]})
        if script:
            (root / "global-pre.d").mkdir()
            path = root / "global-pre.d" / "10-x"
            path.write_text(f"#!/bin/sh\n{script}\n")
            path.chmod(0o755)
        ms = median_ms(lambda r=root: run_hooks(r, "disk-grow", "pre", environ))
        print(f"{label:30} {ms:6.1f} ms  ratio {ms / baseline:4.2f}x")
        results.add(f"{key}_ms", ms)
        results.add(f"{key}_ratio", ms / baseline)
    results.save()


if __name__ == "__main__":
    main()
