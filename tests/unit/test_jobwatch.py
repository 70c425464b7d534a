"""`hookpack jobwatch` on hand-written job files shaped like Ganeti 3.0.2's
(lib/jqueue/__init__.py Serialize; luxid's death detection src/Ganeti/JQScheduler.hs)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hookpack.jobwatch import CURSOR_NAME, DEATH_REASON, Watcher

MASTER = "node1.example.test"


@pytest.fixture
def site(tmp_path):
    data = tmp_path / "ganeti"
    (data / "queue").mkdir(parents=True)
    (data / "ssconf_master_node").write_text(MASTER + "\n")
    (data / "ssconf_cluster_name").write_text("cluster1.example.test\n")
    hooks = tmp_path / "hooks"
    (hooks / "global-post.d").mkdir(parents=True)
    luxid_running(tmp_path)
    reports = tmp_path / "reports.jsonl"
    script = hooks / "global-post.d" / "10-report"
    script.write_text(f"#!{sys.executable}\nimport json, os\n"
                      f"with open({str(reports)!r}, 'a') as f:\n"
                      "    f.write(json.dumps(dict(os.environ)) + '\\n')\n")
    script.chmod(0o755)
    return tmp_path


LUXID_PID = 1  # a pid in the test's proc root: the luxid "runs" while proc/1 exists


def luxid_running(site: Path, started: float | None = None) -> None:
    """This node's luxid runs, started at ``started`` (its pid file's mtime)."""
    (site / "proc" / str(LUXID_PID)).mkdir(parents=True, exist_ok=True)
    pidfile = site / "run" / "ganeti-luxid.pid"
    pidfile.parent.mkdir(exist_ok=True)
    pidfile.write_text(f"{LUXID_PID}\n")
    if started is not None:
        os.utime(pidfile, (started, started))


def watcher(site: Path, fqdn: str = MASTER, lines: list | None = None) -> Watcher:
    return Watcher(data_dir=site / "ganeti", hooks_dir=site / "hooks",
                   state_dir=site / "state", fqdn=fqdn, script_timeout=10,
                   proc_root=site / "proc", luxid_pidfile=site / "run" / "ganeti-luxid.pid",
                   out=(lines.append if lines is not None else lambda line: None))


def reports(site: Path) -> list[dict[str, str]]:
    path = site / "reports.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def summary(site: Path) -> list[tuple[str, str, str, str]]:
    return [(r["GANETI_JOB_ID"], r["GANETI_OP_CODE"], r["GANETI_POST_STATUS"],
             r.get("GANETI_OBJECT_TYPE", "-")) for r in reports(site)]


def op(op_id: str, status: str, started: bool = True, **input_) -> dict:
    return {"input": {"OP_ID": op_id, **input_}, "status": status, "result": None,
            "log": [], "start_timestamp": [1700000000, 0] if started else None,
            "exec_timestamp": None, "end_timestamp": None, "priority": 0}


def write_job(site: Path, job_id: int, ops: list[dict], *, livelock: str | None = None,
              pid: int | None = None, archived: bool = False) -> Path:
    queue = site / "ganeti" / "queue"
    directory = queue / "archive" / str(job_id // 10000) if archived else queue
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"job-{job_id}"
    path.write_text(json.dumps({"id": job_id, "ops": ops, "start_timestamp": [1, 0],
                                "end_timestamp": None, "received_timestamp": [1, 0],
                                "livelock": livelock, "process_id": pid}))
    return path


def started(site: Path) -> Watcher:
    """A watcher past its first start (empty queue: nothing taken as history)."""
    w = watcher(site)
    assert w.cycle() == []
    assert (site / "state" / CURSOR_NAME).exists()
    return w


def test_first_start_takes_finished_jobs_as_history(site):
    write_job(site, 1, [op("OP_TEST_DELAY", "success")])
    write_job(site, 2, [op("OP_INSTANCE_GROW_DISK", "error")])
    write_job(site, 3, [op("OP_TEST_DELAY", "running")], livelock=None, pid=None)
    lines: list[str] = []
    w = watcher(site, lines=lines)
    w.cycle()
    w.cycle()
    assert reports(site) == []
    assert "2 finished job(s) taken as already reported" in lines[0]
    path = write_job(site, 3, [op("OP_TEST_DELAY", "success")])  # the running one ends
    assert path.exists()
    w.cycle()
    assert summary(site) == [("3", "OP_TEST_DELAY", "success", "NOT_APPLICABLE")]


def test_each_status_is_reported_as_the_design_says(site):
    w = started(site)
    write_job(site, 10, [op("OP_TEST_DELAY", "success")])
    write_job(site, 11, [op("OP_INSTANCE_GROW_DISK", "success", instance_name="i1")])
    write_job(site, 12, [op("OP_INSTANCE_GROW_DISK", "error", instance_name="i1")])
    write_job(site, 13, [op("OP_TEST_DELAY", "success"),
                         op("OP_TEST_DELAY", "error"),
                         op("OP_TEST_DELAY", "error", started=False)])
    write_job(site, 14, [op("OP_INSTANCE_STARTUP", "canceled")])
    write_job(site, 15, [op("OP_TEST_DELAY", "canceled", started=False)])
    w.cycle()
    assert summary(site) == [
        ("10", "OP_TEST_DELAY", "success", "NOT_APPLICABLE"),
        # 11: grow-disk has hooks: 99-hookpack-global reported it
        ("12", "OP_INSTANCE_GROW_DISK", "error", "-"),
        ("13", "OP_TEST_DELAY", "success", "NOT_APPLICABLE"),
        ("13", "OP_TEST_DELAY", "error", "NOT_APPLICABLE"),
        ("14", "OP_INSTANCE_STARTUP", "error", "-"),
    ]
    env = reports(site)[1]
    assert env["GANETI_HOOKS_PATH"] == "disk-grow" and env["GANETI_OP_STATUS"] == "error"
    assert reports(site)[4]["GANETI_OP_STATUS"] == "canceled"
    assert {k: v for k, v in reports(site)[0].items() if k not in ("PWD", "LC_CTYPE")} == {
        "PATH": "/sbin:/bin:/usr/sbin:/usr/bin", "GANETI_HOOKS_VERSION": "2",
        "GANETI_HOOKS_PHASE": "post", "GANETI_OP_CODE": "OP_TEST_DELAY",
        "GANETI_JOB_ID": "10", "GANETI_IS_MASTER": "master", "GANETI_POST_STATUS": "success",
        "GANETI_OP_STATUS": "success", "GANETI_CLUSTER": "cluster1.example.test",
        "GANETI_MASTER": MASTER, "GANETI_DATA_DIR": str(site / "ganeti"),
        "GANETI_OBJECT_TYPE": "NOT_APPLICABLE"}
    w.cycle()
    assert len(reports(site)) == 5  # nothing twice


def test_a_restarted_watcher_repeats_nothing_and_misses_nothing(site):
    started(site)
    write_job(site, 20, [op("OP_TEST_DELAY", "success"), op("OP_TEST_DELAY", "running")],
              pid=os.getpid())
    (site / "proc" / str(os.getpid())).mkdir(parents=True)
    watcher(site).cycle()
    assert summary(site) == [("20", "OP_TEST_DELAY", "success", "NOT_APPLICABLE")]
    # restart (a new process: only the cursor file carries over)
    write_job(site, 20, [op("OP_TEST_DELAY", "success"), op("OP_TEST_DELAY", "success")])
    write_job(site, 21, [op("OP_TEST_DELAY", "error")])
    w = watcher(site)
    w.cycle()
    w.cycle()
    assert summary(site) == [("20", "OP_TEST_DELAY", "success", "NOT_APPLICABLE"),
                             ("20", "OP_TEST_DELAY", "success", "NOT_APPLICABLE"),
                             ("21", "OP_TEST_DELAY", "error", "NOT_APPLICABLE")]
    assert [r["GANETI_JOB_ID"] for r in reports(site)] == ["20", "20", "21"]
    cursor = json.loads((site / "state" / CURSOR_NAME).read_text())
    assert cursor["done"] == [[20, 21]] and cursor["reported"] == {}


def test_archived_jobs_are_followed_and_not_reported_again(site):
    w = started(site)
    live = write_job(site, 30001, [op("OP_TEST_DELAY", "success")])
    w.cycle()
    live.unlink()
    write_job(site, 30001, [op("OP_TEST_DELAY", "success")], archived=True)
    write_job(site, 30002, [op("OP_TEST_DELAY", "error")], archived=True)  # archived unseen
    w.cycle()
    watcher(site).cycle()
    assert summary(site) == [("30001", "OP_TEST_DELAY", "success", "NOT_APPLICABLE"),
                             ("30002", "OP_TEST_DELAY", "error", "NOT_APPLICABLE")]


def test_a_dead_job_process_is_disappeared_a_live_one_is_waited_for(site):
    w = started(site)
    livelock = site / "livelock-job-40"
    livelock.write_text("")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         f"f = open({str(livelock)!r}, 'a')\nfcntl.lockf(f, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\ntime.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        write_job(site, 40, [op("OP_TEST_DELAY", "success"),
                             op("OP_INSTANCE_GROW_DISK", "running", instance_name="i1"),
                             op("OP_TEST_DELAY", "queued", started=False)],
                  livelock=str(livelock), pid=holder.pid)
        w.cycle()
        assert summary(site) == [("40", "OP_TEST_DELAY", "success", "NOT_APPLICABLE")]
    finally:
        holder.kill()
        holder.wait()
    w.cycle()
    w.cycle()
    assert summary(site)[1:] == [("40", "OP_INSTANCE_GROW_DISK", "disappeared", "-")]
    assert reports(site)[1]["GANETI_OP_STATUS"] == "running"
    # luxid notices later and fails every opcode: the job was settled, nothing more
    write_job(site, 40, [dict(o, status="error", input={**o["input"], "reason": [
        [DEATH_REASON, "detected death of job 40", 1]]}) for o in (
        op("OP_TEST_DELAY", "success"), op("OP_INSTANCE_GROW_DISK", "running"),
        op("OP_TEST_DELAY", "queued", started=False))])
    watcher(site).cycle()
    assert len(reports(site)) == 2


def test_luxid_death_detection_seen_first_means_disappeared(site):
    w = started(site)
    reason = [[DEATH_REASON, "detected death of job 50", 1700000001000000000]]
    write_job(site, 50, [
        {**op("OP_TEST_DELAY", "error"), "input": {"OP_ID": "OP_TEST_DELAY", "reason": reason}},
        {**op("OP_TEST_DELAY", "error"), "input": {"OP_ID": "OP_TEST_DELAY", "reason": reason}},
        {**op("OP_TEST_DELAY", "error", started=False),
         "input": {"OP_ID": "OP_TEST_DELAY", "reason": reason}}])
    w.cycle()
    assert summary(site) == [("50", "OP_TEST_DELAY", "success", "NOT_APPLICABLE"),
                             ("50", "OP_TEST_DELAY", "disappeared", "NOT_APPLICABLE")]


def test_pid_fallback_and_queued_jobs(site):
    w = started(site)
    write_job(site, 60, [op("OP_TEST_DELAY", "running")], pid=424242)  # not in proc_root
    write_job(site, 61, [op("OP_TEST_DELAY", "queued", started=False)])  # waits in queue
    write_job(site, 62, [op("OP_TEST_DELAY", "waiting")])  # no process known yet
    w.cycle()
    assert summary(site) == [("60", "OP_TEST_DELAY", "disappeared", "NOT_APPLICABLE")]


def test_a_job_that_finished_during_the_check_is_not_disappeared(site, monkeypatch):
    w = started(site)
    path = write_job(site, 70, [op("OP_TEST_DELAY", "running")], pid=434343)
    import hookpack.jobwatch as jw

    real = jw.process_dead

    def dead_after_finishing(job, proc_root):
        write_job(site, 70, [op("OP_TEST_DELAY", "success")])  # exits right after
        return real(job, proc_root)

    monkeypatch.setattr(jw, "process_dead", dead_after_finishing)
    w.cycle()
    assert path.exists() and summary(site) == []
    monkeypatch.setattr(jw, "process_dead", real)
    w.cycle()
    assert summary(site) == [("70", "OP_TEST_DELAY", "success", "NOT_APPLICABLE")]


def test_only_the_master_reports(site):
    w = watcher(site, fqdn="node2.example.test")
    write_job(site, 80, [op("OP_TEST_DELAY", "error")])
    w.cycle()
    assert reports(site) == []
    cursor = json.loads((site / "state" / CURSOR_NAME).read_text())
    assert cursor["done"] == [[80, 80]] and cursor["master"] == MASTER


def test_cli_once_and_the_lock(site, write_config):
    config = write_config(f'[node]\nfqdn = "{MASTER}"\n')
    text = config.read_text().replace("[paths]\n", f'[paths]\nproc_root = "{site}/proc"\n')
    for key, where in (("hooks_dir", "hooks"), ("ganeti_data_dir", "ganeti"),
                       ("kvm_dir", "run/kvm-hypervisor")):
        text = text.replace(f'{key} = "{site / key}"', f'{key} = "{site / where}"')
    config.write_text(text)
    write_job(site, 90, [op("OP_TEST_DELAY", "error")])
    run = [sys.executable, "-m", "hookpack", "jobwatch", "--once", "--config", str(config)]
    first = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "first start: 1 finished job(s)" in first.stdout
    write_job(site, 91, [op("OP_TEST_DELAY", "error")])
    run_dir = site / "run_dir"
    with open(run_dir / "jobwatch.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        busy = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert busy.returncode == 1 and "another jobwatch holds" in busy.stderr
    second = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert "job 91 op 0 OP_TEST_DELAY: error: 10-report: exit 0" in second.stdout
    assert summary(site) == [("91", "OP_TEST_DELAY", "error", "NOT_APPLICABLE")]


# -- master failover: a watcher on every master candidate --------------------------------
NODE2 = "node2.example.test"


def ended(op_: dict, at: float) -> dict:
    return dict(op_, end_timestamp=[int(at), int(at % 1 * 1e6)])


class Candidate:
    """A watcher on one master candidate: its own cursor and luxid, the shared queue
    (Ganeti replicates the job files to every candidate)."""

    def __init__(self, site: Path, name: str, index: int) -> None:
        self.site, self.name = site, name
        self.pidfile = site / f"run{index}" / "ganeti-luxid.pid"
        self.lines: list[str] = []
        self.restart()

    def restart(self) -> None:
        self.w = Watcher(data_dir=self.site / "ganeti", hooks_dir=self.site / "hooks",
                         state_dir=self.site / f"state-{self.name}", fqdn=self.name,
                         script_timeout=10, proc_root=self.site / "proc",
                         luxid_pidfile=self.pidfile, out=self.lines.append)

    def luxid(self, started: float | None) -> None:
        """Start (at ``started``) or stop (None) this node's luxid."""
        if started is None:
            self.pidfile.unlink(missing_ok=True)
            return
        self.pidfile.parent.mkdir(exist_ok=True)
        self.pidfile.write_text(f"{LUXID_PID}\n")
        os.utime(self.pidfile, (started, started))

    def cycle(self) -> list[int]:
        return [r.job_id for r in self.w.cycle()]


