"""kill -9 of hook runs at random points in shaping and pinning applies; the next
normal run converges and nothing is left behind.

The node is tests/reliability/relnode.py's (netns with bridge/uplink/taps, real QEMU
``-accel kvm -S`` per running instance). At most two instances run at once so that
pinning takes its 1:1 path on this 2-CPU host (one pinned, one kept off its CPU)
instead of only floating. Each step changes the world as an operation does (start,
migrate in, reboot: shaping and pinning apply; stop, migrate out, NIC hotplug: shaping
applies), runs the installed entry for its post hook with the debug-only trace points
of hookpack/debugpoints.py (a pause at each point stretches the applies so that
seeded random kill delays land inside them; off unless the environment sets it), and
kills it with SIGKILL after a seeded random delay. The trace tells where the kill
landed. Then a normal run of the same hook must succeed, the kernel must hold exactly
what a full reconcile wants (and a full reconcile plans nothing), and no temp file or
blocking lock may be left.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.qemu, pytest.mark.slow]

KILLS = 50
MAX_STEPS = 80
MIN_INSIDE = 20  # kills that must land inside an apply (shaping or pinning)
PAUSE_MS = 60  # the applies are short next to interpreter start: stretch them
PINNING_OPS = ("start", "reboot", "migrate-target")  # the ops whose post hook pins here


def kill_hook(proc: subprocess.Popen) -> None:
    """SIGKILL to the hook's process group (our own child's session: the entry's shell
    and the Python it runs), as a node losing the process would."""
    os.killpg(proc.pid, signal.SIGKILL)


def gone(pid: int, within: float = 10.0) -> None:
    """The process that wrote the trace no longer runs (a killed shell alone would leave
    Python running on)."""
    give_up = time.monotonic() + within
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return  # reaped
        if state in ("Z", "X"):
            return  # dead, not yet reaped
        assert time.monotonic() < give_up, f"hook process {pid} still runs after SIGKILL"
        time.sleep(0.01)


def where(points: list[str]) -> str:
    """Where a killed run was: before any apply, inside one, or after/between them."""
    for apply in ("shaping", "pinning"):
        if f"{apply}:start" in points and f"{apply}:end" not in points:
            return f"inside {apply}"
    return "outside" if points else "before"


def test_kill9_during_applies_then_next_run_converges(relnode, install_hooks, tmp_path):
    node = relnode
    hooks = install_hooks(node.config)
    seed = int(os.environ.get("RELLOAD_SEED", random.randrange(1 << 30)))  # noqa: S311
    print(f"\ncrash seed {seed} (rerun: RELLOAD_SEED={seed})")
    rng = random.Random(seed)  # noqa: S311 - a seeded test
    names = [f"cr{i}.example.test" for i in range(3)]

    def step() -> tuple[str, str, dict[str, str]]:
        running = node.running()
        stopped = [n for n in names if n not in running]
        if len(running) < 2 and (not running or rng.random() < 0.5):
            op, name = rng.choice(("start", "migrate-target")), rng.choice(stopped)
            nics = rng.randint(1, 2)
            node.start(name, nics)
        else:
            op, name = rng.choice(("reboot", "reboot", "modify", "stop", "migrate-source")), \
                rng.choice(running)
            nics = 1
            if op == "reboot":
                node.reboot(name)
            elif op == "modify":
                nics = node.hotplug(name)
            else:
                node.stop(name)
        hpath, environ = node.env(op, name, nics)
        return op, hpath, environ

    def entry(hpath: str, environ: dict[str, str], debug: dict[str, str]) -> subprocess.Popen:
        env = {k: v for k, v in environ.items() if k.startswith("GANETI_")}
        env.update(PATH="/usr/sbin:/usr/bin:/sbin:/bin", **debug)
        # ip netns exec execs the entry, a /bin/sh script that runs Python as its child:
        # a session of its own, so that kill_hook() kills the whole hook (shell and Python)
        return subprocess.Popen(["ip", "netns", "exec", node.net.ns,
                                 str(hooks / f"{hpath}-post.d" / "50-hookpack")], env=env,
                                cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def converge(op: str, hpath: str, environ: dict[str, str]) -> str:
        proc = entry(hpath, environ, {})
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert ": failed:" not in out and "internal error" not in out, out
        node.check_shaping(node.probe())
        # the hook's own instance is in step only where pinning runs (start, reboot,
        # migrate target; not modify/stop): after another instance left, a modify hook's
        # instance may still float where it was put (docs/actions/pinning.md)
        node.check_pinning({environ["GANETI_INSTANCE_NAME"]} if op in PINNING_OPS else set())
        assert node.leftovers() == []
        return out

    # calibrate: an undisturbed start with the pauses, to spread the kill delays
    op, hpath, environ = ("start", *node.env("start", names[0], 1))
    node.start(names[0], 1)
    trace = tmp_path / "trace-calib"
    t0 = time.monotonic()
    proc = entry(hpath, environ, {"HOOKPACK_DEBUG_APPLY_TRACE": str(trace),
                                  "HOOKPACK_DEBUG_APPLY_PAUSE_MS": str(PAUSE_MS)})
    out, _ = proc.communicate(timeout=60)
    span = time.monotonic() - t0
    assert proc.returncode == 0, out
    calib = [line.split()[1] for line in trace.read_text().splitlines()]
    assert "shaping:start" in calib and "pinning:start" in calib, calib
    converge(op, hpath, environ)
    print(f"calibration run {span:.2f} s, points {calib}")

    landed: dict[str, int] = {}
    ops: dict[str, int] = {}
    spans: dict[str, float] = {}
    i = 0
    while sum(n for s, n in landed.items() if s != "finished") < KILLS:
        assert i < MAX_STEPS, landed
        i += 1
        op, hpath, environ = step()
        trace = tmp_path / f"trace{i}"
        proc = entry(hpath, environ, {"HOOKPACK_DEBUG_APPLY_TRACE": str(trace),
                                      "HOOKPACK_DEBUG_APPLY_PAUSE_MS": str(PAUSE_MS)})
        # a run without pinning (stop, migrate out, NIC hotplug) is shorter than the
        # calibrated start: each kind's span follows the whole runs seen of it (running mean)
        kind = "pinning" if op in PINNING_OPS else "shaping"
        delay = rng.uniform(0.1, 0.9) * spans.get(kind, span)
        t0 = time.monotonic()
        try:
            proc.wait(timeout=delay)
            finished = True
            spans[kind] = (spans.get(kind, span) + time.monotonic() - t0) / 2
        except subprocess.TimeoutExpired:
            kill_hook(proc)
            finished = False
        proc.communicate(timeout=60)
        points = []
        if trace.exists():
            pids = set()
            for line in trace.read_text().splitlines():
                pid, point = line.split()
                pids.add(int(pid))
                points.append(point)
            assert len(pids) == 1, pids  # one hook process wrote the trace ...
            gone(pids.pop())  # ... and it is dead (killed, or ended by itself)
        spot = "finished" if finished else where(points)
        landed[spot] = landed.get(spot, 0) + 1
        ops[op] = ops.get(op, 0) + 1
        out = converge(op, hpath, environ)
        print(f"{i:2} {op:15} delay {delay:.2f} s: {spot:15} {points[-1:]}; "
              f"next run: {' | '.join(out.strip().splitlines())[:160]}")
    kills = sum(n for s, n in landed.items() if s != "finished")
    inside = sum(n for s, n in landed.items() if s.startswith("inside"))
    print(f"kills: {kills} in {i} runs (inside an apply {inside}: {landed}); ops {ops}; "
          f"spans {({k: round(v, 2) for k, v in spans.items()})}; "
          "all converged, 0 orphans, 0 temp files, no blocking lock")
    assert kills >= KILLS
    assert inside >= MIN_INSIDE, landed
    assert landed.get("inside shaping", 0) >= 5 and landed.get("inside pinning", 0) >= 3, landed


def test_stop_hook_killed_between_deletes_and_rules_leaves_no_orphan_class(
        relnode, install_hooks, tmp_path):
    """Regression: the apply removed the rules (now: the mark chains) before the classes;
    a stop hook killed in between left uplink classes no mark named, which no later hook
    run saw (found by the random kills above). Killed right after the first step now
    ("shaping:deleted": classes gone, marks still naming the instance), the next run of
    the same hook must leave nothing behind."""
    node = relnode
    hooks = install_hooks(node.config)
    name = "orph.example.test"
    node.start(name, 2)
    for op in ("start", "stop"):
        if op == "stop":
            node.stop(name)
        hpath, environ = node.env(op, name, 2)
        env = {k: v for k, v in environ.items() if k.startswith("GANETI_")}
        entry = [str(hooks / f"{hpath}-post.d" / "50-hookpack")]
        trace = tmp_path / f"trace-{op}"
        debug = {"HOOKPACK_DEBUG_APPLY_TRACE": str(trace),
                 "HOOKPACK_DEBUG_APPLY_PAUSE_MS": "2000"} if op == "stop" else {}
        proc = subprocess.Popen(["ip", "netns", "exec", node.net.ns, *entry],
                                env={**env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **debug},
                                cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        if op == "stop":
            give_up = time.monotonic() + 30
            # the first point after "start": one kernel step of the apply is done
            while len(trace.read_text().splitlines() if trace.exists() else []) < 2:
                assert time.monotonic() < give_up and proc.poll() is None
                time.sleep(0.01)
            kill_hook(proc)
        out, _ = proc.communicate(timeout=60)
        if op == "stop":
            print(trace.read_text())
            gone(int(trace.read_text().split()[0]))  # the hook's Python died too
            proc = subprocess.run(["ip", "netns", "exec", node.net.ns, *entry],
                                  env={**env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                  cwd="/", capture_output=True, text=True, timeout=60)
            out = proc.stdout + proc.stderr
            print(out)
        assert proc.returncode == 0 and ": failed:" not in out, out
        node.check_shaping(node.probe())
