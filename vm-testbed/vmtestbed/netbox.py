"""A real NetBox 4.7 server (PyPI's ``netbox`` wheel, PostgreSQL, Redis) for the tests and
the Ganeti demo.

NetBox 4.7 needs Python 3.12 or later and this host has Debian 12's 3.11, so NetBox runs
from a Debian 13 ("trixie", Python 3.13, PostgreSQL 17) root filesystem:
:func:`build_netbox_root` copies the Debian 13 tree it shares with the Ganeti 3.1 lab
(:mod:`vmtestbed.trixie`), pip-installs
``netbox==4.7.3`` into a venv there (psycopg's C implementation is compiled with the
rootfs's gcc and libpq-dev), writes NetBox's ``configuration.py``, and runs ``netbox
migrate`` against a fresh PostgreSQL cluster in it, then creates a superuser and two API
tokens of fixed value: :data:`TOKEN` (v1, sent as ``Authorization: Token <token>``, as
pynetbox sends a token without the ``nbt_`` prefix) and :data:`TOKEN_V2` (``nbt_<key>.<secret>``,
which pynetbox sends as ``Bearer``; NetBox tells the versions apart by that prefix, under
either keyword). The result is cached and committed like a rootfs, in
``<cache>/netbox/netbox-<version>-<key>``: the key hashes the rootfs's name, the NetBox
version, the files written into the tree and :data:`BUILDER_VERSION`.

:func:`running_netbox` never writes to that tree: under ``wrap`` (e.g. ``ip netns exec NS``
or a lab node's ``nsenter``) it starts ``unshare`` with a private mount namespace and a
pid namespace, mounts an overlayfs (the cached tree below, an upper dir in the caller's
directory), chroots into it and starts PostgreSQL and Redis (unix sockets only) and
gunicorn on ``address:port``. Stopping it stops all three; whatever would survive dies
with the pid namespace (``--kill-child``), and the mounts vanish with the mount namespace.
No RQ worker runs: NetBox's background jobs (webhooks, scripts) stay queued.

:func:`api` talks to the REST API from inside the namespace (standard library only, like
:func:`vmtestbed.pdns.api`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmtestbed import paths, rootfs, trixie
from vmtestbed.errors import TestbedError

NETBOX_VERSION = "4.7.3"
# Bump when the way the tree is made changes in a way the key does not see.
BUILDER_VERSION = "1"

NETBOX_ROOT = "/opt/netbox"  # the instance root in the tree (conf/configuration.py)
HELPER = f"{NETBOX_ROOT}/testbed/netbox-testbed.sh"

ADMIN_USER = "admin"
ADMIN_PASSWORD = "vmtestbed-admin-password-1"  # noqa: S105 (a throwaway test server's)
# Fixed test values, known to tests/helpers/secretscan.py.
TOKEN = "vmtestbedNetBoxV1ApiToken000000000000047"  # noqa: S105
TOKEN_V2_KEY = "vmtestbedKey"  # noqa: S105 (12 characters, as NetBox makes them)
TOKEN_V2_SECRET = "vmtestbedNetBoxV2ApiSecret00000000000047"  # noqa: S105
TOKEN_V2 = f"nbt_{TOKEN_V2_KEY}.{TOKEN_V2_SECRET}"
SECRET_KEY = "vmtestbed-netbox-SECRET_KEY-of-a-throwaway-test-server-0123456789"  # noqa: S105
PEPPER = "vmtestbed-netbox-API_TOKEN_PEPPER-of-a-throwaway-test-server-01234"

READY_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
GUNICORN_WORKERS = 2
GUNICORN_THREADS = 4


class NetBoxError(TestbedError):
    """The NetBox root could not be built, the server did not start, or an API call failed."""


@dataclass
class NetBox:
    """A running NetBox: its URL, API tokens, the caller's directory and our process."""

    url: str
    token: str = field(repr=False)  # out of tracebacks
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    token_v2: str = field(default=TOKEN_V2, repr=False)
    pid_namespace: str = ""  # e.g. "pid:[4026532301]": where its processes live

    @property
    def log(self) -> Path:
        """PostgreSQL's, Redis's and gunicorn's output (gunicorn's access log too)."""
        return self.directory / "netbox.log"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def processes(self) -> list[int]:
        """Host pids of the processes in the server's pid namespace (none once stopped)."""
        return _pids_in_namespace(self.pid_namespace) if self.pid_namespace else []

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to our process group (the helper stops the three services), then SIGKILL."""
        if self.process is None:
            return
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)  # --kill-child: the pid ns goes
                self.process.wait(10)
        self.process = None


# --- the cached tree -------------------------------------------------------------------

CONFIGURATION = f'''"""NetBox configuration of vm-testbed's throwaway NetBox (vmtestbed.netbox)."""

