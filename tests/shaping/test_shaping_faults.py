"""Netlink replies lost in the middle of a batch, and instance names too long for the
mark rule's comment, against real kernel objects in network namespaces (root).

ENOBUFS is provoked for real: ``HOOKPACK_NETLINK_RCVBUF`` gives hookpack's netlink
socket a tiny receive buffer, so the kernel carries out the whole batch but drops the
echoes it cannot queue and flags the socket; hookpack must re-observe and finish.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.shaping.conftest import PYTHON

pytestmark = pytest.mark.netns

LONG = ".".join(["x" * 61, "y" * 61, "z" * 61, "w" * 63])  # 249 characters, a valid name


def _apply_with_env(s, env: dict[str, str], *args: str, verb: str = "apply"
                    ) -> tuple[int, dict, str]:
    proc = subprocess.run(["ip", "netns", "exec", s.node.ns, PYTHON, "-m", "hookpack",
                           "shaping", verb, *args, "--json", "--config", str(s.config)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **env})
    return proc.returncode, json.loads(proc.stdout or "{}"), proc.stderr


def test_enobufs_mid_batch_is_reobserved_and_finished(shaper):
    s = shaper()
    taps = [f"tap{i}" for i in range(60)]
    s.node.add_taps_batch(taps)
    for i, tap in enumerate(taps):
        s.node.nic(f"vm{i // 2}.example.test", i % 2, tap)
    code, out, err = _apply_with_env(s, {"HOOKPACK_NETLINK_RCVBUF": "2048"}, "--all")
    assert code == 0 and not out["failures"], (out, err)
    assert any("ENOBUFS" in n and "re-observed and finished" in n for n in out["notes"]), out
    # everything is there and right: a normal run finds nothing to do
    again = s.cli("apply", "--all")
    assert again["writes"] == {"netlink": 0, "nf_tables": 0}, again
    classes = s.classes()
    assert len([h for h in classes if int(h.split(":")[1], 16) >= 0x10]) == 60
    marks = s.marks()
    assert sorted(marks) == sorted(taps) and all(m["mark"] for m in marks.values())


def test_too_long_instance_name_fails_alone_the_others_are_shaped(shaper):
    s = shaper()
    for tap in ("tap0", "tap1"):
        s.node.add_tap(tap)
    s.node.nic(LONG, 0, "tap0")
    s.node.nic("fine.example.test", 0, "tap1")
    code, out, err = s.cli_raw("apply", "--all")
    assert code == 1 and "Traceback" not in out + err
    assert f"{LONG}: not shaped: the name has 249 characters" in err, err
    assert set(s.classes()) == {"4850:1", "4850:2", "4850:10"}
    assert list(s.marks()) == ["tap1"]  # no mark for the refused instance's tap
    # its own hook says so in one line, and changes nothing else
    code, out, err = s.cli_raw("apply", LONG)
    assert code == 1 and "not shaped: the name has 249 characters" in err
    assert set(s.classes()) == {"4850:1", "4850:2", "4850:10"}


def _shapes(classes: dict[str, dict]) -> dict[str, dict]:
    """Classes without their counters (the host's own packets move them)."""
    return {h: {k: v for k, v in c.items() if k not in ("bytes", "packets")}
            for h, c in classes.items()}


def _points(trace) -> list[str]:
    return [line.split()[1] for line in trace.read_text().splitlines()] \
        if trace.exists() else []


def test_a_fresh_uplink_gets_its_creations_while_the_plan_is_made(shaper, tmp_path):
    """A whole-node apply that makes the uplink's qdisc sends its creations from a
    thread while it plans (hookpack.actions.shaping.stream); a plan and a run with the
    qdisc in place never do. The node is the same as made in order: a run after finds
    nothing to do."""
    s = shaper()
    taps = [f"tap{i}" for i in range(40)]
    s.node.add_taps_batch(taps)
    for i, tap in enumerate(taps):
        s.node.nic(f"vm{i // 2}.example.test", i % 2, tap)
    trace = tmp_path / "trace"
    env = {"HOOKPACK_DEBUG_APPLY_TRACE": str(trace)}
    code, out, err = _apply_with_env(s, env, "--all", verb="plan")
    assert code == 0 and out["changes"] and _points(trace) == [] and s.classes() == {}, err
    code, out, err = _apply_with_env(s, env, "--all")
    assert code == 0 and not out["failures"], (out, err)
    points = _points(trace)
    assert points[:2] == ["shaping:stream", "shaping:start"], points
    assert out["writes"]["netlink"] == 5 + 5 * len(taps), out["writes"]
    classes = s.classes()
    assert len([h for h in classes if int(h.split(":")[1], 16) >= 0x10]) == len(taps)
    marks = s.marks()
    assert sorted(marks) == sorted(taps) and all(m["mark"] for m in marks.values())
    trace.unlink()
    code, out, err = _apply_with_env(s, env, "--all")
    assert out["writes"] == {"netlink": 0, "nf_tables": 0} and "shaping:stream" not in \
        _points(trace), (out, err)
    # self-healing: the uplink's qdisc deleted by hand, the next run makes it all again
    s.node.run("tc", "qdisc", "del", "dev", "up0", "root")
    code, out, err = _apply_with_env(s, env, "--all")
    assert code == 0 and not out["failures"], (out, err)
    assert _points(trace).count("shaping:stream") == 1
    assert _shapes(s.classes()) == _shapes(classes)
    assert s.cli("apply", "--all")["writes"] == {"netlink": 0, "nf_tables": 0}
