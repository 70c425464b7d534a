"""Global hooks on the real Ganeti 3.0.2 lab: the synchronous entries around a
grow-disk on every node (run by each node's hook server), and `hookpack jobwatch` on the
master for an error, an opcode without hooks, a job whose process is killed, and a
watcher restart."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from vmtestbed.ganeti import compat
from vmtestbed.ganeti.hookpack_install import HOOK_SERVER_SOCKET, VENV
from vmtestbed.ganeti.layout import instance_name

from tests.ganeti.hooktable import expected_nodes

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]

MASTER = "node1.example.test"
INST = instance_name(7)
REPORTS = "/var/log/hookpack/global-reports.jsonl"
CURSOR = "/var/lib/hookpack/jobwatch.json"
# The operator's global hook: one JSON line per run with its environment and node.
SLOW = "/var/log/hookpack/global-slow"  # while it exists, each report takes 2 s more
SCRIPT = f"""#!/usr/bin/python3
import json, os, socket, time
pid, ancestors = os.getppid(), []
while pid > 1:
    ancestors.append(pid)
    with open(f"/proc/{{pid}}/status") as status:
        pid = int(next(l for l in status if l.startswith("PPid:")).split()[1])
with open({REPORTS!r}, "a") as f:
    f.write(json.dumps({{"node": socket.gethostname(), "env": dict(os.environ),
                        "ancestors": ancestors}}) + "\\n")
if os.path.exists({SLOW!r}):
    time.sleep(2)
"""


class Watcher:
    """`hookpack jobwatch` started on a node in the background, stopped by pid."""

    def __init__(self, lab, log: Path, node: str = MASTER) -> None:
        self.lab, self.log, self.node, self.proc = lab, log, node, None

    def start(self) -> None:
        argv = self.lab.node(self.node).nsenter([str(VENV / "bin/hookpack"), "jobwatch", "--config",
                                        "/etc/hookpack/hookpack.toml"])
        # nsenter execs hookpack: the pid is the watcher's
        self.proc = subprocess.Popen(argv, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        wait_for(lambda: "jobwatch: watching" in self.log.read_text(), 30, "watcher start")

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def lab(ganeti_lab, tmp_path_factory):
    lab = ganeti_lab
    made = []
    for node in lab.nodes:
        for phase in ("pre", "post"):
            directory = lab.node_file(node, f"/etc/ganeti/hooks/global-{phase}.d")
            directory.mkdir(exist_ok=True)
            made.append(directory)
            script = directory / "10-report"
            script.write_text(SCRIPT)
            script.chmod(0o755)
        lab.node_file(node, REPORTS).unlink(missing_ok=True)
    lab.node_file(MASTER, CURSOR).unlink(missing_ok=True)
    watcher = Watcher(lab, tmp_path_factory.mktemp("jobwatch") / "jobwatch.log")
    lab.global_watcher = watcher
    try:
        watcher.start()
        wait_for(lambda: lab.node_file(MASTER, CURSOR).exists(), 30, "the first cursor")
        lab.add_instance(7, node="node2", start=False)
        yield lab
    finally:
        watcher.stop()
        print(watcher.log.read_text())
        lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", INST, check=False)
        for directory in made:
            for f in directory.iterdir():
                f.unlink()
            directory.rmdir()
        for node in lab.nodes:
            lab.node_file(node, REPORTS).unlink(missing_ok=True)
        lab.node_file(MASTER, CURSOR).unlink(missing_ok=True)


def reports(lab, node: str = MASTER) -> list[dict[str, Any]]:
    """The operator script's runs on ``node`` (both parts)."""
    try:
        text = lab.node_file(node, REPORTS).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def watcher_reports(lab, job_id: str, node: str = MASTER) -> list[dict[str, str]]:
    # Only the watcher sets GANETI_OP_STATUS (hookpack's addition).
    return [r["env"] for r in reports(lab, node) if r["env"].get("GANETI_JOB_ID") == job_id
            and "GANETI_OP_STATUS" in r["env"]]


def submit(lab, *argv: str, on: str = MASTER) -> str:
    # options before arguments; on the node that is the master now
    done = lab.run_on(on, [*argv[:2], "--submit", *argv[2:]], check=True)
    out = (done.stdout + done.stderr).strip()  # "JobID: <id>"
    match = re.search(r"(\d+)\s*$", out)
    assert match, out
    return match.group(1)


def job_status(lab, job_id: str, on: str = MASTER) -> str:
    return lab.run_on(on, ["gnt-job", "list", "--no-headers", "-o", "status", job_id],
                      check=True).stdout.strip()


def wait_job(lab, job_id: str, timeout: float = 120, on: str = MASTER) -> str:
    return wait_for(lambda: (s := job_status(lab, job_id, on)) in ("success", "error",
                                                                  "canceled")
                    and s, timeout, f"job {job_id}")