ALLOWED_HOSTS = ["*"]
DATABASES = {{
    "default": {{
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "netbox",
        "USER": "netbox",
        "PASSWORD": "",
        "HOST": "/run/postgresql",  # unix socket only: nothing listens on TCP but NetBox
        "PORT": "",
        "CONN_MAX_AGE": 300,
    }}
}}
REDIS = {{
    "tasks": {{"URL": "unix:///run/redis/redis.sock", "DATABASE": 0}},
    "caching": {{"URL": "unix:///run/redis/redis.sock?db=1"}},
}}
SECRET_KEY = {SECRET_KEY!r}
# v2 tokens (nbt_<key>.<secret>) are HMACs with a pepper; without one only v1 tokens work
API_TOKEN_PEPPERS = {{1: {PEPPER!r}}}
DEBUG = False
# never a connection out: no release check, census, plugin catalogue or Copilot
ISOLATED_DEPLOYMENT = True
RELEASE_CHECK_URL = None
CENSUS_REPORTING_ENABLED = False
'''

CREATE_USERS = f'''"""The superuser and its two API tokens of fixed value (vmtestbed.netbox)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netbox.settings")
django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from users.models import Token  # noqa: E402

user = get_user_model().objects.create_superuser({ADMIN_USER!r}, "admin@example.test",
                                                 {ADMIN_PASSWORD!r})
Token.objects.create(user=user, version=1, token={TOKEN!r}, description="vmtestbed v1")
Token.objects.create(user=user, version=2, key={TOKEN_V2_KEY!r}, token={TOKEN_V2_SECRET!r},
                     description="vmtestbed v2")
'''

# Runs chrooted in the tree as PID 1 of a private pid namespace (see _enter_root_argv).
HELPER_SCRIPT = r'''#!/bin/sh
# vmtestbed.netbox's helper in the NetBox tree: install VERSION | migrate | serve ADDRESS PORT
# Runs chrooted, as PID 1 of a private pid namespace: what it leaves dies with it.
set -eu
PG=$(echo /usr/lib/postgresql/*/bin)
DATA=/var/lib/netbox/postgresql
VENV=/opt/netbox/venv
HERE=/opt/netbox/testbed
db='' cache='' web=''

# Each daemon is started as a simple command, so that $! is its own pid.
start_services() {
    install -d -o postgres -g postgres /run/postgresql
    setpriv --reuid=postgres --regid=postgres --init-groups "$PG/postgres" -D "$DATA" &
    db=$!
    install -d /run/redis
    redis-server --port 0 --unixsocket /run/redis/redis.sock --unixsocketperm 700 \
        --save '' --appendonly no --daemonize no --loglevel warning &
    cache=$!
    tries=0
    until "$PG/pg_isready" -q -h /run/postgresql -d postgres -U netbox &&
            redis-cli -s /run/redis/redis.sock ping >/dev/null 2>&1; do
        kill -0 "$db" "$cache" || { echo "netbox-testbed: postgres or redis died" >&2; exit 1; }
        tries=$((tries + 1))
        [ "$tries" -lt 600 ] || { echo "netbox-testbed: no postgres/redis in 60 s" >&2; exit 1; }
        sleep 0.1
    done
}

stop_services() {
    for pid in $web $cache; do kill -TERM "$pid" 2>/dev/null || true; done
    [ -z "$db" ] || kill -INT "$db" 2>/dev/null || true  # fast shutdown
    wait
}

timed() {  # timed WHAT COMMAND...: run it, note its time in the tree's build record
    what=$1
    shift
    t0=$(date +%s%N)
    "$@"
    ms=$((($(date +%s%N) - t0) / 1000000))
    echo "$what: $((ms / 1000)).$((ms % 1000 / 100)) s" >> "$HERE/build-times.txt"
}

install_netbox() {
    python3 -m venv "$VENV"
    timed "pip install netbox==$1" \
        "$VENV/bin/pip" install --no-cache-dir --progress-bar off "netbox==$1"
    "$VENV/bin/pip" freeze > "$HERE/pip-freeze.txt"
}

init_cluster() {
    install -d -o postgres -g postgres -m 700 "$DATA"
    setpriv --reuid=postgres --regid=postgres --init-groups "$PG/initdb" -D "$DATA" \
        -U netbox --auth=trust -E UTF8 --no-locale --wal-segsize=1 --no-sync \
        --no-instructions >/dev/null
    # a throwaway database: no crash safety, no TCP
    cat >> "$DATA/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '/run/postgresql'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
}

migrate() {
    timed "initdb" init_cluster
    start_services
    "$PG/createdb" -h /run/postgresql -U netbox netbox
    timed "netbox migrate" "$VENV/bin/netbox" migrate --no-input
    timed "superuser and tokens" "$VENV/bin/python" "$HERE/create_users.py"
    stop_services
}

serve() {
    case $1 in *:*) bind="[$1]:$2" ;; *) bind="$1:$2" ;; esac
    trap stop_services TERM INT HUP
    start_services
    "$VENV/bin/gunicorn" --bind "$bind" --workers "${WORKERS:-2}" --threads "${THREADS:-4}" \
        --timeout 120 --graceful-timeout 5 --access-logfile - netbox.wsgi &
    web=$!
    wait "$web" || true
    stop_services
}

case ${1:-} in
    install) install_netbox "$2" ;;
    migrate) migrate ;;
    serve) serve "$2" "$3" ;;
    *) echo "usage: $0 install VERSION | migrate | serve ADDRESS PORT" >&2; exit 2 ;;
esac
'''

# Host side, in the fresh mount and pid namespaces: mount the tree (an overlay when a
# lower dir is given), the kernel filesystems and tmpfs, then chroot into it.
ENTER_ROOT = r'''set -eu
root=$1 lower=$2 upper=$3 work=$4 ca=$5
shift 5
if [ -n "$lower" ]; then
    mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"
fi
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$root/run"
mkdir -p "$root/dev/shm"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
[ -z "$ca" ] || cp "$ca" "$root/tmp/ca-certificates.crt"
exec chroot "$root" "$@"
'''

ROOT_FILES = {
    f"{NETBOX_ROOT}/conf/configuration.py": CONFIGURATION,
    f"{NETBOX_ROOT}/testbed/create_users.py": CREATE_USERS,
    HELPER: HELPER_SCRIPT,
}


def netbox_key(base: Path) -> str:
    """The cache key of the NetBox tree made from the rootfs ``base``."""
    spec = {
        "builder": BUILDER_VERSION,
        "rootfs": base.name,
        "netbox": NETBOX_VERSION,
        "files": ROOT_FILES,
        "enter": ENTER_ROOT,
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return f"netbox-{NETBOX_VERSION}-{digest}"


def build_netbox_root(cache_dir: Path | None = None, *, rebuild: bool = False,
                      progress: Callable[[str], None] | None = None) -> Path:
    """The NetBox tree (rootfs, venv, configuration, migrated database); built once, cached.

    ``progress`` gets one line per step with its time. Callers must not write to the
    returned tree: :func:`running_netbox` runs it on an overlay.
    """
    say = progress or (lambda line: None)
    started = time.monotonic()
    base = trixie.build_tree(cache_dir)
    say(f"rootfs {base.name}: {time.monotonic() - started:.1f} s")
    cache = (cache_dir or paths.cache_dir()) / "netbox"
    out = cache / netbox_key(base)
    if out.is_dir() and not rebuild:
        return out
    with paths.build_lock(out):
        if not out.is_dir() or rebuild:
            _build(base, out, say, rebuild=rebuild)
    return out


def _build(base: Path, out: Path, say: Callable[[str], None], *, rebuild: bool) -> None:
    rootfs._require("unshare", "util-linux")
    cache = out.parent
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache, prefix=f".build-{os.getpid()}-"))
    try:
        root = work / "root"
        _timed(say, "copy of the rootfs", lambda: rootfs._run(
            ["cp", "-a", "--reflink=auto", str(base), str(root)], f"cp -a {base}"))
        _write_root_files(root)
        _timed(say, f"pip install netbox=={NETBOX_VERSION}", lambda: _run_helper(
            root, ["install", NETBOX_VERSION], f"pip install netbox=={NETBOX_VERSION}",
            ca=_ca_bundle()))
        _timed(say, "initdb, netbox migrate, superuser and tokens",
               lambda: _run_helper(root, ["migrate"], "netbox migrate"))
        for line in _build_record(root):
            say(f"  {line}")
        rootfs._commit(root, out, replace=rebuild)
    finally:
        rootfs._remove_tree(work)


def _timed(say: Callable[[str], None], what: str, step: Callable[[], None]) -> None:
    started = time.monotonic()
    step()
    say(f"{what}: {time.monotonic() - started:.1f} s")


def _build_record(root: Path) -> list[str]:
    """The helper's "step: N s" lines, kept in the tree (testbed/build-times.txt)."""
    return (root / HELPER.lstrip("/")).with_name("build-times.txt").read_text().splitlines()


