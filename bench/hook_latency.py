"""Benchmark: what a hook run costs Ganeti when hookpack has nothing to do.

hookpack is installed from a wheel into a fresh venv, as an operator installs it (an
editable install adds an import finder that costs ~10 ms). Every case is a hooks
directory run the way Ganeti runs it (emulator: cleared environment, cwd /, closed
stdin, one process per entry) on a recorded environment, N runs each, median wall time:
whole process against whole process. Baselines, run the same way in the same run:
  - `#!/bin/sh` + `exit 0`: the floor (starting any entry at all),
  - `#!<venv python> -I` + `pass`: what the former Python entries cost at the least.
hookpack cases (the shell entry decides, from facts baked in at install):
  - actions registered for the hook but all disabled in the config,
  - an enabled action whose node role does not match (master-only policy, other node),
  - a whole pre directory (00-hookpack-global + 50-hookpack), nothing to do,
  - the config changed since install: facts not trusted, Python's quick gate decides.
What the fail-safe shell costs when there is work (the record action on): the shell
entry against the former entry (`#!<venv python> -I` + `from hookpack.hook import main`),
same config, same action; and the same shell entry handing the run to a warm hook server
(`hookpack hook-server` from the same venv, started before the runs, hookpack/hookserver.py).
Target (issue #21): a directory with nothing to do costs about a shell start.
Figures go to bench/results/hook_latency.json.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests/fixtures/ganeti-env-samples"
sys.path.insert(0, str(REPO))

from bench.results import Results  # noqa: E402
from hookpack.emulator import run_hooks  # noqa: E402
from hookpack.env import read_env_dump  # noqa: E402
from hookpack.hooksinstall import ENTRY_NAME, GLOBAL_PRE_ENTRY, install  # noqa: E402

RUNS = 41


def median_ms(fn) -> float:
    fn()  # warm the page cache
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def wheel_venv(work: Path) -> str:
    """A venv with hookpack installed from a freshly built wheel (no dependencies needed
    on the no-op path, so none are installed)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(work / "wheel"), str(REPO)], check=True)
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(work / "venv")], check=True)
    python = str(work / "venv/bin/python")
    wheel = next((work / "wheel").glob("hookpack-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    return python


def _run_checked(root: Path, environ: dict[str, str]) -> None:
    results = run_hooks(root, "instance-add", "pre", environ)
    if not results or any(r.status != "success" or (
            r.output and not r.output.startswith("hookpack record: ")) for r in results):
        raise SystemExit(f"{root}: unexpected result {results}")


def interleaved_medians(cases: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Median wall ms per case, the cases taking turns (load drifts hit all alike)."""
    for fn in cases.values():
        fn()  # warm the page cache
    times: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(RUNS):
        for label, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[label].append((time.perf_counter() - start) * 1000)
    return {label: statistics.median(values) for label, values in times.items()}


def _entry_dir(root: Path, text: str) -> Path:
    directory = root / "instance-add-pre.d"
    directory.mkdir(parents=True)
    (directory / "50-baseline").write_text(text)
    (directory / "50-baseline").chmod(0o755)
    return root


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="hookpack-bench-"))
    python = wheel_venv(work)
    environ = read_env_dump((SAMPLES / "instance-add-post-node2.env").read_text())
    pre_env = {k: v for k, v in environ.items() if not k.startswith("GANETI_POST_")}
    pre_env["GANETI_HOOKS_PHASE"] = "pre"
    (work / "ganeti").mkdir()
    (work / "ganeti/ssconf_node_list").write_text("node1.example.test\nnode2.example.test\n")
    node2 = f'[node]\nfqdn = "node2.example.test"\n[paths]\nganeti_data_dir = "{work}/ganeti"\n'
    policy = '[policy]\nenabled = true\nname_pattern = "x"\n'
    record = f'[record]\nenabled = true\npath = "{work}/record.jsonl"\n'
    cases = {  # label: (config, entries dirs or None for the default layout, touch config)
        "registered, all disabled": (node2, [ENTRY_NAME], False),
        "enabled, role does not match": (node2 + policy, [ENTRY_NAME], False),
        "whole pre directory, nothing": (node2, [GLOBAL_PRE_ENTRY, ENTRY_NAME], False),
        "config changed since install": (node2 + policy, [ENTRY_NAME], True),
        "record on: shell entry": (node2 + record, [ENTRY_NAME], False),
        "record on: hook server": (node2 + record, [ENTRY_NAME], False),
    }
    roots = {"baseline sh exit 0": _entry_dir(work / "sh", "#!/bin/sh\nexit 0\n"),
             "baseline python -I pass": _entry_dir(work / "py", f"#!{python} -I\npass\n")}
    for label, (config_text, names, touch) in cases.items():
        root = work / label.replace(" ", "_").replace(",", "")
        config = root / "hookpack.toml"
        root.mkdir()
        # run_dir: the hook server's socket (only the server case starts one)
        config.write_text("[log]\nsyslog = false\n" + config_text.replace(
            "[paths]\n", f'[paths]\nrun_dir = "{root}/run"\n'))
        install(root / "hooks", python=python, config=str(config),
                entries={name: ["instance-add-pre.d"] for name in names})
        if touch:
            os.utime(config)
        roots[label] = root / "hooks"
    former = ("#!{python} -I\nimport sys\n\nfrom hookpack.hook import main\n\n"
              "sys.exit(main({config!r}))\n")
    config = roots["record on: shell entry"].parent / "hookpack.toml"
    roots["record on: former python entry"] = _entry_dir(
        work / "former", former.format(python=python, config=str(config)))
    server = start_server(python, roots["record on: hook server"])
    try:
        results = interleaved_medians({label: (lambda r=root: _run_checked(r, pre_env))
                                       for label, root in roots.items()})
    finally:
        server.terminate()
        server.wait(timeout=30)
    python_ms, sh_ms = results["baseline python -I pass"], results["baseline sh exit 0"]
    record = Results("hook_latency", runs=RUNS, statistic="median",
                     timed="whole hooks directory run by the emulator, cases interleaved")
    print(f"hook latency, median of {RUNS} runs each, whole process (emulator), "
          f"load {os.getloadavg()[0]:.1f}")
    for label, ms in results.items():
        print(f"{label:32} {ms:6.1f} ms  {ms / sh_ms:4.2f}x sh  {ms / python_ms:4.2f}x python")
        key = label.replace("record on: ", "record ").replace(",", "").replace(" ", "_")
        record.add(f"{key}_ms".replace("-", "_"), ms)
    served, own = results["record on: hook server"], results["record on: shell entry"]
    print(f"the hook server: {served:.1f} ms against {own:.1f} ms for the entry's own "
          f"Python, ratio {own / served:.2f}")
    record.add("record_own_python_per_server_x", own / served)
    record.save()


def start_server(python: str, hooks_root: Path) -> subprocess.Popen[bytes]:
    """`hookpack hook-server` from the bench's venv, for that case's config."""
    config = hooks_root.parent / "hookpack.toml"
    server = subprocess.Popen([str(Path(python).parent / "hookpack"), "hook-server",
                               "--config", str(config)], stdout=subprocess.DEVNULL)
    sock = hooks_root.parent / "run/hookserver.sock"
    give_up = time.monotonic() + 30
    while not sock.is_socket():
        if server.poll() is not None or time.monotonic() > give_up:
            raise SystemExit("hook server did not come up")
        time.sleep(0.05)
    return server


if __name__ == "__main__":
    main()
