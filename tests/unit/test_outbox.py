"""The outbox on disk: atomic files, per-event locks that die with their process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hookpack.errors import BadInput
from hookpack.outbox import Outbox, backoff_seconds, check_id, event_id, record_attempt

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
    record_attempt(delivery, "HTTP 500", at_ms=1000, base=10, cap=100)
    assert delivery == {"attempts": 1, "last_attempt_ms": 1000, "last_error": "HTTP 500",
                        "next_attempt_ms": 11_000}
    record_attempt(delivery, None, at_ms=2000, base=10, cap=100)
    assert delivery["done_ms"] == 2000 and delivery["last_error"] == ""


@pytest.mark.parametrize("bad", ["", "../x", "1-2", "1700000000000-ABCDEF0123456789",
                                 "1700000000000-0123456789abcdef/x"])
def test_ids_from_the_command_line_are_checked(bad):
    with pytest.raises(BadInput):
        check_id(bad)
    assert check_id("1700000000000-0123456789abcdef")