def _write_root_files(root: Path) -> None:
    for dest, text in ROOT_FILES.items():
        path = root / dest.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755 if dest == HELPER else 0o644)


def _ca_bundle() -> str:
    """The host's CA bundle for pip in the tree ('' = pip's own): it knows local CAs."""
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    return str(bundle) if bundle.is_file() else ""


def _run_helper(root: Path, args: list[str], what: str, *, ca: str = "") -> None:
    argv = [*_enter_root_argv(root, ca=ca), *_root_env(pip_cert=bool(ca)), HELPER, *args]
    rootfs._run(argv, what)


def _enter_root_argv(root: Path, *, lower: Path | None = None, upper: Path | None = None,
                     work: Path | None = None, ca: str = "") -> list[str]:
    """``unshare`` into fresh mount and pid namespaces that chroot into ``root``.

    With ``lower``, ``root`` is first mounted as an overlay of ``lower`` (read-only to
    us) with ``upper``/``work`` taking the writes.
    """
    if lower is not None:
        for path in (lower, upper, work):
            if any(c in str(path) for c in ",:\\"):
                raise NetBoxError(f"{path}: an overlayfs path cannot contain ',', ':' or '\\'")
    return ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
            "--kill-child", "/bin/sh", "-c", ENTER_ROOT, "netbox-enter-root", str(root),
            str(lower or ""), str(upper or ""), str(work or ""), ca]