def failover(site: Path, new: Candidate, old: Candidate, at: float) -> None:
    """What `gnt-cluster master-failover` does, in its order: ssconf names the new master,
    the old master's daemons stop, then the new master's luxid starts."""
    (site / "ganeti" / "ssconf_master_node").write_text(new.name + "\n")
    old.luxid(None)
    new.luxid(at)


def test_failover_both_ways_reports_each_job_once_on_the_master_of_its_end(site):
    t0 = 1_700_000_000.0
    n1, n2 = Candidate(site, MASTER, 1), Candidate(site, NODE2, 2)
    n1.luxid(t0)
    write_job(site, 1, [ended(op("OP_TEST_DELAY", "error"), t0 - 50)])  # history
    assert (n1.cycle(), n2.cycle()) == ([], [])
    write_job(site, 2, [ended(op("OP_TEST_DELAY", "error"), t0 + 10)])
    assert (n1.cycle(), n2.cycle()) == ([2], [])  # node2 follows without reporting
    # a job ends on the old master just before the failover; nobody looks in between
    write_job(site, 3, [ended(op("OP_TEST_DELAY", "error"), t0 + 20)])
    (site / "ganeti" / "ssconf_master_node").write_text(NODE2 + "\n")
    assert (n1.cycle(), n2.cycle()) == ([], [])  # node2's luxid has not started yet
    assert any("luxid is not running" in line for line in n2.lines)
    failover(site, n2, n1, t0 + 30)
    write_job(site, 4, [ended(op("OP_TEST_DELAY", "error"), t0 + 40)])
    write_job(site, 5, [op("OP_TEST_DELAY", "success"), op("OP_TEST_DELAY", "running")],
              pid=LUXID_PID)  # a job running across the failover, its first op before
    job5 = site / "ganeti" / "queue" / "job-5"
    data = json.loads(job5.read_text())
    data["ops"][0] = ended(data["ops"][0], t0 + 25)
    job5.write_text(json.dumps(data))
    assert (n2.cycle(), n1.cycle()) == ([4], [])
    write_job(site, 5, [ended(op("OP_TEST_DELAY", "success"), t0 + 25),
                        ended(op("OP_TEST_DELAY", "error"), t0 + 45)])
    assert (n2.cycle(), n1.cycle(), n2.cycle()) == ([5], [], [])
    # and back: node1 becomes master again
    failover(site, n1, n2, t0 + 60)
    write_job(site, 6, [ended(op("OP_TEST_DELAY", "error"), t0 + 55)])  # node2's, late
    write_job(site, 7, [ended(op("OP_TEST_DELAY", "error"), t0 + 70)])
    assert (n1.cycle(), n2.cycle(), n1.cycle()) == ([7], [], [])
    assert [r["GANETI_JOB_ID"] for r in reports(site)] == ["2", "4", "5", "7"]
    assert [r["GANETI_OP_CODE"] for r in reports(site) if r["GANETI_JOB_ID"] == "5"] == [
        "OP_TEST_DELAY"]  # only its second opcode: the first ended before node2's term
    assert reports(site)[2]["GANETI_MASTER"] == NODE2


