"""Benchmark: what a hook run costs Ganeti when hookpack has nothing to do.

hookpack is installed from a wheel into a fresh venv, as an operator installs it (an
editable install adds an import finder that costs ~10 ms). The installed entry script
runs the way Ganeti runs it (emulator: cleared environment, cwd /, closed stdin) on a
recorded environment; printed: the median wall time and its ratio to that venv's
`python -I -c pass` measured in the same run, for two no-op cases:
  - actions registered for the hook but all disabled in the config,
  - an enabled action whose node role does not match (env parsed, roles resolved).
Target (issue #2): <= 50 ms median, Python start included.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests/fixtures/ganeti-env-samples"
sys.path.insert(0, str(REPO))

from hookpack.emulator import run_hooks  # noqa: E402
from hookpack.env import read_env_dump  # noqa: E402
from hookpack.hooksinstall import install  # noqa: E402

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


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="hookpack-bench-"))
    python = wheel_venv(work)
    environ = read_env_dump((SAMPLES / "instance-add-post-node2.env").read_text())
    cases = {
        "registered, all disabled": ("", "instance-add", "post"),
        "enabled, role does not match": (
            '[node]\nfqdn = "node2.example.test"\n[policy]\nenabled = true\n'
            'name_pattern = "x"\n', "instance-add", "pre"),
    }
    baseline = median_ms(lambda: subprocess.run([python, "-I", "-c", "pass"],
                                                check=True))
    print(f"baseline  python -I -c pass: {baseline:6.1f} ms")
    for label, (config_text, hpath, phase) in cases.items():
        root = work / label.replace(" ", "_").replace(",", "")
        config = root / "hookpack.toml"
        root.mkdir()
        config.write_text("[log]\nsyslog = false\n" + config_text)
        install(root / "hooks", python=python, config=str(config), dirs=[f"{hpath}-{phase}.d"])
        env = {**environ, "GANETI_HOOKS_PHASE": phase}
        ms = median_ms(lambda r=root, e=env, h=hpath, p=phase: run_hooks(r / "hooks", h, p, e))
        print(f"{label:30} {ms:6.1f} ms  ratio {ms / baseline:4.2f}x  "
              f"({'OK' if ms <= 50 else 'OVER'} target 50 ms)")


if __name__ == "__main__":
    main()
