"""The hook server (hookpack/hookserver.py): real server processes, real entries run by
the emulator the way Ganeti runs a hooks directory. Which process ran a hook is told by
a global hook script that writes its ancestors' pids (through the server, the server's
pid is among them), or by entries whose own interpreter cannot import hookpack (a bare
venv; the server runs from it with the checkout on PYTHONPATH): what hookpack did there,
the server did."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hookpack.emulator import pre_aborts, run_hooks
from hookpack.hookserver import Identity, _await, parse_request
from hookpack.hooksinstall import ENTRY_NAME, GLOBAL_POST_ENTRY, install

NODE1 = '[node]\nfqdn = "node1.example.test"\n'
ANCESTORS = """\
pid=$PPID
while [ "$pid" -gt 1 ]; do
    echo "$pid" >> {out}
    pid=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$pid/status)
done
echo "global script ran" >&2
"""


class Server:
    """`hookpack hook-server` for a config, as a child of the test (killed at the end)."""

    def __init__(self, config: Path, run_dir: Path, python: str = sys.executable,
                 package: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.socket = run_dir / "hookserver.sock"
        code = ("import sys; from hookpack import cli; sys.exit(cli.main(sys.argv[1:]))"
                if package is None else
                "import sys; from hookpack import hookserver as h; "
                f"h.Identity.__init__.__defaults__ = (sys.executable, {str(package)!r}); "
                "sys.exit(h.serve(h.socket_path(__import__('pathlib').Path(sys.argv[4]))))")
        extra = [] if package is None else [str(run_dir)]
        self.proc = subprocess.Popen(
            [python, "-c", code, "hook-server", "--config", str(config), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})})
        give_up = time.monotonic() + 30
        while not self.socket.is_socket():
            assert self.proc.poll() is None, self.proc.stdout.read()  # type: ignore[union-attr]
            assert time.monotonic() < give_up, "hook server did not come up"
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return out


@pytest.fixture
def server_for(tmp_path):
    started: list[Server] = []

    def start(config: Path, **kwargs) -> Server:
        server = Server(config, tmp_path / "run_dir", **kwargs)
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()


@pytest.fixture
def post_env(sample, tmp_path):
    environ, _ = sample("disk-grow-pre-node1")
    return {**environ, "GANETI_HOOKS_PHASE": "post", "GANETI_DATA_DIR": str(tmp_path / "g")}


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A venv's interpreter that cannot import hookpack: an entry installed with it runs
    hookpack only through a server."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return str(venv / "bin" / "python")


@pytest.fixture
def served_only(write_config, server_for, tmp_path, bare_python):
    """Entries (for a config with ``extra``) whose interpreter cannot import hookpack,
    and a server from that same interpreter that can (the checkout on its PYTHONPATH)."""
    def make(extra: str) -> tuple[Path, Server]:
        config = write_config(extra)
        root = tmp_path / "bare-hooks"
        install(root, python=bare_python, config=str(config))
        return root, server_for(config, python=bare_python, env={"PYTHONPATH": str(REPO)})
    return make


def _post_script(root: Path, name: str, body: str) -> None:
    directory = root / "global-post.d"
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)


def _global_script(root: Path, out: Path) -> None:
    _post_script(root, "10-ancestors", ANCESTORS.format(out=out))


def _ancestors(out: Path) -> list[int]:
    pids = [int(p) for p in out.read_text().split()]
    out.unlink()
    return pids


def _global_entry(results):
    [result] = [r for r in results if r.name.endswith("/" + GLOBAL_POST_ENTRY)]
    return result


def test_a_hook_run_goes_through_the_server_with_its_streams(
        hooks, write_config, server_for, post_env, tmp_path):
    root = hooks(NODE1)
    _global_script(root, tmp_path / "ancestors")
    server = server_for(tmp_path / "hookpack.toml")
    results = run_hooks(root, "disk-grow", "post", post_env)
    entry = _global_entry(results)
    assert entry.status == "success", entry.output
    assert "global script ran" in entry.output  # the worker wrote to the hook's stderr
    assert server.pid in _ancestors(tmp_path / "ancestors")
    server.stop()
    results = run_hooks(root, "disk-grow", "post", post_env)  # no server: run in-process
    assert _global_entry(results).status == "success"
    assert server.pid not in _ancestors(tmp_path / "ancestors")


def test_the_worker_gets_the_hooks_environment_cwd_and_umask(
        hooks, server_for, post_env, tmp_path):
    root = hooks(NODE1)
    out = tmp_path / "seen"
    _post_script(root, "10-env", f"(env | sort; pwd; umask) > {out}\n"
                 + ANCESTORS.format(out=tmp_path / "ancestors"))
    seen = {}
    for how in ("server", "in-process"):
        server = server_for(tmp_path / "hookpack.toml") if how == "server" else None
        results = run_hooks(root, "disk-grow", "post", {**post_env, "GANETI_ODD": "a\tb=c"})
        assert _global_entry(results).status == "success"
        seen[how] = out.read_text()
        ancestors = _ancestors(tmp_path / "ancestors")
        if server:
            assert server.pid in ancestors  # this run was the server's
            server.stop()
    assert seen["server"] == seen["in-process"]
    assert "GANETI_ODD=a\tb=c" in seen["server"]


def test_a_veto_passes_through_the_server(served_only, sample):
    root, _ = served_only(NODE1 + '[policy]\nenabled = true\nname_pattern = "^x$"\n')
    environ, _ = sample("instance-add-post-node1")
    environ = {k: v for k, v in environ.items() if not k.startswith("GANETI_POST_")}
    results = run_hooks(root, "instance-add", "pre", {**environ, "GANETI_HOOKS_PHASE": "pre"})
    [entry] = [r for r in results if r.name.endswith("/" + ENTRY_NAME)]
    assert pre_aborts(results), entry.output  # the entry's own Python cannot import hookpack
    assert "hookpack policy: inst1.example.test: veto: " in entry.output, entry.output


def test_a_dead_servers_socket_means_a_run_in_process(hooks, server_for, post_env, tmp_path):
    root = hooks(NODE1)
    _global_script(root, tmp_path / "ancestors")
    server = server_for(tmp_path / "hookpack.toml")
    server.proc.kill()  # SIGKILL: the socket file stays, nobody listens
    server.proc.wait()
    assert server.socket.is_socket()
    results = run_hooks(root, "disk-grow", "post", post_env)
    assert _global_entry(results).status == "success"
    assert server.pid not in _ancestors(tmp_path / "ancestors")


def test_a_hung_server_costs_the_ack_wait_and_the_run_happens_once(
        hooks, server_for, post_env, tmp_path):
    root = hooks(NODE1)
    _global_script(root, tmp_path / "ancestors")
    server = server_for(tmp_path / "hookpack.toml")
    os.kill(server.pid, signal.SIGSTOP)
    start = time.monotonic()
    results = run_hooks(root, "disk-grow", "post", post_env)
    took = time.monotonic() - start
    assert _global_entry(results).status == "success"
    os.kill(server.pid, signal.SIGCONT)
    time.sleep(2.0)  # the supervisor it now forks finds the client gone: no second run
    ancestors = _ancestors(tmp_path / "ancestors")  # exactly one run wrote its chain
    assert server.pid not in ancestors
    assert ancestors.count(ancestors[-1]) == 1
    assert took < 60  # bounded (the entry's limit); the ack wait itself is 2 s


def test_a_client_of_another_install_runs_in_process(
        hooks, server_for, post_env, tmp_path):
    other = tmp_path / "other-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(other)], check=True)
    [site] = other.glob("lib/python3*/site-packages")
    (site / "hookpack-checkout.pth").write_text(f"{REPO}\n")
    root = hooks(NODE1)
    _global_script(root, tmp_path / "ancestors")
    server = server_for(tmp_path / "hookpack.toml", python=str(other / "bin" / "python"))
    results = run_hooks(root, "disk-grow", "post", post_env)
    assert _global_entry(results).status == "success"
    assert server.pid not in _ancestors(tmp_path / "ancestors")
    assert server.proc.poll() is None  # another install's client does not end it


def test_a_changed_install_ends_the_server_and_the_run_happens_in_process(
        hooks, server_for, post_env, tmp_path):
    package = tmp_path / "package"
    package.mkdir()
    for name in ("__init__.py", "hook.py"):
        (package / name).write_text("")
    root = hooks(NODE1)
    _global_script(root, tmp_path / "ancestors")
    server = server_for(tmp_path / "hookpack.toml", package=package)
    run_hooks(root, "disk-grow", "post", post_env)
    assert server.pid in _ancestors(tmp_path / "ancestors")
    (package / "hook.py").unlink()
    (package / "hook.py").write_text("# upgraded\n")  # a new inode, as dpkg and pip write
    results = run_hooks(root, "disk-grow", "post", post_env)
    assert _global_entry(results).status == "success"
    assert server.pid not in _ancestors(tmp_path / "ancestors")
    assert server.proc.wait(timeout=30) == 0
    assert "its install changed; exiting" in server.stop()


def test_a_hung_action_ends_at_hookpacks_deadline_through_the_server_too(
        hooks, served_only, sample, tmp_path):
    """The record action blocks opening a FIFO nobody reads: abandoned at hook.deadline
    (1 s) and reported in one line, through the server as in a process of its own."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    extra = NODE1 + f'[hook]\ndeadline = 1\n[record]\nenabled = true\npath = "{fifo}"\n'
    environ, _ = sample("instance-start-post-node1")
    outputs = {}
    for how in ("server", "in-process"):
        if how == "server":
            root, server = served_only(extra)
        else:
            server.stop()
            root = hooks(extra)
        start = time.monotonic()
        results = run_hooks(root, "instance-start", "post", environ)
        assert time.monotonic() - start < 20
        [entry] = [r for r in results if r.name.endswith("/" + ENTRY_NAME)]
        assert entry.status == "success"  # post: reported, not a failure for Ganeti
        outputs[how] = entry.output
    for output in outputs.values():
        assert "hookpack record: inst1.example.test: timeout: abandoned at the 1 s deadline" \
            in output, output


