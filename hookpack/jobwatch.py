"""`hookpack jobwatch`: global post hooks for what the synchronous part cannot see.

Runs on every master candidate and reports only while its node is the master. It follows
Ganeti's job queue (replicated to every master candidate)
(`<data_dir>/queue/job-<id>` and, once archived, `queue/archive/<n>/job-<id>`) and,
for every opcode that has a start timestamp, runs the operator's `global-post.d`
scripts once, on the master, with GANETI_POST_STATUS:

- `success`: only for opcodes without hooks (`ganeti_opcodes.OPCODE_HPATH`); the
  synchronous part (99-hookpack-global) ran after the hooks of the others;
- `error`: the opcode's recorded status is `error` (or `canceled`: see docs);
- `disappeared`: the job process died; seen either by the job's livelock file no
  longer being locked (what luxid checks) while the job is not finalized, or by
  luxid's own death detection having failed the job (reason
  `gnt:daemon:luxid:deathdetection`).

A persisted cursor (`<state_dir>/jobwatch.json`, replaced atomically after each
report) records what was reported, so each opcode is reported once across restarts.

Master failover: a watcher on a node that is not the master keeps its cursor current
(every job it sees finished is taken as handled, nothing is run). The master reports
only opcodes that ended within its own term: the term starts when this node's luxid
(the daemon that runs jobs) started, the mtime of its pid file. Opcodes that ended
before (on the old master) are history, whatever the cursor says, so an old cursor
never replays them.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from hookpack.ganeti_opcodes import OPCODE_HPATH
from hookpack.record import field, record
from hookpack.runparts import run_parts

if TYPE_CHECKING:
    from hookpack.config import Config

CURSOR_NAME = "jobwatch.json"
# Written by the luxid of the master when it starts (Ganeti's utils.DaemonPidFileName).
LUXID_PIDFILE = Path("/var/run/ganeti/ganeti-luxid.pid")
FINAL = ("success", "error", "canceled")
DEATH_REASON = "gnt:daemon:luxid:deathdetection"


@record(frozen=True)
class Report:
    job_id: int
    index: int
    op_code: str
    status: str  # success, error or disappeared
    op_status: str  # Ganeti's status of the opcode when reported
    hpath: str | None  # None: the opcode has no hooks


@record
class Cursor:
    """Jobs fully handled (as id ranges) and, for the others, opcodes reported."""

    path: Path
    done: list[list[int]] = field(default_factory=list)
    reported: dict[int, set[int]] = field(default_factory=dict)
    exists: bool = False
    master: str = ""  # the master this node saw when the cursor was saved
    term: float | None = None  # start of the master term (luxid pid file mtime)
    since: float | None = None  # opcodes that ended before this are history

    @classmethod
    def load(cls, path: Path) -> Cursor:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as err:
            raise RuntimeError(f"{path}: unreadable cursor ({err}); move it away to "
                               "start over (finished jobs are then not reported)") from None
        return cls(path, [list(r) for r in data.get("done", [])],
                   {int(k): set(v) for k, v in data.get("reported", {}).items()}, True,
                   str(data.get("master", "")), _number(data.get("term")),
                   _number(data.get("since")))

    def is_done(self, job_id: int) -> bool:
        return any(lo <= job_id <= hi for lo, hi in self.done)

    def is_reported(self, job_id: int, index: int) -> bool:
        return index in self.reported.get(job_id, ())

    def mark(self, job_id: int, index: int) -> None:
        self.reported.setdefault(job_id, set()).add(index)

    def finish(self, job_id: int) -> None:
        self.reported.pop(job_id, None)
        ranges = sorted([*self.done, [job_id, job_id]])
        merged: list[list[int]] = []
        for lo, hi in ranges:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.done = merged

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": 2, "done": self.done,
                "reported": {str(k): sorted(v) for k, v in sorted(self.reported.items())},
                "master": self.master, "term": self.term, "since": self.since}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self.exists = True


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def job_files(queue: Path) -> Iterator[tuple[int, Path]]:
    """(job id, file) of the queue and its archive."""
    for directory in (queue, *_archive_dirs(queue)):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if name.startswith("job-") and name[4:].isdigit():
                yield int(name[4:]), directory / name


def _archive_dirs(queue: Path) -> list[Path]:
    try:
        return [queue / "archive" / n for n in sorted(os.listdir(queue / "archive"))]
    except OSError:
        return []


def read_job(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None  # moved to the archive meanwhile, or not a job file
    if not isinstance(data, dict) or not isinstance(data.get("ops"), list):
        return None
    return data


def finalized(job: Mapping[str, Any]) -> bool:
    return all(isinstance(op, dict) and op.get("status") in FINAL for op in job["ops"])


def died_by_luxid(job: Mapping[str, Any]) -> bool:
    """luxid found the job process dead and failed every opcode of the job."""
    for op in job["ops"]:
        reasons = (op.get("input") or {}).get("reason") or []
        if any(isinstance(r, list) and r and r[0] == DEATH_REASON for r in reasons):
            return True
    return False


def process_dead(job: Mapping[str, Any], proc_root: Path = Path("/proc")) -> bool | None:
    """Whether the job's process is dead: True, False, or None (not started/unknown).

    As luxid does: a job process holds a lock on its livelock file while it lives.
    Without a livelock file, its process_id is looked up in ``proc_root``.
    """
    livelock = job.get("livelock")
    if isinstance(livelock, str) and livelock:
        try:
            fd = os.open(livelock, os.O_RDONLY)
        except FileNotFoundError:
            return True
        except OSError:
            return None
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return False  # the job process holds it
        else:
            fcntl.lockf(fd, fcntl.LOCK_UN)
            return True
        finally:
            os.close(fd)
    pid = job.get("process_id")
    if isinstance(pid, int) and pid > 0:
        return not (proc_root / str(pid)).exists()
    return None


def ended_at(op: Mapping[str, Any], job: Mapping[str, Any]) -> float | None:
    """When the opcode ended (Ganeti's ``end_timestamp``: [seconds, microseconds]), or
    the job's end when the opcode has none; None when neither is recorded."""
    for stamp in (op.get("end_timestamp"), job.get("end_timestamp")):
        if (isinstance(stamp, list) and len(stamp) == 2
                and all(isinstance(x, int) for x in stamp)):
            return float(stamp[0]) + float(stamp[1]) / 1e6
    return None


def decide(job_id: int, job: Mapping[str, Any], dead: Callable[[], bool | None],
           since: float | None = None) -> tuple[list[Report], list[int], bool]:
    """What to report for ``job`` now: (reports, opcode indices settled without a
    report, whether the job is fully handled). An opcode that ended before ``since``
    (before this node's master term) is settled without a report."""
    ops = job["ops"]
    started = [i for i, op in enumerate(ops) if op.get("start_timestamp")]
    reports: list[Report] = []
    silent: list[int] = []
    by_luxid = finalized(job) and died_by_luxid(job)
    gone = False
    if not finalized(job):
        gone = bool(started) and dead() is True
    for i in started:
        op = ops[i]
        op_code = str((op.get("input") or {}).get("OP_ID", ""))
        hpath = OPCODE_HPATH.get(op_code)
        status = op.get("status")
        if by_luxid:
            # luxid overwrote every opcode with an error: the last started one was
            # running when the process died, those before it had succeeded.
            status = "disappeared" if i == started[-1] else "success"
        elif gone and status not in FINAL:
            status = "disappeared"
        if status in FINAL or by_luxid:
            end = ended_at(op, job)
            if since is not None and end is not None and end < since:
                silent.append(i)  # ended before this master's term: history
                continue
        if status == "success":
            if hpath is None:
                reports.append(Report(job_id, i, op_code, "success", op["status"], None))
            else:
                silent.append(i)  # 99-hookpack-global ran after its post hooks
        elif status in ("error", "canceled"):
            reports.append(Report(job_id, i, op_code, "error", status, hpath))
        elif status == "disappeared":
            reports.append(Report(job_id, i, op_code, "disappeared", op["status"], hpath))
        # queued/waiting/running/canceling: not settled yet
    handled = finalized(job) or gone
    return reports, silent, handled


def settled_elsewhere(job: Mapping[str, Any]) -> tuple[list[int], bool]:
    """On a node that is not the master: the opcodes of ``job`` that have a final status
    and whether the whole job is finalized (taken as handled, nothing reported)."""
    ops = job["ops"]
    done = [i for i, op in enumerate(ops)
            if isinstance(op, dict) and op.get("start_timestamp") and op.get("status") in FINAL]
    return done, finalized(job)


class Watcher:
    def __init__(self, *, data_dir: Path, hooks_dir: Path, state_dir: Path, fqdn: str,
                 script_timeout: float, proc_root: Path = Path("/proc"),
                 luxid_pidfile: Path = LUXID_PIDFILE,
                 out: Callable[[str], None] = print) -> None:
        self.data_dir = data_dir
        self.queue = data_dir / "queue"
        self.hooks_dir = hooks_dir
        self.cursor = Cursor.load(state_dir / CURSOR_NAME)
        self.fqdn = fqdn
        self.script_timeout = script_timeout
        self.proc_root = proc_root
        self.luxid_pidfile = luxid_pidfile
        self.out = out
        self.stopping = False
        self.in_term = False  # the previous cycle of this process reported as master
        self.waiting_said = False

    def ssconf(self, name: str) -> str:
        try:
            return (self.data_dir / f"ssconf_{name}").read_text().strip()
        except OSError:
            return ""

    def _is_me(self, master: str) -> bool:
        from hookpack.roles import normalize_host

        return bool(master) and normalize_host(master) == normalize_host(self.fqdn)

    def is_master(self) -> bool:
        return self._is_me(self.ssconf("master_node"))

    def term_start(self) -> float | None:
        """When this node's luxid started (its pid file's mtime), if it runs now."""
        try:
            pid = int(self.luxid_pidfile.read_text().split()[0])
            started = self.luxid_pidfile.stat().st_mtime
        except (OSError, ValueError, IndexError):
            return None
        return started if (self.proc_root / str(pid)).exists() else None

    def cycle(self) -> list[Report]:
        """One look at the queue; returns what was reported."""
        master = self.ssconf("master_node")
        if not master:
            return []  # not (yet) a node of a cluster
        if not self._is_me(master):
            self._follow(master)
            return []
        if not self._enter_term():
            return []
        done: list[Report] = []
        for job_id, path in sorted(job_files(self.queue)):
            if self.stopping or not self.is_master():
                break
            if self.cursor.is_done(job_id):
                continue
            done += self._job(job_id, path)
        return done

    def _follow(self, master: str) -> None:
        """Not the master: take every job seen finished as handled, report nothing."""
        if self.in_term or self.cursor.master != master:
            self.out(f"jobwatch: {master} is the master: following the queue without "
                     "reporting")
        self.in_term = False
        self.waiting_said = False
        finished: list[int] = []
        settled: list[tuple[int, int]] = []
        for job_id, path in job_files(self.queue):
            if self.stopping:
                return
            if self.cursor.is_done(job_id):
                continue
            job = read_job(path)
            if job is None:
                continue
            ops, whole = settled_elsewhere(job)
            if whole:
                finished.append(job_id)
            else:
                settled += [(job_id, i) for i in ops if not self.cursor.is_reported(job_id, i)]
        if self.ssconf("master_node") != master:
            return  # a failover during the look: the next cycle decides afresh
        for job_id, index in settled:
            self.cursor.mark(job_id, index)
        for job_id in finished:
            self.cursor.finish(job_id)
        if finished or settled or self.cursor.master != master or not self.cursor.exists:
            self.cursor.master = master
            self.cursor.save()

    def _enter_term(self) -> bool:
        """Whether this node may report now; on entering a master term, sets the point
        before which finished opcodes are history (``cursor.since``)."""
        term = self.term_start()
        if self.in_term:  # seen master without a break: a luxid restart changes nothing
            if term is not None and term != self.cursor.term:
                self.cursor.term = term
                self.cursor.save()
            return True
        if term is None:
            if not self.waiting_said:
                self.out(f"jobwatch: this node is the master but its luxid is not running "
                         f"({self.luxid_pidfile}); waiting for it")
                self.waiting_said = True
            return False
        if not self.cursor.exists:
            self._baseline(term)
        elif not (self._is_me(self.cursor.master) and term == self.cursor.term):
            self.cursor.term = self.cursor.since = term
            self.out("jobwatch: master since luxid started at "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S%z', time.localtime(term))}: "
                     "opcodes that ended before are not reported")
        # else: the same term as when the cursor was saved (a restart of the watcher)
        self.cursor.master = self.ssconf("master_node")
        self.cursor.save()
        self.in_term = True
        return True

    def _baseline(self, term: float) -> None:
        # First start: jobs that finished before the watcher existed are history.
        for job_id, path in job_files(self.queue):
            job = read_job(path)
            if job is not None and finalized(job):
                self.cursor.finish(job_id)
        self.cursor.term = self.cursor.since = term
        self.out(f"jobwatch: first start: {sum(hi - lo + 1 for lo, hi in self.cursor.done)} "
                 "finished job(s) taken as already reported")

    def _job(self, job_id: int, path: Path) -> list[Report]:
        job = read_job(path)
        if job is None:
            return []

        def dead() -> bool | None:
            verdict = process_dead(job, self.proc_root)
            if verdict:  # it may have just finished: believe a finalized file first
                again = read_job(path) or read_job(self._archived(job_id))
                if again is not None and finalized(again):
                    return False
            return verdict

        reports, silent, handled = decide(job_id, job, dead, self.cursor.since)
        out = []
        changed = False
        for index in silent:
            if not self.cursor.is_reported(job_id, index):
                self.cursor.mark(job_id, index)
                changed = True
        for report in reports:
            if self.cursor.is_reported(job_id, report.index):
                continue
            self._run(report, job)
            self.cursor.mark(job_id, report.index)
            self.cursor.save()
            out.append(report)
        if handled:
            self.cursor.finish(job_id)
            changed = True
        if changed:
            self.cursor.save()
        return out

    def _archived(self, job_id: int) -> Path:
        return self.queue / "archive" / str(job_id // 10000) / f"job-{job_id}"

    def environment(self, report: Report) -> dict[str, str]:
        env = {
            "GANETI_HOOKS_VERSION": "2",
            "GANETI_HOOKS_PHASE": "post",
            "GANETI_OP_CODE": report.op_code,
            "GANETI_JOB_ID": str(report.job_id),
            "GANETI_IS_MASTER": "master",
            "GANETI_POST_STATUS": report.status,
            "GANETI_OP_STATUS": report.op_status,
            "GANETI_CLUSTER": self.ssconf("cluster_name"),
            "GANETI_MASTER": self.ssconf("master_node"),
            "GANETI_DATA_DIR": str(self.data_dir),
        }
        if report.hpath is None:
            env["GANETI_OBJECT_TYPE"] = "NOT_APPLICABLE"
        else:
            env["GANETI_HOOKS_PATH"] = report.hpath
        return env

    def _run(self, report: Report, job: Mapping[str, Any]) -> None:
        directory = self.hooks_dir / "global-post.d"
        results = run_parts(directory, self.environment(report),
                            timeout=self.script_timeout)
        ran = [r for r in results if r.status != "skip"]
        summary = ", ".join(f"{r.name.split('/')[-1]}: "
                            f"{'killed' if r.timed_out else f'exit {r.exit_code}'}"
                            for r in ran) or "no scripts"
        self.out(f"jobwatch: job {report.job_id} op {report.index} {report.op_code}: "
                 f"{report.status}: {summary}")
        for r in ran:
            if r.output:
                self.out(f"jobwatch:   {r.name}: {r.output}")


def run(cfg: Config, *, once: bool = False, out: Callable[[str], None] = print) -> int:
    from hookpack.roles import system_fqdn

    settings = cfg.core["global_hooks"]
    if not settings["enabled"]:
        out("jobwatch: [global_hooks] enabled = false; nothing to do")
        return 0
    run_dir = cfg.path_of("run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = os.open(run_dir / "jobwatch.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        from hookpack.errors import HookpackError

        raise HookpackError(f"another jobwatch holds {run_dir}/jobwatch.lock") from None
    watcher = Watcher(data_dir=cfg.path_of("ganeti_data_dir"),
                      hooks_dir=cfg.path_of("hooks_dir"), state_dir=cfg.path_of("state_dir"),
                      fqdn=cfg.core["node"]["fqdn"] or system_fqdn(),
                      script_timeout=settings["script_timeout"],
                      proc_root=cfg.path_of("proc_root"),
                      # Ganeti's run dir holds kvm-hypervisor/ and the daemons' pid files
                      luxid_pidfile=cfg.path_of("kvm_dir").parent / LUXID_PIDFILE.name,
                      out=out)

    def stop(signum: int, frame: FrameType | None) -> None:
        # finish the report under way, save, leave
        watcher.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    out(f"jobwatch: watching {watcher.queue} as {watcher.fqdn}")
    while True:
        watcher.cycle()
        if once or watcher.stopping:
            return 0
        end = time.monotonic() + settings["poll_interval"]
        while not watcher.stopping and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
        if watcher.stopping:
            return 0


def add_cli(sub: Any) -> None:
    from hookpack.config import add_config_arg

    p = sub.add_parser("jobwatch", help="run global post hooks from Ganeti's job queue "
                       "(on every master candidate; reports only on the master)")
    add_config_arg(p)
    p.add_argument("--once", action="store_true", help="one look at the queue, then exit")
    p.set_defaults(handler=_cmd)


def _cmd(ns: argparse.Namespace) -> int:
    from hookpack.config import load

    def out(line: str) -> None:
        print(line, flush=True)

    return run(load(ns), once=ns.once, out=out)

