"""vmtestbed.netbox: a REAL NetBox 4.7 (PyPI's wheel on Debian 13's Python, PostgreSQL 17,
Redis) started from its cached tree, on loopback and in a network namespace of its own.

The loopback tests use the session's ``netbox_server`` fixture (vmtestbed.pytest_plugin);
the namespace test starts and stops a second server itself, and proves that its processes
lived in that namespace, that none of them outlives the context and that the cached tree
was not written to. Nothing here skips: a missing tool or package fails the test.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pynetbox
import pytest
from vmtestbed import host, netbox

pytestmark = [pytest.mark.netns, pytest.mark.slow]

_names = itertools.count(1)


def _name(kind: str) -> str:
    """Names of this test module's own: the server is shared with other tests."""
    return f"nbtest-{os.getpid()}-{kind}-{next(_names)}"


def _make_vm(server: netbox.NetBox, wrap: list[str] | None = None) -> dict[str, Any]:
    """A cluster type, a cluster and a VM in it, over plain REST; the VM as NetBox answered."""
    def call(method: str, path: str, body: Any = None) -> Any:
        return netbox.api(server, method, path, body, wrap=wrap or [])

    slug = _name("type")
    ctype = call("POST", "/api/virtualization/cluster-types/", {"name": slug, "slug": slug})
    cluster = call("POST", "/api/virtualization/clusters/",
                   {"name": _name("cluster"), "type": ctype["id"]})
    return dict(call("POST", "/api/virtualization/virtual-machines/", {
        "name": _name("vm") + ".example.test", "cluster": cluster["id"], "status": "active",
        "vcpus": 2, "memory": 2048, "comments": "made by test_netbox_server"}))


def _assert_read_back(server: netbox.NetBox, made: dict[str, Any],
                      wrap: list[str] | None = None) -> None:
    got = netbox.api(server, "GET", f"/api/virtualization/virtual-machines/{made['id']}/",
                     wrap=wrap or [])
    assert (got["name"], got["cluster"]["id"], got["status"]["value"], got["memory"]) == (
        made["name"], made["cluster"]["id"], "active", 2048)
    assert float(got["vcpus"]) == 2
    listed = netbox.api(server, "GET", "/api/virtualization/virtual-machines/?name="
                        + made["name"], wrap=wrap or [])
    assert [vm["id"] for vm in listed["results"]] == [made["id"]]


def test_status_names_the_real_netbox(netbox_server):
    status = netbox.api(netbox_server, "GET", "/api/status/")
    assert status["netbox-version"] == netbox.NETBOX_VERSION
    assert status["python-version"].startswith("3.13")
    assert status["django-version"].startswith("6.")
    assert status["rq-workers-running"] == 0  # answered from Redis: no worker is started


def test_rest_cluster_and_vm_are_kept_and_read_back(netbox_server):
    _assert_read_back(netbox_server, _make_vm(netbox_server))