def _root_env(*, pip_cert: bool = False) -> list[str]:
    """``env -i`` and what the tree's processes get: none of the host's settings."""
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME=/root", "LANG=C.UTF-8", f"NETBOX_ROOT={NETBOX_ROOT}",
           f"WORKERS={GUNICORN_WORKERS}", f"THREADS={GUNICORN_THREADS}",
           "PIP_DISABLE_PIP_VERSION_CHECK=1"]
    if pip_cert:
        env.append("PIP_CERT=/tmp/ca-certificates.crt")
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "NO_PROXY", "PIP_INDEX_URL"):
        if name in os.environ:
            env.append(f"{name}={os.environ[name]}")
    return ["/usr/bin/env", "-i", *env]


# --- the running server ----------------------------------------------------------------

@contextlib.contextmanager
def running_netbox(workdir: Path, *, address: str = "127.0.0.1", wrap: Sequence[str] = (),
                   port: int | None = None, cache_dir: Path | None = None) -> Iterator[NetBox]:
    """Start NetBox (under ``wrap``, e.g. ip netns exec NS) on ``address:port``; wait for it.

    ``workdir`` gets the overlay's upper dir (the database's changes) and ``netbox.log``.
    The first call builds the cached tree (minutes, see :func:`build_netbox_root`).
    """
    # absolute paths: entering a mount namespace (nsenter -m) moves the cwd to its root
    tree = build_netbox_root(cache_dir).resolve()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    layers = {name: workdir / name for name in ("root", "upper", "work")}
    for path in layers.values():
        path.mkdir(exist_ok=True)
    port = port or _free_port(address, wrap)
    server = NetBox(url=_url(address, port), token=TOKEN, directory=workdir)
    argv = _enter_root_argv(layers["root"], lower=tree, upper=layers["upper"],
                            work=layers["work"])
    # Not marked VMTESTBED_OWNER (like pdns): a session's server outlives the leak check
    # of tests/testbed/test_zz_leaks.py; its pid namespace is what proves it stopped.
    with server.log.open("ab") as log:
        server.process = subprocess.Popen(
            [*wrap, *argv, *_root_env(), HELPER, "serve", address, str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        server.pid_namespace = _pid_namespace_below(server.process)
        _wait_ready(server, wrap)
        yield server
    finally:
        server.stop()


def _url(address: str, port: int) -> str:
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


_FREE_PORT = ("import socket, sys; s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] "
              "else socket.AF_INET); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])")


def _free_port(address: str, wrap: Sequence[str]) -> int:
    """A port free on ``address`` where the server will listen (inside ``wrap``)."""
    if not wrap:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family) as sock:
            sock.bind((address, 0))
            return int(sock.getsockname()[1])
    found = subprocess.run([*wrap, "python3", "-c", _FREE_PORT, address], capture_output=True,
                           text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
    if found.returncode:
        raise NetBoxError(f"no free port on {address} under {list(wrap)}: {found.stderr[-500:]}")
    return int(found.stdout)


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    """``sig`` to the session we started (start_new_session: its group id is its pid)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _pid_namespace_below(process: subprocess.Popen[bytes], timeout: float = 10.0) -> str:
    """The pid namespace of the first descendant of ``process`` not in ours (unshare's child)."""
    ours = os.readlink("/proc/self/ns/pid")
    end = time.monotonic() + timeout
    while time.monotonic() < end and process.poll() is None:
        for pid in _descendants(process.pid):
            with contextlib.suppress(OSError):
                namespace = os.readlink(f"/proc/{pid}/ns/pid")
                if namespace != ours:
                    return namespace
        time.sleep(0.02)
    return ""  # exited already: _wait_ready reports it with the log


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _pids_in_namespace(namespace: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "pid") == namespace:
                    pids.append(int(entry.name))
    return sorted(pids)


def _wait_ready(server: NetBox, wrap: Sequence[str], timeout: float = READY_TIMEOUT) -> None:
    """Until GET /api/status/ answers with the token; the log's tail if it never does."""
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        if server.process is not None and server.process.poll() is not None:
            raise NetBoxError(f"NetBox exited (exit {server.process.returncode}); "
                              f"{server.log}:\n{server.log_tail()}")
        try:
            api(server, "GET", "/api/status/", wrap=wrap, timeout=10.0)
            return
        except NetBoxError as err:
            last = err
        time.sleep(0.3)
    raise NetBoxError(f"NetBox did not answer in {timeout:.0f} s: {last}\n"
                      f"{server.log}:\n{server.log_tail()}")


# One request, from inside the namespace: the request comes on stdin (the token stays out
# of argv); an HTTP error exits 1 with its status and body on stderr.
_API_SCRIPT = r"""
import json, sys, urllib.error, urllib.request
req = json.load(sys.stdin)
body = json.dumps(req["body"]).encode() if req["body"] is not None else None
request = urllib.request.Request(req["url"], method=req["method"], data=body, headers={
    "Authorization": req["auth"], "Accept": "application/json",
    "Content-Type": "application/json"})
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
try:
    with opener.open(request, timeout=req["timeout"]) as answer:
        raw = answer.read()
except urllib.error.HTTPError as err:
    sys.exit(f"HTTP {err.code} {err.reason}: {err.read().decode(errors='replace')[:3000]}")
except OSError as err:
    sys.exit(f"{type(err).__name__}: {err}")
print(raw.decode() or "null")
"""


def api(server: NetBox, method: str, path: str, body: object = None,
        wrap: Sequence[str] = (), *, token: str | None = None, timeout: float = 30.0) -> Any:
    """One NetBox REST call, made under ``wrap``; the decoded JSON (None for 204).

    ``token`` overrides the server's v1 token; one starting with ``nbt_`` goes as
    ``Bearer``, any other as ``Token``, as pynetbox sends them.
    """
    secret = token if token is not None else server.token
    scheme = "Bearer" if secret.startswith("nbt_") else "Token"
    request = {"method": method, "url": server.url + path, "auth": f"{scheme} {secret}",
               "body": body, "timeout": timeout}
    try:
        done = subprocess.run([*wrap, "python3", "-c", _API_SCRIPT], input=json.dumps(request),
                              capture_output=True, text=True, timeout=timeout + 15,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise NetBoxError(f"NetBox API {method} {path}: no answer in {timeout:.0f} s") from exc
    if done.returncode:
        raise NetBoxError(f"NetBox API {method} {path}: {done.stderr.strip()[-3000:]}")
    return json.loads(done.stdout)