def test_grow_disk_runs_global_hooks_around_its_own_on_every_node(lab):
    job = submit(lab, "gnt-instance", "grow-disk", INST, "0", "16M")
    assert wait_job(lab, job) == "success"
    want = expected_nodes("disk-grow", master=MASTER, primary="node2.example.test")
    seen: dict[str, set[str]] = {"pre": set(), "post": set()}
    for node in lab.nodes:
        # the lab runs the hook server on every node (vmtestbed.ganeti.hookpack_install)
        server = int(lab.run_on(node, ["cat", f"{HOOK_SERVER_SOCKET}.lock"],
                                check=True).stdout)
        for r in reports(lab, node.name):
            env = r["env"]
            if env.get("GANETI_HOOKS_PATH") != "disk-grow" or "GANETI_OP_STATUS" in env:
                continue
            assert server in r["ancestors"], (node.name, server, r["ancestors"])
            assert env["GANETI_INSTANCE_NAME"] == INST
            phase = env["GANETI_HOOKS_PHASE"]
            seen[phase].add(r["node"])
            assert env["GANETI_IS_MASTER"] == ("master" if r["node"] == MASTER
                                               else "not_master")
            assert env["GANETI_OP_CODE"] == "OP_INSTANCE_GROW_DISK"
            assert env["PATH"] == "/sbin:/bin:/usr/sbin:/usr/bin"
            if phase == "post":
                assert env["GANETI_POST_STATUS"] == "success"
                assert env["GANETI_POST_INSTANCE_DISK0_SIZE"] == "80"
            else:
                assert "GANETI_POST_STATUS" not in env
            if r["node"] == MASTER:  # the master has the job queue
                assert env["GANETI_JOB_ID"] == job
            else:  # a master candidate's copy may or may not name it; never another id
                assert env.get("GANETI_JOB_ID", job) == job
    assert seen == want
    # the watcher leaves it to the synchronous part: a later job is reported, this not
    marker = submit(lab, "gnt-debug", "delay", "--no-master", "0.1")
    wait_for(lambda: watcher_reports(lab, marker), 60, "the watcher's report of the marker")
    assert watcher_reports(lab, job) == []


def test_grow_beyond_the_storage_is_reported_as_error_by_the_watcher(lab):
    job = submit(lab, "gnt-instance", "grow-disk", INST, "0", "100T")
    assert wait_job(lab, job) == "error"
    (env,) = wait_for(lambda: watcher_reports(lab, job), 60, f"report of job {job}")
    assert env["GANETI_POST_STATUS"] == "error"
    assert env["GANETI_OP_CODE"] == "OP_INSTANCE_GROW_DISK"
    assert env["GANETI_HOOKS_PATH"] == "disk-grow"
    assert env["GANETI_IS_MASTER"] == "master" and env["GANETI_MASTER"] == MASTER
    assert env["GANETI_CLUSTER"] == "cluster1.example.test"
    assert "GANETI_OBJECT_TYPE" not in env and "GANETI_INSTANCE_NAME" not in env
    # no synchronous post run: Ganeti runs post hooks only after a success
    assert not [r for r in reports(lab) if r["env"].get("GANETI_JOB_ID") == job
                and r["env"]["GANETI_HOOKS_PHASE"] == "post" and "GANETI_OP_STATUS"
                not in r["env"]]


def test_an_opcode_without_hooks_is_reported_not_applicable(lab):
    job = submit(lab, "gnt-debug", "delay", "--no-master", "0.5")
    assert wait_job(lab, job) == "success"
    (env,) = wait_for(lambda: watcher_reports(lab, job), 60, f"report of job {job}")
    assert (env["GANETI_OP_CODE"], env["GANETI_POST_STATUS"], env["GANETI_OBJECT_TYPE"]) == (
        "OP_TEST_DELAY", "success", "NOT_APPLICABLE")
    assert env["GANETI_HOOKS_VERSION"] == "2" and env["GANETI_HOOKS_PHASE"] == "post"


def _job_file(lab, job_id: str) -> dict[str, Any] | None:
    path = lab.node_file(MASTER, f"/var/lib/ganeti/queue/job-{job_id}")
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def test_a_watcher_restart_mid_stream_neither_loses_nor_repeats(lab):
    watcher = lab.global_watcher
    slow = lab.node_file(MASTER, SLOW)
    slow.write_text("")
    try:
        first = [submit(lab, "gnt-debug", "delay", "--no-master", "1") for _ in range(3)]
        for job in first:
            wait_job(lab, job)
        # the three are reported in one cycle, 2 s each: stop during the first
        wait_for(lambda: any(watcher_reports(lab, j) for j in first), 60, "a first report")
        watcher.stop()  # SIGTERM: finishes the report under way, saves the cursor
    finally:
        slow.unlink(missing_ok=True)
    reported = sum(len(watcher_reports(lab, j)) for j in first)
    assert reported < len(first), "the watcher was not stopped mid-stream"
    during = [submit(lab, "gnt-debug", "delay", "--no-master", "0.5") for _ in range(2)]
    for job in first + during:
        wait_job(lab, job)
    watcher.start()
    after = [submit(lab, "gnt-debug", "delay", "--no-master", "0.5")]
    for job in first + during + after:
        wait_for(lambda j=job: watcher_reports(lab, j), 60, f"report of job {job}")
    time.sleep(5)
    counts = {job: len(watcher_reports(lab, job)) for job in first + during + after}
    assert counts == {job: 1 for job in counts}