def test_the_supervisor_kills_a_worker_at_the_entrys_limit():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.kill(os.getpid(), signal.SIGSTOP)  # hung where no watchdog can run
        os._exit(0)
    os.close(write_end)
    start = time.monotonic()
    answer, status = _await(pid, read_end, 0.5)
    assert (answer, status) == (b"", None)
    assert 0.4 < time.monotonic() - start < 10
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # killed and reaped


def test_the_answer_line_ends_the_wait_while_a_child_of_the_worker_holds_the_pipe():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            if os.fork() == 0:  # the worker's own child, still holding the pipe
                time.sleep(3)
                os._exit(0)
            os.write(write_end, b"0\n")
        finally:
            os._exit(0)
    os.close(write_end)
    start = time.monotonic()
    assert _await(pid, read_end, 30) == (b"0", 0)
    assert time.monotonic() - start < 2.5  # not the grandchild's 3 s, nor the limit
    os.close(read_end)


def test_requests_are_parsed_strictly():
    good = b"\0".join([b"hookpack-hook-1", b"/usr/bin/python3", b"actions", b"", b"40",
                       b"22", b"/", b"1", b"/x/50-hookpack", b"A=1", b"B=x=y"])
    request = parse_request(good)
    assert request is not None
    assert request.env == [(b"A", b"1"), (b"B", b"x=y")] and request.umask == 0o22
    assert request.argv == [b"/x/50-hookpack"] and request.limit == 40.0
    for bad in (good.replace(b"hookpack-hook-1", b"hookpack-hook-0"),
                good.replace(b"actions", b"shell"), good.replace(b"\x0040\x00", b"\x00x\x00"),
                good.replace(b"\x001\x00/x", b"\x009\x00/x"), good + b"\0novalue",
                good.replace(b"\x0040\x00", b"\x000\x00"), b""):
        assert parse_request(bad) is None, bad


