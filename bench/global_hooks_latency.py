"""Benchmark: what the global hooks' entry (00-hookpack-global) costs a hook run when
the operator has no global scripts (the common case: one directory listing), and when
`global-pre.d` holds one trivial script. Wheel venv, emulator (Ganeti's way to run a
hook directory), median wall time over RUNS runs; the baseline is run the same way: a
hook directory whose one entry is that venv's `python -I` doing nothing (whole process
vs whole process, same harness, same N, same statistic). Appends to
bench/results/global_hooks_latency.json."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hook_latency import RUNS, SAMPLES, median_ms, wheel_venv

from bench.results import Results
from hookpack.emulator import run_hooks
from hookpack.env import read_env_dump
from hookpack.hooksinstall import GLOBAL_PRE_ENTRY, install


def main() -> None:
    results = Results("global_hooks_latency", runs=RUNS)
    work = Path(tempfile.mkdtemp(prefix="hookpack-bench-global-"))
    python = wheel_venv(work)
    environ = read_env_dump((SAMPLES / "disk-grow-pre-node1.env").read_text())
    bare = work / "baseline" / "disk-grow-pre.d"
    bare.mkdir(parents=True)
    (bare / "00-pass").write_text(f"#!{python} -I\npass\n")
    (bare / "00-pass").chmod(0o755)
    baseline = median_ms(lambda: run_hooks(bare.parent, "disk-grow", "pre", environ))
    print(f"baseline  an entry that is python -I doing nothing: {baseline:6.1f} ms")
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