def test_a_watcher_restart_in_the_same_term_reports_what_ended_meanwhile(site):
    t0 = 1_700_000_000.0
    n1 = Candidate(site, MASTER, 1)
    n1.luxid(t0)
    assert n1.cycle() == []
    write_job(site, 1, [ended(op("OP_TEST_DELAY", "error"), t0 + 10)])
    n1.restart()
    assert n1.cycle() == [1]
    # luxid restarted while the watcher was down: a new term (possibly after a failover
    # away and back), so what ended before it is not reported
    write_job(site, 2, [ended(op("OP_TEST_DELAY", "error"), t0 + 20)])
    n1.luxid(t0 + 30)
    n1.restart()
    write_job(site, 3, [ended(op("OP_TEST_DELAY", "error"), t0 + 40)])
    assert n1.cycle() == [3]
    assert any("master since luxid started" in line for line in n1.lines)
    # a luxid restart seen by a running watcher changes nothing
    write_job(site, 4, [ended(op("OP_TEST_DELAY", "error"), t0 + 45)])
    n1.luxid(t0 + 50)
    assert n1.cycle() == [4]


def test_an_old_cursor_never_replays_history(site):
    """A node down for a week comes back and is made master: its cursor is a week old
    (the format before failover support: no master, no term)."""
    now = 1_700_600_000.0
    week_ago = now - 7 * 86400
    state = site / f"state-{NODE2}"
    state.mkdir()
    (state / CURSOR_NAME).write_text(json.dumps({"version": 1, "done": [[1, 5]],
                                                 "reported": {}}))
    for job_id in range(6, 40):
        write_job(site, job_id, [ended(op("OP_TEST_DELAY", "error"), week_ago + job_id)],
                  archived=job_id < 30)
    (site / "ganeti" / "ssconf_master_node").write_text(NODE2 + "\n")
    n2 = Candidate(site, NODE2, 2)
    n2.luxid(now)
    write_job(site, 40, [ended(op("OP_TEST_DELAY", "error"), now + 5)])
    assert n2.cycle() == [40]
    assert n2.cycle() == []
    cursor = json.loads((state / CURSOR_NAME).read_text())
    assert cursor["done"] == [[1, 40]] and cursor["since"] == now


def test_a_failover_during_a_followers_look_is_left_to_the_next_cycle(site, monkeypatch):
    t0 = 1_700_000_000.0
    n1, n2 = Candidate(site, MASTER, 1), Candidate(site, NODE2, 2)
    n1.luxid(t0)
    n2.cycle()
    real = n2.w.ssconf
    calls = []

    def failover_midway(name: str) -> str:
        calls.append(name)
        if len(calls) == 2:  # after the look at the queue: node2 became master
            failover(site, n2, n1, t0 + 30)
            write_job(site, 9, [ended(op("OP_TEST_DELAY", "error"), t0 + 40)])
        return real(name)

    write_job(site, 8, [ended(op("OP_TEST_DELAY", "error"), t0 + 5)])
    monkeypatch.setattr(n2.w, "ssconf", failover_midway)
    assert n2.cycle() == []
    monkeypatch.setattr(n2.w, "ssconf", real)
    assert n2.cycle() == [9]  # 8 ended before node2's term: not its to report
