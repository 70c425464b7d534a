"""Faults: each ends within the hook deadline with one clear line per action, no
traceback, and the exit code the fail-open/closed settings call for.

Every case runs the real installed entry (hookpack hooks install) through the emulator,
as Ganeti's node daemon would, with `[hook] deadline = 3`. Two bounds, both asserted
and both stated in docs/reliability.md (a hook that outlives them holds Ganeti's job
locks: a correctness property, not a performance assert):

- the deadline is on the hook's own clock, which starts once its config is loaded: the
  actions' times in their lines add up to at most DEADLINE (the dispatcher abandons an
  action there; GRACE covers waking up from that wait, well inside the watchdog's
  0.25 s after which it ends the process);
- the whole process, interpreter start and imports included, ends within DEADLINE +
  STARTUP (STARTUP: starting the entry's interpreter on a shared, loaded 2-core machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from hookpack.emulator import run_hooks

DEADLINE = 3.0
STARTUP = 2.0
GRACE = 0.1
_ACTION_MS = re.compile(r", (\d+) ms\)$")


def within_deadline(lines: list[str], elapsed: float) -> None:
    """The two bounds of the module docstring."""
    spent = sum(int(m.group(1)) for line in lines if (m := _ACTION_MS.search(line)))
    assert spent <= (DEADLINE + GRACE) * 1000, f"actions took {spent} ms of {DEADLINE} s"
    assert elapsed < DEADLINE + STARTUP, f"{elapsed:.2f} s with a {DEADLINE} s deadline"
NAME = "inst1.example.test"


def run_entry(root: Path, hpath: str, phase: str, environ: dict[str, str]):
    start = time.monotonic()
    results = [r for r in run_hooks(root, hpath, phase, environ)
               if r.name.endswith("50-hookpack")]
    elapsed = time.monotonic() - start
    assert len(results) == 1
    result = results[0]
    within_deadline(result.output.splitlines(), elapsed)
    assert "Traceback" not in result.output, result.output
    # for docs/reliability.md (pytest -rP shows it)
    print(f"{elapsed:.2f} s, exit {result.exit_code}: {result.output.strip()}")
    return result, result.output.splitlines(), elapsed


def one_line(lines: list[str], action: str, outcome: str) -> str:
    mine = [line for line in lines if line.startswith(f"hookpack {action}:")]
    assert len(mine) == 1, lines
    assert f": {outcome}: " in mine[0], mine[0]
    return mine[0]


# -- QMP faults (disk-grow, post phase) ----------------------------------------------

@pytest.fixture
def qemu_stand_in(tmp_path):
    """A live process whose command line carries `-name inst1.example.test`, as Ganeti's
    pid check wants (not QEMU: these cases are about the socket; the real-QEMU case is
    test_faults_real.py::test_real_qemu_killed_while_hookpack_waits). Killed by its pid
    at teardown."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-name",
                             NAME], stdin=subprocess.DEVNULL)
    kvm = tmp_path / "kvm_dir"
    (kvm / "pid").mkdir(parents=True)
    (kvm / "ctrl").mkdir()
    (kvm / "pid" / NAME).write_text(f"{proc.pid}\n")
    disks = tmp_path / "instance_disks_dir"
    disks.mkdir()
    image = tmp_path / "disk0.img"
    with image.open("wb") as handle:
        handle.truncate(128 << 20)
    (disks / f"{NAME}:0").symlink_to(image)
    try:
        yield kvm / "ctrl" / f"{NAME}.qmp"
    finally:
        proc.kill()
        proc.wait()


class UnixServer:
    """A real listening unix socket served by a thread: `silent` accepts and never
    answers; `dies` sends the QMP greeting, answers qmp_capabilities, then closes the
    connection in the middle of the next command (QEMU dying mid-command)."""

    def __init__(self, path: Path, mode: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.mode = mode
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            if self.mode == "dies":
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"QMP": {"version": {}, "capabilities": []}})
                                 .encode() + b"\r\n")
                    conn.settimeout(2)
                    conn.recv(4096)  # qmp_capabilities
                    conn.sendall(b'{"return": {}}\r\n')
                    conn.recv(4096)  # the command: die without an answer
                    conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in [*self.conns, self.sock]:
            conn.close()


DISK_GROW = f'[node]\nfqdn = "node1.example.test"\n[hook]\ndeadline = {DEADLINE}\n'