def test_concurrent_requests_are_all_answered(netbox_server):
    def status(_: int) -> str:
        return str(netbox.api(netbox_server, "GET", "/api/status/")["netbox-version"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(status, range(24))) == {netbox.NETBOX_VERSION}


def test_a_wrong_token_is_refused_with_netbox_s_answer(netbox_server):
    with pytest.raises(netbox.NetBoxError, match=r"HTTP 403 .*Invalid v1 token"):
        netbox.api(netbox_server, "GET", "/api/status/", token="x" * 40)


@pytest.mark.parametrize("which, scheme", [("token", "Token"), ("token_v2", "Bearer")])
def test_pynetbox_works_with_the_token(netbox_server, which, scheme):
    """pynetbox 7.8 (the action's client) sends a v1 token as `Token`, a v2 one as `Bearer`."""
    nb = pynetbox.api(netbox_server.url, token=getattr(netbox_server, which))
    nb.http_session.trust_env = False  # never a proxy to loopback
    sent: list[str] = []
    nb.http_session.hooks["response"].append(
        lambda answer, *args, **kwargs: sent.append(
            answer.request.headers["Authorization"].split()[0]))
    slug = _name("pynetbox")
    ctype = nb.virtualization.cluster_types.create(name=slug, slug=slug)
    cluster = nb.virtualization.clusters.create(name=_name("cluster"), type=ctype.id)
    vm = nb.virtualization.virtual_machines.create(name=_name("vm"), cluster=cluster.id,
                                                   vcpus=1, memory=512)
    again = nb.virtualization.virtual_machines.get(vm.id)
    assert (again.name, again.cluster.name, again.memory) == (vm.name, cluster.name, 512)
    assert nb.status()["netbox-version"] == netbox.NETBOX_VERSION
    assert set(sent) == {scheme}


def test_pynetbox_with_a_wrong_token_gets_403(netbox_server):
    nb = pynetbox.api(netbox_server.url, token="y" * 40)
    nb.http_session.trust_env = False
    with pytest.raises(pynetbox.RequestError) as err:
        nb.virtualization.clusters.count()
    assert err.value.req.status_code == 403


_PYNETBOX_IN_NAMESPACE = """
import json, sys
import pynetbox
req = json.load(sys.stdin)
nb = pynetbox.api(req["url"], token=req["token"])
nb.http_session.trust_env = False
vm = nb.virtualization.virtual_machines.get(req["id"])
print(json.dumps({"name": vm.name, "version": nb.status()["netbox-version"]}))
"""


@pytest.fixture
def fresh_netns():
    name = host.unique_name("nb")
    host.run(["ip", "netns", "add", name])
    try:
        host.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])
        yield name
    finally:
        host.run(["ip", "netns", "del", name], check=False)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _state_of_cache(tree: Path) -> tuple[int, ...]:
    """mtimes of files the server writes (through its overlay) at start and stop."""
    data = tree / "var/lib/netbox/postgresql"
    return tuple((data / f).stat().st_mtime_ns for f in ("global/pg_control", "postmaster.opts"))


def test_in_a_fresh_network_namespace_and_nothing_survives(tmp_path, fresh_netns,
                                                           record_property):
    wrap = host.netns_argv(fresh_netns, [])
    tree = netbox.build_netbox_root()
    cache_before = _state_of_cache(tree)
    started = time.monotonic()
    with netbox.running_netbox(tmp_path / "netbox", wrap=wrap) as server:
        up = time.monotonic() - started
        pids = server.processes()
        names = {_comm(pid) for pid in pids}
        assert {"postgres", "redis-server", "gunicorn"} <= names, names
        netns_inode = os.stat(f"/run/netns/{fresh_netns}").st_ino
        for pid in pids:
            assert os.stat(f"/proc/{pid}/ns/net").st_ino == netns_inode, (pid, _comm(pid))
        made = _make_vm(server, wrap)
        _assert_read_back(server, made, wrap)
        seen = subprocess.run([*wrap, sys.executable, "-c", _PYNETBOX_IN_NAMESPACE],
                              input=json.dumps({"url": server.url, "token": server.token,
                                                "id": made["id"]}),
                              capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(seen.stdout) == {"name": made["name"],
                                           "version": netbox.NETBOX_VERSION}
        stopping = time.monotonic()
    down = time.monotonic() - stopping
    record_property("netbox_start_s", round(up, 1))
    record_property("netbox_stop_s", round(down, 1))
    print(f"NetBox in a netns: up in {up:.1f} s, stopped in {down:.1f} s")
    assert server.process is None
    # the exact check: no process is left in the server's pid namespace
    assert server.processes() == [], [(pid, _comm(pid)) for pid in server.processes()]
    assert _state_of_cache(tree) == cache_before, "the cached tree was written to"
    assert "Booting worker" in server.log.read_text()


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                children = {int(c) for c in task.read_text().split()}
                todo += list(children - found)
                found |= children
    return found


def test_serve_stops_netbox_on_sigterm(tmp_path):
    """`vm-testbed netbox serve` killed with SIGTERM (kill, timeout, a service manager)
    stops PostgreSQL, Redis and gunicorn as Ctrl-C does."""
    serve = subprocess.Popen([sys.executable, "-m", "vmtestbed.netbox_cli", "serve"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONPATH": str(netbox.paths.TESTBED_DIR)})
    try:
        assert serve.stdout is not None
        first = serve.stdout.readline()
        assert "(up in " in first, first
        server_pids = _descendants(serve.pid)
        assert {"postgres", "redis-server", "gunicorn"} <= {_comm(p) for p in server_pids}
        serve.terminate()
        assert serve.wait(30) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(10)
    left = [(pid, _comm(pid)) for pid in server_pids if _comm(pid)]
    assert left == [], left
