"""`hookpack hook-server`: hook runs without a Python start, from a warm fork server.

A hook run with work costs Ganeti mostly the interpreter's start and hookpack's imports,
not the work (issue #21). The server imports everything once, then forks per hook run.
The entry script (hookpack/entryscript.py) tries it first when its socket exists:

  client (the entry's bootstrap, `python -I -S`, only `_socket` imported)
    -> one SOCK_SEQPACKET message: the hook's argv, environment, cwd, umask, the
       interpreter it would run and the entry's time limit
  supervisor (forked per connection)
    <- "ok" (or "stale" / "other" / "bad": the client then runs hookpack itself)
    -> "go", with the hook's stdout and stderr as SCM_RIGHTS: from here the client waits
       for this run; before it, either side may give up and the run happens once, in
       the client. (The streams go only now: file descriptors in flight to a server that
       never reads them would keep Ganeti's pipe open, and the hook with it.)
  worker (forked by the supervisor): the hook's environment, cwd, umask and streams,
    the same entry function the bootstrap calls; its answer goes back through a pipe
  supervisor -> "result <answer>" or "exit <status>" (the worker ended without an answer,
    e.g. hookpack's own deadline), after killing the worker at the entry's limit.

Never a second run, never an unbounded one: a client that gets no "ok" within
`ACK_TIMEOUT` never sends "go" (the supervisor then exits without running anything) and
runs hookpack itself; the supervisor kills the worker at the entry's limit.

Runs only the code the client would have run: the supervisor answers "other" to a
client of another install (its interpreter's resolved directory differs), and "stale"
when the server's own install changed since it started (upgraded package, `current`
switched); it then ends the server, for systemd to start it again on the new code.
The socket is root's only (mode 0600, and the peer's uid is checked).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib
import math
import os
import pkgutil
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hookpack
from hookpack.entryscript import SERVER_SOCKET
from hookpack.record import record

MAGIC = b"hookpack-hook-1"
MAX_REQUEST = 1 << 20  # an environment of Ganeti's is a few KiB
ACK_TIMEOUT = 2.0  # seconds the client waits for "ok" (the same figure is in BOOTSTRAP)
GO_TIMEOUT = 5.0
STALE_CHECK = 10.0  # seconds between looks at the install while no hook comes


class _Stop(Exception):
    pass


@record(frozen=True)
class Request:
    interpreter: bytes
    kind: str
    config: str
    limit: float
    umask: int
    cwd: bytes
    argv: list[bytes]
    env: list[tuple[bytes, bytes]]


def parse_request(data: bytes) -> Request | None:
    """The client's message (see BOOTSTRAP in hookpack/entryscript.py), or None."""
    fields = data.split(b"\0")
    try:
        magic, interpreter, kind, config, limit, umask, cwd, argc = fields[:8]
        count = int(argc)
        argv, pairs = fields[8:8 + count], fields[8 + count:]
        env = [tuple(pair.split(b"=", 1)) for pair in pairs]
        request = Request(interpreter, kind.decode(), os.fsdecode(config), float(limit),
                          int(umask, 8), cwd, argv, env)  # type: ignore[arg-type]
    except (ValueError, UnicodeDecodeError):
        return None
    ok = (magic == MAGIC and request.kind in ("actions", "global") and len(argv) == count
          and all(len(pair) == 2 and pair[0] for pair in env) and 0 < request.limit <= 3600)
    return request if ok else None


def resolved_dir(executable: bytes | str) -> str:
    """The interpreter's directory with every symlink resolved (the entry's `cd -P`)."""
    return os.path.realpath(os.path.dirname(os.fsdecode(executable)))