@pytest.mark.parametrize(("fault", "outcome", "says"), [
    ("missing", "skipped", "no QEMU to talk to"),
    ("silent", "failed", "run `hookpack disk resize"),
    ("dies", "skipped", "no QEMU to talk to"),
])
def test_qmp_faults_end_within_the_deadline(fault, outcome, says, qemu_stand_in, hooks,
                                            sample):
    environ, _ = sample("disk-grow-post-node1")
    server = None if fault == "missing" else UnixServer(qemu_stand_in, fault)
    try:
        root = hooks(DISK_GROW)
        result, lines, _ = run_entry(root, "disk-grow", "post", environ)
    finally:
        if server:
            server.close()
    line = one_line(lines, "disk-grow", outcome)
    assert says in line
    assert result.exit_code == 0  # post phase: post_failure_exit_code = 0


# -- pre-hook fail open / fail closed (policy, PowerDNS that never answers) ------------

@pytest.fixture
def silent_tcp():
    """A real TCP listener on loopback that accepts and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def _pre_add_env(sample) -> dict[str, str]:
    environ, _ = sample("instance-add-post-node1")
    environ = {k: v for k, v in environ.items() if not k.startswith("GANETI_POST_")}
    environ["GANETI_HOOKS_PHASE"] = "pre"
    return environ


def _policy_config(tmp_path: Path, url: str, closed: bool, key_mode: int = 0o600) -> str:
    key = tmp_path / "pdns.key"
    key.write_text("rel-pdns-KEY-secret-77\n")
    key.chmod(key_mode)
    return (f'[node]\nfqdn = "node1.example.test"\n[hook]\ndeadline = {DEADLINE}\n'
            f'[policy]\nenabled = true\ndns_check = true\n'
            f'dns_fail_closed = {str(closed).lower()}\n'
            f'[dns]\napi_url = "{url}"\napi_key_file = "{key}"\n'
            'forward_zones = ["example.test"]\ntimeout = 30.0\n')


@pytest.mark.parametrize(("closed", "code", "outcome"), [(False, 0, "nochange"),
                                                         (True, 1, "veto")])
def test_dns_that_never_answers_fails_open_or_closed(closed, code, outcome, silent_tcp,
                                                     hooks, sample, tmp_path):
    root = hooks(_policy_config(tmp_path, silent_tcp, closed))
    result, lines, _ = run_entry(root, "instance-add", "pre", _pre_add_env(sample))
    line = one_line(lines, "policy", outcome)
    assert ("fail closed" if closed else "fail open") in line
    assert result.exit_code == code


@pytest.mark.parametrize(("closed", "code", "outcome"), [(False, 0, "nochange"),
                                                         (True, 1, "veto")])
def test_secret_file_with_a_bad_mode_fails_open_or_closed(closed, code, outcome, hooks,
                                                          sample, tmp_path, silent_tcp):
    root = hooks(_policy_config(tmp_path, silent_tcp, closed, key_mode=0o644))
    result, lines, _ = run_entry(root, "instance-add", "pre", _pre_add_env(sample))
    line = one_line(lines, "policy", outcome)
    assert "chmod 600" in line and "rel-pdns-KEY-secret-77" not in result.output
    assert result.exit_code == code


# -- unreadable / invalid config -------------------------------------------------------

POLICY = '[node]\nfqdn = "node1.example.test"\n[policy]\nenabled = true\nname_pattern = "^x$"\n'


@pytest.mark.parametrize("fault", ["directory", "invalid-toml", "invalid-value",
                                   "unknown-key", "binary"])
def test_an_unreadable_config_gives_one_line_and_lets_ganeti_go_on(fault, install_hooks,
                                                                   sample, tmp_path):
    config = tmp_path / "hookpack.toml"
    if fault == "directory":
        config.mkdir()  # mode 000 does not stop root: a directory in place of the file
    else:
        config.write_bytes({
            "invalid-toml": POLICY.encode() + b"[hook\ndeadline = \n",
            "invalid-value": POLICY.encode() + b"[hook]\ndeadline = -5\n",
            "unknown-key": POLICY.encode() + b"[hook]\ndedline = 3\n",
            "binary": b"\xff\xfe\x00garbage\x00",
        }[fault])
        config.chmod(0o600)
    root = install_hooks(config)
    result, lines, _ = run_entry(root, "instance-add", "pre", _pre_add_env(sample))
    assert len(lines) == 1, lines
    assert lines[0].startswith("hookpack: actions did not run for instance-add/pre: "), lines
    assert str(config) in lines[0]
    # Not readable when the entries were installed either: the entries fail open
    # (tests/unit/test_failsafe_entries.py: a fail-closed choice made before is kept).
    assert result.exit_code == 0


@pytest.mark.parametrize(("closed", "code"), [(False, 0), (True, 1)])
def test_an_invalid_action_setting_follows_pre_fail_closed(closed, code, hooks, sample):
    root = hooks(f'[node]\nfqdn = "node1.example.test"\n[hook]\ndeadline = {DEADLINE}\n'
                 f'pre_fail_closed = {str(closed).lower()}\n'
                 '[policy]\nenabled = true\nname_pattern = "(unclosed"\n')
    result, lines, _ = run_entry(root, "instance-add", "pre", _pre_add_env(sample))
    line = one_line(lines, "policy", "failed")
    assert "not a valid regular expression" in line
    assert result.exit_code == code


# -- full and read-only spool (announce's outbox) --------------------------------------

@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs mounted for this test; always unmounted."""
    mnt = tmp_path / f"spool-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)],
                   check=True, capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_full_or_read_only_spool_is_one_clear_line(fault, tiny_tmpfs, write_config,
                                                     install_hooks, sample, tmp_path):
    if fault == "full":
        with contextlib.suppress(OSError), (tiny_tmpfs / "filler").open("wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True,
                       capture_output=True)
    url = tmp_path / "webhook.url"
    url.write_text("http://127.0.0.1:9/fuzz-webhook-secret-0001\n")
    url.chmod(0o600)
    config = write_config(
        f'[node]\nfqdn = "node1.example.test"\n[hook]\ndeadline = {DEADLINE}\n'
        f'[announce]\nenabled = true\nwebhook_url_file = "{url}"\n'
        'allow_insecure_hosts = ["127.0.0.1"]\n')
    text = config.read_text().replace(f'spool_dir = "{tmp_path / "spool_dir"}"',
                                      f'spool_dir = "{tiny_tmpfs}"')
    config.write_text(text)
    root = install_hooks(config)
    environ, _ = sample("instance-migrate-post-node1")
    result, lines, _ = run_entry(root, "instance-migrate", "post", environ)
    unqueued = [x for x in lines if x.startswith("hookpack announce: unqueued event")]
    assert len(unqueued) == 1 and '"deliveries":' in unqueued[0], lines  # the whole event
    line = one_line([x for x in lines if x not in unqueued], "announce", "failed")
    assert "internal error" not in line  # was: "internal error: OSError: [Errno 28] ..."
    assert f"spool {tiny_tmpfs}/outbox: cannot write event " in line
    assert ("No space left" in line) if fault == "full" else ("Read-only" in line), line
    if fault == "full":
        assert [p.name for p in (tiny_tmpfs / "outbox").iterdir()] == []  # no torn file
    assert result.exit_code == 0