def test_identity_sees_a_replaced_file_and_another_interpreter_dir(tmp_path):
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "hook.py").write_text("")
    identity = Identity(sys.executable, str(tmp_path))
    assert not identity.stale()
    assert identity.serves(os.fsencode(sys.executable))
    assert not identity.serves(b"/nonexistent/bin/python3")
    (tmp_path / "__init__.py").unlink()
    (tmp_path / "__init__.py").write_text("")
    assert identity.stale()


def test_a_server_restarted_while_a_run_is_under_way_comes_up_and_the_run_finishes(
        hooks, server_for, post_env, tmp_path):
    """As `systemctl restart` with KillMode=process: the old server stops, its run goes on
    and ends well, the new server takes the lock and the socket at once."""
    import threading

    root = hooks(NODE1)
    started = tmp_path / "started"
    _post_script(root, "10-slow", ANCESTORS.format(out=tmp_path / "ancestors")
                 + f"touch {started}\nsleep 6\necho slow run done >&2\n")
    first = server_for(tmp_path / "hookpack.toml")
    results: list = []
    runner = threading.Thread(target=lambda: results.extend(
        run_hooks(root, "disk-grow", "post", post_env)))
    runner.start()
    give_up = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < give_up
        time.sleep(0.05)
    assert "hook-server: stopped" in first.stop()
    second = server_for(tmp_path / "hookpack.toml")  # waits for its socket: up at once
    assert runner.is_alive()  # the first server's run is still going
    runner.join(timeout=60)
    entry = _global_entry(results)
    assert entry.status == "success" and "slow run done" in entry.output, entry.output
    assert first.pid in _ancestors(tmp_path / "ancestors")  # the run was the first's
    assert second.proc.poll() is None
