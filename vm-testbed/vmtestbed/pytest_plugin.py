"""pytest fixtures for tests against real QEMU guests and network namespaces.

Register with ``pytest_plugins = ["vmtestbed.pytest_plugin"]`` in a conftest.

- ``guest_image`` (session): the cached :class:`~vmtestbed.guest.GuestImage`.
- ``netnode``: a fresh :class:`~vmtestbed.netnode.NetNode` per test.
- ``kvmnode``: a :class:`~vmtestbed.kvmnode.KvmNode` on a fresh root dir, wired to
  ``netnode``.
- ``boot_guest``: ``boot_guest(name=None, **start_instance_kwargs)`` boots a guest
  with one NIC and one 64 MiB file disk unless told otherwise.
- ``netbox_server`` (session): a real NetBox 4.7 on loopback in the host's namespaces
  (:func:`vmtestbed.netbox.running_netbox`), shared by every test that asks for it:
  give the objects you create names of your own. The first use builds the cached tree.
- ``leak_baseline`` (session, autouse): snapshot of testbed objects when the
  session starts; at its end anything new of this process is an error.

Everything is torn down in finalizers, so also when a test fails or is
interrupted. When a test fails, the guest consoles are printed in its report.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmtestbed import host, leaks
from vmtestbed.disks import DiskSpec, FileDisk
from vmtestbed.guest import GuestImage, build_guest_image
from vmtestbed.kvmnode import KvmNode, NicSpec, RunningInstance
from vmtestbed.netbox import NetBox, running_netbox
from vmtestbed.netnode import NetNode

BootGuest = Callable[..., RunningInstance]


def pytest_configure(config: pytest.Config) -> None:
    # CI runners stop a job with SIGTERM; pytest tears fixtures down only on
    # KeyboardInterrupt, so turn the one into the other (unless someone else
    # already handles SIGTERM).
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session", autouse=True)
def leak_baseline() -> Iterator[leaks.Snapshot]:
    """Objects of this process before the session; checked again at its end."""
    before = leaks.snapshot(owner=host.owner_tag())
    yield before
    left = leaks.snapshot(owner=host.owner_tag()) - before
    if left:
        pytest.fail(f"vm-testbed: the test session leaked {left.describe()}", pytrace=False)


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    return build_guest_image()


@pytest.fixture(scope="session")
def netbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetBox]:
    with running_netbox(tmp_path_factory.mktemp("netbox")) as server:
        yield server


@pytest.fixture
def netnode() -> Iterator[NetNode]:
    with NetNode() as node:
        yield node


@pytest.fixture
def kvmnode(netnode: NetNode, guest_image: GuestImage,
            request: pytest.FixtureRequest) -> Iterator[KvmNode]:
    # Short root path: unix socket paths must stay under 108 bytes, and pytest's
    # tmp_path (/tmp/pytest-of-root/pytest-N/<test name>/...) does not.
    root = Path(tempfile.mkdtemp(prefix=f"{host.NAME_PREFIX}{host.owner_tag()}-"))
    node = KvmNode(root, netnode=netnode, image=guest_image)
    try:
        yield node
    finally:
        try:
            _report_consoles(request, node)
            node.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def boot_guest(kvmnode: KvmNode) -> BootGuest:
    counter = iter(range(1000))

    def boot(name: str | None = None, **kwargs: Any) -> RunningInstance:
        kwargs.setdefault("nics", [NicSpec()])
        kwargs.setdefault("disks", [DiskSpec(FileDisk(size_mib=64))])
        return kvmnode.start_instance(name or f"guest{next(counter)}.example.test", **kwargs)

    return boot


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_failed_key] = report.failed
    return report


_failed_key = pytest.StashKey[bool]()


def _report_consoles(request: pytest.FixtureRequest, node: KvmNode) -> None:
    if not request.node.stash.get(_failed_key, False):
        return
    for log in sorted((node.root / "log" / "kvm").glob("*.console")):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        print(f"--- console of {log.stem} (last 40 lines) ---\n{tail}")