# -- network faults (real netns, real kernel; shaping, post phase) ---------------------

_EMULATE_IN_NETNS = """
import json, sys
from pathlib import Path
from hookpack.emulator import run_hooks
root, hpath, phase, environ = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
print(json.dumps([[r.name, r.exit_code, r.output] for r in
                  run_hooks(Path(root), hpath, phase, environ)]))
"""


@pytest.fixture
def netns_shaper(tmp_path):
    """A netns node (tests/shaping/topo.py: uplink up0 on bridge br0) with a hookpack
    config for it and hookpack's entries installed; namespaces deleted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    from tests.shaping.conftest import Shaper

    shaper = Shaper(tmp_path / "node")
    try:
        yield shaper
    finally:
        shaper.close()


def run_entry_in_netns(shaper, config_extra: dict, environ: dict[str, str], during=None):
    """The installed entries run by the emulator inside the node's netns; ``during`` runs
    (in this process) while the hook runs."""
    shaper.write_config(f"[hook]\ndeadline = {DEADLINE}\n", **config_extra)
    root = shaper.base / "hooks"
    subprocess.run([sys.executable, "-m", "hookpack", "hooks", "install", "--root", str(root),
                    "--entry-config", str(shaper.config)], check=True, capture_output=True)
    start = time.monotonic()
    proc = subprocess.Popen(["ip", "netns", "exec", shaper.node.ns, sys.executable, "-c",
                             _EMULATE_IN_NETNS, str(root), "instance-start", "post",
                             json.dumps(environ)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        if during:
            during()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, err
    [(_, code, output)] = [r for r in json.loads(out) if r[0].endswith("50-hookpack")]
    print(f"{elapsed:.2f} s, exit {code}: {output.strip()}")
    within_deadline(output.splitlines(), elapsed)
    assert "Traceback" not in output and "internal error" not in output, output
    return code, output.splitlines()


REPO = Path(__file__).resolve().parents[2]


def _start_env(sample) -> dict[str, str]:
    environ, _ = sample("instance-start-post-node1")
    return environ


@pytest.mark.netns
def test_missing_uplink_device_is_one_clear_line(netns_shaper, sample):
    netns_shaper.node.add_tap("rltap0")
    netns_shaper.node.nic(NAME, 0, "rltap0")
    code, lines = run_entry_in_netns(netns_shaper, {"uplink": "rlnosuch0"}, _start_env(sample))
    line = one_line(lines, "shaping", "failed")
    assert "rlnosuch0" in line
    assert code == 0


@pytest.mark.netns
def test_a_tap_gone_before_apply_is_one_clear_line(netns_shaper, sample):
    """Ganeti's nic file names a tap that no longer exists (vanished between QEMU's start
    and the hook's observe)."""
    netns_shaper.node.nic(NAME, 0, "rlgone0")
    code, lines = run_entry_in_netns(netns_shaper, {}, _start_env(sample))
    line = one_line(lines, "shaping", "nochange")
    print(line)
    assert code == 0


