"""netbox action: the fault shapes a real NetBox does not produce on demand, against a FAKE.

Everything NetBox itself decides is tested against a real NetBox 4.7
(tests/actions/test_netbox.py). A NetBox that accepts the connection and then stalls
every answer is what tests/helpers/netbox_fake.py adds here; a NetBox that is not
there at all needs no server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vmtestbed.pdns import free_port

from hookpack.emulator import run_hooks
from tests.helpers.entries import actions_entry
from tests.helpers.ganeti_env import instance_env
from tests.helpers.netbox_fake import FakeNetBox

NAME = "inst1.example.test"


@pytest.fixture
def netbox():
    with FakeNetBox() as fake:
        fake.add("virtualization/clusters", name="cluster1.example.test")
        yield fake


def install(tmp_path: Path, write_config, install_hooks, url: str, token: str) -> Path:
    token_file = tmp_path / "netbox.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    return install_hooks(write_config(
        f'[node]\nfqdn = "node1.example.test"\n\n[netbox]\nenabled = true\n'
        f'url = "{url}"\ntoken_file = "{token_file}"\ncluster = "cluster1.example.test"\n'
        'timeout = 1.0\n'))


def hook_line(root: Path) -> str:
    [result] = actions_entry(run_hooks(root, "instance-add", "post", instance_env(
        "instance-add", "post", NAME, ["198.51.100.21"])))
    assert result.status == "success"  # a post hook: the failure is logged, not returned
    [line] = result.output.splitlines()
    return line


def test_a_netbox_that_stalls_fails_cleanly_within_the_timeout(netbox, tmp_path,
                                                                write_config, install_hooks):
    netbox.delay = 2.0  # longer than the 1 s timeout
    root = install(tmp_path, write_config, install_hooks, netbox.url, netbox.token)
    line = hook_line(root)
    assert f"hookpack netbox: {NAME}: failed: NetBox did not answer in time" in line, line


def test_an_unreachable_netbox_fails_cleanly(tmp_path, write_config, install_hooks):
    root = install(tmp_path, write_config, install_hooks, f"http://127.0.0.1:{free_port()}",
                   "0123456789abcdef0123456789abcdef01234567")
    line = hook_line(root)
    assert f"hookpack netbox: {NAME}: failed: NetBox unreachable (cluster lookup): " \
        "ConnectionError" in line, line