class Identity:
    """Which install this process runs: its interpreter's resolved directory and the
    files of hookpack's package (a reinstall or upgrade replaces them)."""

    def __init__(self, executable: str = sys.executable,
                 package: str = os.path.dirname(hookpack.__file__)) -> None:
        self.executable = executable
        self.package = package
        self.at_start = self.now()

    def now(self) -> tuple[object, ...]:
        stamps: list[object] = [resolved_dir(self.executable)]
        for path in (self.package, os.path.join(self.package, "__init__.py"),
                     os.path.join(self.package, "hook.py")):
            try:
                info = os.stat(path)
                stamps.append((info.st_ino, info.st_mtime_ns, info.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def stale(self) -> bool:
        return self.now() != self.at_start

    def serves(self, interpreter: bytes) -> bool:
        return resolved_dir(interpreter) == self.at_start[0]


def warm_up(out: Callable[[str], None]) -> int:
    """Import every hookpack module now, so no hook run pays for it; returns the count."""
    count = 0
    for info in pkgutil.walk_packages(hookpack.__path__, "hookpack."):
        if info.name.endswith(".__main__"):  # importing it runs the CLI
            continue
        try:
            importlib.import_module(info.name)
            count += 1
        except Exception as err:  # an optional dependency missing: the run imports it then
            out(f"hook-server: {info.name} not imported ahead: {type(err).__name__}: {err}")
    return count


def bind(path: Path) -> socket.socket:
    """A listening socket at ``path`` (0600); a stale socket file is replaced."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            pass
        else:
            raise OSError(errno.EADDRINUSE, f"another hook server answers on {path}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(128)
    return listener


def serve(path: Path, *, out: Callable[[str], None] = print) -> int:
    lock = _single_instance(path)
    count = warm_up(out)
    identity = Identity()
    listener = bind(path)
    bound = os.stat(path).st_ino
    stopping: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopping.append(signum)
        raise _Stop

    # SIGHUP: a supervisor found the install changed (see _verdict)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors reap themselves
    out(f"hook-server: serving {path} (pid {os.getpid()}, {count} modules imported ahead)")
    listener.settimeout(STALE_CHECK)
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                if identity.stale():
                    stopping.append(signal.SIGHUP)
                    break
                continue
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.1)
                    continue
                raise
            conn.setblocking(True)
            try:
                _fork_supervisor(conn, (listener.fileno(), lock), identity)
            finally:
                conn.close()
    except _Stop:
        pass
    finally:
        listener.close()
        _unlink_if_ours(path, bound)
        os.close(lock)
    why = "its install changed; exiting" if signal.SIGHUP in stopping else "stopped"
    out(f"hook-server: {why}")
    return 0


def _single_instance(path: Path) -> int:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OSError(errno.EADDRINUSE, f"another hook server holds {path}.lock") from None
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\n" % os.getpid())  # who serves: `doctor`, and the lab's restart
    return fd


def serving_pid(path: Path) -> int | None:
    """The pid of the server holding ``path``'s lock, or None when none does."""
    try:
        fd = os.open(f"{path}.lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        text = os.read(fd, 32).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    finally:
        os.close(fd)
    return None  # the lock was free: nobody serves


def _unlink_if_ours(path: Path, inode: int) -> None:
    try:
        if os.stat(path).st_ino == inode:
            path.unlink()
    except OSError:
        pass


def _fork_supervisor(conn: socket.socket, servers_fds: tuple[int, int],
                     identity: Identity) -> None:
    """Fork the run's supervisor; it leaves the listener and the server's lock behind
    (a run still going must not keep a restarted server from taking them)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        pid = os.fork()
    except OSError:
        return  # the client sees the connection close without "ok" and runs hookpack itself
    if pid:
        return
    code = 1
    try:
        for fd in servers_fds:
            os.close(fd)
        _detach_from_servers_streams()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        code = supervise(conn, identity)
    finally:
        os._exit(code)


def _detach_from_servers_streams() -> None:
    """The supervisor writes nothing; it must not hold the server's stdout (the journal,
    or a pipe someone reads to its end) for as long as a run lasts."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def supervise(conn: socket.socket, identity: Identity) -> int:
    """One hook run, in the supervisor process."""
    signal.alarm(int(GO_TIMEOUT) + 5)  # a client that never writes cannot hold us
    if not _peer_is_root(conn):
        return 1
    conn.settimeout(GO_TIMEOUT)
    fds: list[int] = []
    try:
        data, stray = _receive(conn)
        for fd in stray:  # streams come with "go" only
            os.close(fd)
        request = parse_request(data)
        answer = _verdict(request, identity)
        conn.send(answer)
        if answer != b"ok" or request is None:
            return 0
        go, fds = _receive(conn)
        if go != b"go" or len(fds) != 2:
            return 0
        signal.alarm(math.ceil(request.limit) + 3)
        conn.send(_run_worker(request, fds))
    except OSError:
        return 1
    finally:
        for fd in fds:
            os.close(fd)
    return 0


def _peer_is_root(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    uid: int = struct.unpack("3i", creds)[1]
    return uid in (0, os.geteuid())


def _receive(conn: socket.socket) -> tuple[bytes, list[int]]:
    fds: list[int] = []
    data, ancdata, flags, _ = conn.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(8 * 4))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += [int.from_bytes(payload[i:i + 4], sys.byteorder)
                    for i in range(0, usable, 4)]
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        data = b""  # parse_request refuses it
    return data, fds


def _verdict(request: Request | None, identity: Identity) -> bytes:
    if request is None:
        return b"bad"
    if identity.stale():
        os.kill(os.getppid(), signal.SIGHUP)
        return b"stale"
    return b"ok" if identity.serves(request.interpreter) else b"other"


def _run_worker(request: Request, fds: list[int]) -> bytes:
    """Fork the worker, wait for its answer up to the entry's limit; what to tell the client."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: never returns
        code = 1
        try:
            os.close(read_end)
            code = _worker(request, fds, write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    answer, status = _await(pid, read_end, request.limit)
    os.close(read_end)
    if answer:
        return b"result " + answer
    if status is None:
        return b"exit 137"
    return b"exit %d" % status


def _await(pid: int, read_end: int, limit: float) -> tuple[bytes, int | None]:
    """The worker's answer (one line) and exit status; (b"", None) when it was killed at
    ``limit``. The line ends the reading, not the pipe's end: a child the worker forked
    may still hold the pipe."""
    answer = b""
    give_up = time.monotonic() + limit
    while not answer.endswith(b"\n"):
        left = give_up - time.monotonic()
        if left <= 0 or not select.select([read_end], [], [], left)[0]:
            return _kill(pid)
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        answer += chunk
    # The worker ends right after its answer (os._exit); the supervisor's alarm bounds
    # this wait should it not.
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return answer.rstrip(b"\n"), code if code >= 0 else 128 - code  # killed: as a shell says


def _kill(pid: int) -> tuple[bytes, None]:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return b"", None


def _worker(request: Request, fds: list[int], answer_fd: int) -> int:
    """In the worker: become the hook's process, run the entry, write its answer."""
    try:
        _become_hook_process(request, fds)
        if request.kind == "global":
            from hookpack.globalhooks import entry
        else:
            from hookpack.hook import entry
        result = entry(request.config or None)
    except BaseException as err:
        text = " ".join(str(err).split())
        result = f"notrun cannot run hookpack: {type(err).__name__}" + (
            f": {text}" if text else "")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed stream: the answer still goes back
            stream.flush()
    os.write(answer_fd, " ".join(result.split()).encode("utf-8", "replace") + b"\n")
    return 0


def _become_hook_process(request: Request, fds: list[int]) -> None:
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.alarm(0)
    os.umask(request.umask)
    try:
        os.chdir(request.cwd)
    except OSError:
        os.chdir("/")
    os.environb.clear()
    os.environb.update(dict(request.env))
    sys.argv = [os.fsdecode(arg) for arg in request.argv]


def socket_path(run_dir: Path) -> Path:
    return run_dir / SERVER_SOCKET


def add_cli(sub: object) -> None:
    from hookpack.config import add_config_arg

    p = sub.add_parser(  # type: ignore[attr-defined]
        "hook-server", help="serve hook runs from a warm process (the entries use it when "
        "its socket exists)")
    add_config_arg(p)
    p.set_defaults(handler=_cmd)


def _cmd(ns: object) -> int:
    from hookpack.config import load
    from hookpack.errors import HookpackError

    cfg = load(ns)  # type: ignore[arg-type]

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        return serve(socket_path(cfg.path_of("run_dir")), out=out)
    except OSError as err:
        raise HookpackError(f"hook-server: {err.strerror or err}") from None