@pytest.mark.netns
@pytest.mark.parametrize("delay", [0.2, 0.3, 0.4])
def test_taps_vanishing_while_shaping_applies(delay, netns_shaper, sample):
    """Eight taps, deleted one by one while the hook observes and applies. Which step
    each deletion hits is up to the scheduler (this cannot be pinned to one netlink
    message from outside); whatever it hits, the outcome must be one clean line."""
    taps = [f"rlv{i}" for i in range(8)]
    netns_shaper.node.add_taps_batch(taps)
    for index, tap in enumerate(taps):
        netns_shaper.node.nic(NAME, index, tap)
    environ = {**_start_env(sample), "GANETI_INSTANCE_NIC_COUNT": "8"}

    def delete_taps():
        time.sleep(delay)  # the hook's interpreter is starting
        for tap in reversed(taps):
            subprocess.run(["ip", "-n", netns_shaper.node.ns, "link", "del", tap],
                           check=False, capture_output=True)

    code, lines = run_entry_in_netns(netns_shaper, {}, environ, during=delete_taps)
    [line] = [line for line in lines if line.startswith("hookpack shaping:")]
    assert any(f": {o}: " in line for o in ("changed", "nochange", "failed")), line
    assert code == 0


@pytest.mark.netns
def test_qdisc_handle_0_is_refused_by_the_config(netns_shaper, sample):
    """Found here: with handle "0" the kernel picked a handle itself (htb 8003:), the
    hook reported "htb qdisc 0: created", and the next run refused the qdisc as foreign.
    Now the config refuses 0 with one clear line and nothing is written."""
    netns_shaper.node.add_tap("rltap1")
    netns_shaper.node.nic(NAME, 0, "rltap1")
    code, lines = run_entry_in_netns(netns_shaper, {"handle": "0"}, _start_env(sample))
    line = one_line(lines, "shaping", "failed")
    assert "shaping.handle: '0' does not match" in line
    assert code == 0
    assert "htb" not in netns_shaper.node.run("tc", "qdisc", "show", "dev", "up0")


@pytest.mark.netns
def test_the_highest_qdisc_handle_works_and_is_in_step_on_the_second_run(netns_shaper,
                                                                         sample):
    netns_shaper.node.add_tap("rltap1")
    netns_shaper.node.nic(NAME, 0, "rltap1")
    for outcome in ("changed", "nochange"):
        code, lines = run_entry_in_netns(netns_shaper, {"handle": "fffe"}, _start_env(sample))
        one_line(lines, "shaping", outcome)
        assert code == 0


@pytest.mark.netns
def test_another_run_holding_the_shaping_lock_is_a_bounded_wait(netns_shaper, sample):
    """Another hookpack run holds the node's shaping lock for the whole hook: this run
    waits for it (bounded by its deadline), then gives up with one clear line and no
    kernel write. Without the lock around the reconcile, it would shape at once."""
    import json

    from hookpack.actions.shaping import classifier, legacy
    from hookpack.locks import node_lock

    netns_shaper.node.add_tap("rltap2")
    netns_shaper.node.nic(NAME, 0, "rltap2")
    # The once-per-boot removal of the old classifier's rules (under the same lock) has
    # run already: the lock this run meets is the reconcile's own.
    run_dir = netns_shaper.base / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / legacy._MARKER).write_text(json.dumps({"kernel": classifier.kernel_key()}))
    with node_lock(netns_shaper.base / "run", "shaping", 1):
        code, lines = run_entry_in_netns(netns_shaper, {}, _start_env(sample))
    line = one_line(lines, "shaping", "failed")
    assert "shaping.lock is held by another hookpack run" in line, line
    assert code == 0
    assert "htb" not in netns_shaper.node.run("tc", "qdisc", "show", "dev", "up0")
