"""The outbox on disk: atomic files, per-event locks that die with their process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hookpack.adapters.http import HttpError, retry_after
from hookpack.errors import BadInput
from hookpack.outbox import (
    Failure,
    Outbox,
    backoff_seconds,
    check_id,
    event_id,
    record_attempt,
    revive,
)

REPO = Path(__file__).resolve().parents[2]


def make(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "spool", tmp_path / "run")


def test_create_is_durable_and_private_and_leaves_no_temporary_file(tmp_path):
    ob = make(tmp_path)
    ident = event_id(1_700_000_000_000, "ab" * 32)
    with ob.create(ident, {"key": "k", "deliveries": {"slack": {"payload": {"text": "é"}}}}):
        pass
    assert ob.ids() == [ident]
    assert os.listdir(ob.dir) == [f"{ident}.json"]
    assert (ob.dir / f"{ident}.json").stat().st_mode & 0o777 == 0o600
    assert ob.dir.stat().st_mode & 0o777 == 0o700
    assert ob.read(ident)["deliveries"]["slack"]["payload"]["text"] == "é"


def test_claim_skips_an_event_someone_else_holds_and_a_vanished_one(tmp_path):
    ob = make(tmp_path)
    ident = event_id(1, "cd" * 32)
    with ob.create(ident, {"deliveries": {}}) as held:
        with ob.claim(ident) as other:
            assert other is None
        held.remove()
    with ob.claim(ident) as again:
        assert again is None
    assert not (ob.lock_dir / f"{ident}.lock").exists()


def test_a_killed_holder_releases_its_event(tmp_path):
    ob = make(tmp_path)
    ident = event_id(2, "ef" * 32)
    code = (f"import sys, time; sys.path.insert(0, {str(REPO)!r})\n"
            "from pathlib import Path\nfrom hookpack.outbox import Outbox\n"
            f"ob = Outbox(Path({str(tmp_path / 'spool')!r}), Path({str(tmp_path / 'run')!r}))\n"
            f"with ob.create({ident!r}, {{'deliveries': {{}}}}):\n"
            "    print('held', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"held"
        with ob.claim(ident) as held:
            assert held is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        with ob.claim(ident) as held:
            assert held is not None and held.data["deliveries"] == {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_leftover_temporary_files_are_cleaned_but_events_never(tmp_path):
    ob = make(tmp_path)
    ident = event_id(3, "01" * 32)
    with ob.create(ident, {"deliveries": {}}):
        pass
    tmp = ob.dir / f".tmp-{ident}-999"
    tmp.write_text("{")
    old = time.time() - 7200
    os.utime(tmp, (old, old))
    os.utime(ob.dir / f"{ident}.json", (old, old))
    assert ob.clean_tmp() == [tmp.name]
    assert ob.ids() == [ident]


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_seconds(n, 30, 3600) for n in (1, 2, 3, 4, 8, 100)] == [
        30, 60, 120, 240, 3600, 3600]


def test_record_attempt():
    delivery: dict = {"attempts": 0}
    record_attempt(delivery, Failure("HTTP 500"), at_ms=1000, base=10, cap=100)
    assert delivery == {"attempts": 1, "last_attempt_ms": 1000, "last_error": "HTTP 500",
                        "next_attempt_ms": 11_000}
    record_attempt(delivery, None, at_ms=2000, base=10, cap=100)
    assert delivery["done_ms"] == 2000 and delivery["last_error"] == ""


def test_retry_after_replaces_the_backoff_and_a_permanent_refusal_dead_letters():
    delivery: dict = {"attempts": 0}
    record_attempt(delivery, Failure("HTTP 429", retry_after=7), at_ms=1000, base=30, cap=100)
    assert delivery["next_attempt_ms"] == 8_000  # not 31_000: the receiver said 7 s
    record_attempt(delivery, Failure("HTTP 503", retry_after=10 * 86400), at_ms=1000, base=30,
                   cap=100)
    assert delivery["next_attempt_ms"] == 1000 + 86_400_000  # honoured up to a day
    record_attempt(delivery, Failure("HTTP 404", permanent=True), at_ms=5000, base=30,
                   cap=100)
    assert delivery["dead_ms"] == 5000 and delivery["last_error"] == "HTTP 404"
    revive(delivery)
    assert "dead_ms" not in delivery and delivery["next_attempt_ms"] == 0


@pytest.mark.parametrize("status,permanent", [(400, True), (401, True), (404, True),
                                              (410, True), (422, True), (408, False),
                                              (425, False), (429, False), (500, False),
                                              (503, False), (None, False)])
def test_which_answers_are_permanent(status, permanent):
    assert HttpError("x", status=status).permanent is permanent


def test_retry_after_header_forms():
    assert retry_after(b"Content-Type: x\r\nRetry-After: 120") == 120.0
    assert retry_after(b"retry-after:  5 ") == 5.0
    assert retry_after(b"Retry-After: Wed, 21 Oct 2015 07:28:00 GMT",
                       now=1445412460.0) == 20.0
    assert retry_after(b"Retry-After: soon") is None
    assert retry_after(b"X-Other: 1") is None


def test_every_state_change_fsyncs_the_file_and_the_directory(tmp_path):
    """The syscalls of a real process: each rename of an event file (a "delivered" mark
    included) and its removal are followed by an fsync of the spool directory."""
    import subprocess
    import sys

    script = (
        "from pathlib import Path\n"
        "from hookpack.outbox import Outbox, record_attempt\n"
        f"box = Outbox(Path({str(tmp_path)!r}) / 'spool', Path({str(tmp_path)!r}) / 'run')\n"
        "ident = '1700000000000-0123456789abcdef'\n"
        "with box.create(ident, {'key': 'k', 'deliveries': {'a': {}, 'b': {}}}) as held:\n"
        "    record_attempt(held.data['deliveries']['a'], None, at_ms=1, base=1, cap=1)\n"
        "    held.settle()\n"
        "    print('MARKED', flush=True)\n"
        "    record_attempt(held.data['deliveries']['b'], None, at_ms=2, base=1, cap=1)\n"
        "    held.settle()\n")
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e",
                    "trace=openat,fsync,rename,renameat,renameat2,unlink,unlinkat",
                    sys.executable, "-c", script], check=True, capture_output=True)
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines()
             if " " in line]
    spool = str(tmp_path / "spool" / "outbox")
    dir_fds = {line.rsplit("= ", 1)[1].strip() for line in calls
               if line.startswith("openat(") and f'"{spool}"' in line and "O_DIRECTORY" in line
               and "= -1" not in line}
    renames = [i for i, c in enumerate(calls) if c.startswith(("rename(", "renameat"))
               and ".json" in c]
    removal = [i for i, c in enumerate(calls) if c.startswith(("unlink", "unlinkat"))
               and ".json" in c]
    assert len(renames) == 2 and len(removal) == 1, calls  # created, marked, removed
    for i in [*renames, *removal]:
        after = calls[i + 1:]
        dir_sync = next((c for c in after if c.startswith("fsync(")), "")
        assert dir_sync and any(dir_sync.startswith(f"fsync({fd})") for fd in dir_fds), \
            (calls[i], after[:4])
    # and the file itself was fsynced before each rename
    for i in renames:
        assert any(c.startswith("fsync(") for c in calls[max(0, i - 3):i]), calls[i - 3:i]


@pytest.mark.parametrize("bad", ["", "../x", "1-2", "1700000000000-ABCDEF0123456789",
                                 "1700000000000-0123456789abcdef/x"])
def test_ids_from_the_command_line_are_checked(bad):
    with pytest.raises(BadInput):
        check_id(bad)
    assert check_id("1700000000000-0123456789abcdef")