def test_a_killed_job_process_is_reported_disappeared(lab):
    job = submit(lab, "gnt-debug", "delay", "--no-master", "60")
    data = wait_for(lambda: (d := _job_file(lab, job)) and d.get("process_id")
                    and d["ops"][0]["status"] == "running" and d, 60, "the job running")
    pid = data["process_id"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert "ganeti" in cmdline, f"pid {pid} is not a Ganeti job process: {cmdline}"
    os.kill(pid, signal.SIGKILL)
    (env,) = wait_for(lambda: watcher_reports(lab, job), 90, f"report of job {job}")
    assert (env["GANETI_OP_CODE"], env["GANETI_POST_STATUS"]) == ("OP_TEST_DELAY",
                                                                  "disappeared")
    assert env["GANETI_OBJECT_TYPE"] == "NOT_APPLICABLE"
    # Ganeti itself has not noticed yet (luxid looks every 307 s)...
    assert job_status(lab, job) == "running"
    # ...until told to: luxid's death detection then fails the job and wconfd frees
    # its locks; the watcher reported it already and does not report it again.
    lab.gnt("gnt-job", "cancel", "--kill", "--yes-do-it", job, check=False)
    assert wait_job(lab, job, timeout=90) == "error"
    time.sleep(5)  # two more watcher cycles
    assert len(watcher_reports(lab, job)) == 1


NODE2 = "node2.example.test"


def master_failover(lab, to: str) -> float:
    """`gnt-cluster master-failover`, run on the node that becomes the master."""
    t0 = time.monotonic()
    lab.run_on(to, ["gnt-cluster", "master-failover"], check=True, timeout=180)
    wait_for(lambda: lab.node_file(to, "/var/lib/ganeti/ssconf_master_node").read_text()
             .strip() == to, 30, f"ssconf naming {to} master")
    return time.monotonic() - t0


def test_master_failover_both_ways_reports_each_job_once_on_its_master(lab, tmp_path):
    """Watchers on both master candidates; a job, a failover, a job, a failover back, a
    job: each job is reported once, by the node that was master when it ended."""
    second = Watcher(lab, tmp_path / "jobwatch-node2.log", node=NODE2)
    lab.node_file(NODE2, CURSOR).unlink(missing_ok=True)
    master = MASTER
    try:
        second.start()
        before = submit(lab, "gnt-debug", "delay", "--no-master", "0.1")
        wait_for(lambda: watcher_reports(lab, before), 60, f"node1's report of {before}")
        wait_for(lambda: any("following the queue" in line for line in second.lines()), 30,
                 "node2 following the queue")
        print(f"failover to node2: {master_failover(lab, NODE2):.1f} s")
        master = NODE2
        between = submit(lab, "gnt-debug", "delay", "--no-master", "0.1", on=NODE2)
        wait_for(lambda: watcher_reports(lab, between, NODE2), 60,
                 f"node2's report of {between}")
        print(f"failover back to node1: {master_failover(lab, MASTER):.1f} s")
        master = MASTER
        after = submit(lab, "gnt-debug", "delay", "--no-master", "0.1")
        wait_for(lambda: watcher_reports(lab, after), 60, f"node1's report of {after}")
        time.sleep(5)  # two more cycles of both watchers: nothing more comes
        counts = {(job, node): len(watcher_reports(lab, job, node))
                  for job in (before, between, after) for node in (MASTER, NODE2)}
        assert counts == {(before, MASTER): 1, (before, NODE2): 0,
                          (between, MASTER): 0, (between, NODE2): 1,
                          (after, MASTER): 1, (after, NODE2): 0}
        (env,) = watcher_reports(lab, between, NODE2)
        assert env["GANETI_MASTER"] == NODE2 and env["GANETI_IS_MASTER"] == "master"
        log1 = lab.global_watcher.log.read_text()
        assert f"{NODE2} is the master: following the queue without reporting" in log1
        assert "master since luxid started at" in log1
        assert "master since luxid started at" in second.log.read_text()
        compat.note(lab.version, "action.global_hooks", "around every opcode on every node; "
                    "each job reported once, by the master's watcher, across a master "
                    "failover both ways")
    finally:
        if master != MASTER:
            master_failover(lab, MASTER)
        second.stop()
        print(second.log.read_text())
        lab.node_file(NODE2, CURSOR).unlink(missing_ok=True)
