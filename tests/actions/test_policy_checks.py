"""policy's external checks through the hooks-runner emulator.

DNS: a real PowerDNS (Debian pdns-server, sqlite3) on loopback. NetBox: a NetBox that
stalls, the local FAKE in tests/helpers/netbox_fake.py (the check against a real NetBox
is in tests/actions/test_netbox.py).
"""

from __future__ import annotations

import io
import re
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vmtestbed import pdns

from hookpack.adapters.powerdns import Change
from hookpack.dispatch import dispatch
from hookpack.emulator import pre_aborts, run_hooks
from hookpack.errors import BadInput
from hookpack.result import Outcome
from hookpack.validate import instance_name
from tests.helpers.entries import actions_entry
from tests.helpers.ganeti_env import instance_env
from tests.helpers.netbox_fake import FakeNetBox

# A real pdns_server (scripts/setup installs it): a missing one fails, never skips.
needs_pdns = pytest.mark.slow
NAME = "inst1.example.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if pdns.available():
        pytest.fail(pdns.available())
    with pdns.running_pdns(tmp_path_factory.mktemp("pdns-policy")) as srv:
        client = srv.client()
        client.create_zone("example.test.", ["ns1.example.test."])
        client.patch("example.test.", [
            Change("example.test.", "taken.example.test.", "A", "REPLACE", ("198.51.100.77",),
                   300, "taken.example.test"),
            Change("example.test.", "same.example.test.", "A", "REPLACE", ("198.51.100.21",),
                   300, "same.example.test"),
            Change("example.test.", "alias.example.test.", "CNAME", "REPLACE",
                   ("www.example.test.",), 300, "x"),
        ])
        yield srv


@pytest.fixture
def blackhole():
    """A TCP port that accepts connections and never answers (a hung API)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def policy_hooks(tmp_path, write_config, install_hooks):
    def install(policy: str, dns_url: str = "", netbox_url: str = "", key: str = "k",
                deadline: float = 10.0, dns_timeout: float = 1.0) -> Path:
        keyfile = tmp_path / "key"
        keyfile.write_text(key)
        keyfile.chmod(0o600)
        config = write_config(
            f'[hook]\ndeadline = {deadline}\n\n[node]\nfqdn = "node1.example.test"\n\n'
            f"[policy]\nenabled = true\n{policy}\n\n"
            f'[dns]\napi_url = "{dns_url or "http://127.0.0.1:9"}"\n'
            f'api_key_file = "{keyfile}"\nforward_zones = ["example.test"]\n'
            f"timeout = {dns_timeout}\n\n"
            f'[netbox]\nurl = "{netbox_url}"\ntoken_file = "{keyfile}"\ntimeout = 1.0\n')
        return install_hooks(config)
    return install


def pre(root: Path, name: str, ips: list[str], hpath: str = "instance-add",
        new_name: str | None = None) -> tuple[bool, str]:
    environ = instance_env(hpath, "pre", name, ips, after_name=new_name)
    results = actions_entry(run_hooks(root, hpath, "pre", environ))
    [line] = results[0].output.splitlines()
    return pre_aborts(results), line


@needs_pdns
def test_dns_conflict_vetoes_with_one_line(server, policy_hooks):
    root = policy_hooks("dns_check = true", dns_url=server.url, key=server.api_key)
    aborted, line = pre(root, "taken.example.test", ["198.51.100.21"])
    assert aborted
    assert line.startswith("hookpack policy: taken.example.test: veto: DNS already has "
                           "taken.example.test -> 198.51.100.77, an address the instance "
                           "will not use (instance-add/pre, 0 changes, ")
    aborted, line = pre(root, "alias.example.test", ["198.51.100.21"])
    assert aborted and "veto: DNS already has alias.example.test as an alias of " \
                       "www.example.test." in line
    # The same address the instance will use, a free name, a name outside the zones: allowed.
    for name in ("same.example.test", "free.example.test", "db1.other.test"):
        aborted, line = pre(root, name, ["198.51.100.21"])
        assert not aborted, line
        assert f": nochange: name '{name}' allowed (" in line


@needs_pdns
def test_rename_checks_the_new_name(server, policy_hooks):
    root = policy_hooks("dns_check = true", dns_url=server.url, key=server.api_key)
    aborted, line = pre(root, NAME, ["198.51.100.21"], hpath="instance-rename",
                        new_name="taken.example.test")
    assert aborted and "DNS already has taken.example.test -> 198.51.100.77" in line
    aborted, _ = pre(root, NAME, ["198.51.100.21"], hpath="instance-rename",
                     new_name="same.example.test")
    assert not aborted


@pytest.mark.parametrize("closed", [False, True])
def test_dns_unreachable_fails_open_with_a_warning_or_closed(policy_hooks, closed):
    dead = f"http://127.0.0.1:{pdns.free_port()}"
    root = policy_hooks(f"dns_check = true\ndns_fail_closed = {str(closed).lower()}",
                        dns_url=dead)
    aborted, line = pre(root, NAME, ["198.51.100.21"])
    assert aborted is closed
    if closed:
        assert f": veto: cannot check DNS for '{NAME}', refusing (fail closed): PowerDNS " \
               "API at 127.0.0.1:" in line
    else:
        assert f": nochange: name '{NAME}' allowed; warning: DNS not checked (fail open): " \
               "PowerDNS API at 127.0.0.1:" in line


@needs_pdns
def test_dns_check_with_the_server_stopped(tmp_path, policy_hooks):
    """A real server that answered a moment ago and is gone now."""
    with pdns.running_pdns(tmp_path / "pdns") as srv:
        srv.client().create_zone("example.test.", [])
        url, key = srv.url, srv.api_key
        root = policy_hooks("dns_check = true\ndns_fail_closed = true", dns_url=url, key=key)
        assert not pre(root, NAME, ["198.51.100.21"])[0]
    aborted, line = pre(root, NAME, ["198.51.100.21"])
    assert aborted and "refusing (fail closed)" in line and "unreachable" in line


@pytest.mark.parametrize("closed", [False, True])
def test_hung_dns_is_decided_by_the_policy_before_the_deadline(policy_hooks, blackhole,
                                                               closed):
    # The configured timeout (30 s) is longer than the deadline (2 s): the check must be
    # cut short by the deadline so the policy, not the watchdog, decides.
    root = policy_hooks(f"dns_check = true\ndns_fail_closed = {str(closed).lower()}",
                        dns_url=blackhole, deadline=2.0, dns_timeout=30.0)
    aborted, line = pre(root, NAME, ["198.51.100.21"])
    assert aborted is closed
    assert "did not answer within" in line
    assert "abandoned" not in line and ": timeout:" not in line


def test_netbox_that_stalls_is_passed_over_when_fail_open(policy_hooks, tmp_path):
    """Known and unknown names: tests/actions/test_netbox.py, against a real NetBox."""
    with FakeNetBox() as netbox:  # a FAKE NetBox that stalls: see tests/helpers/netbox_fake.py
        netbox.add("virtualization/clusters", name="cluster1.example.test")
        netbox.add("virtualization/virtual-machines", name="known.example.test", cluster=1)
        root = policy_hooks("netbox_require_known = true", netbox_url=netbox.url,
                            key=netbox.token)
        assert not pre(root, "known.example.test", [])[0]
        netbox.delay = 2.0
        aborted, line = pre(root, "known.example.test", [])
        assert not aborted and "warning: NetBox not checked (fail open): NetBox did not " \
                               "answer in time" in line


def test_netbox_unreachable_fail_closed(policy_hooks):
    root = policy_hooks("netbox_require_known = true\nnetbox_fail_closed = true",
                        netbox_url=f"http://127.0.0.1:{pdns.free_port()}")
    aborted, line = pre(root, NAME, [])
    assert aborted and ": veto: cannot check NetBox for 'inst1.example.test', refusing " \
                       "(fail closed): NetBox unreachable" in line


def test_name_pattern_still_vetoes_before_any_external_check(policy_hooks, blackhole):
    root = policy_hooks("name_pattern = '^web[0-9]+\\.example\\.test$'\ndns_check = true",
                        dns_url=blackhole, dns_timeout=5.0)
    aborted, line = pre(root, "db1.example.test", ["198.51.100.21"])
    assert aborted and "does not match the site rule" in line


# --- hostile names, in process (the dispatcher, without the emulator's process) ------

@pytest.fixture(scope="module")
def pattern_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "hookpack.toml"
    dead = f"http://127.0.0.1:{pdns.free_port()}"
    key = path.parent / "key"
    key.write_text("k")
    key.chmod(0o600)
    path.write_text(
        '[log]\nsyslog = false\n\n[node]\nfqdn = "node1.example.test"\n\n'
        "[policy]\nenabled = true\nname_pattern = '^[a-z][a-z0-9-]*\\.example\\.test$'\n"
        f'dns_check = true\n\n[dns]\napi_url = "{dead}"\napi_key_file = "{key}"\n'
        'forward_zones = ["example.test"]\ntimeout = 0.5\n')
    path.chmod(0o600)
    return path


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(
    st.text(min_size=1, max_size=80),
    st.from_regex(r"[a-z][a-z0-9-]{0,10}\.example\.test", fullmatch=True),
    st.sampled_from(["../../etc/passwd", "a b.example.test", "x.example.test\nGANETI_X=1",
                     "$(reboot).example.test", "x" * 300, "-rf.example.test",
                     "ok.example.test.", "\x00.example.test"])))
def test_any_name_gets_exactly_one_clear_verdict(pattern_config, name):
    environ = instance_env("instance-add", "pre", "placeholder.example.test", [])
    environ["GANETI_INSTANCE_NAME"] = name
    stream = io.StringIO()
    run = dispatch(environ, config=pattern_config, stream=stream)
    [action] = run.runs
    matches = re.fullmatch(r"[a-z][a-z0-9-]*\.example\.test", name) is not None
    try:
        instance_name(name)
        host_name = True
    except BadInput:
        host_name = False
    allowed = matches and host_name
    if allowed:
        # DNS is unreachable: fail open, with a warning.
        assert action.result.outcome is Outcome.NOCHANGE and "warning" in action.result.message
        assert run.exit_code == 0
    else:
        assert action.result.outcome is Outcome.VETO, action.result
        reason = "does not match the site rule" if not matches else "is not a valid host name"
        assert reason in action.result.message
        assert run.exit_code == 1
    assert "internal error" not in stream.getvalue()
    assert len(stream.getvalue().splitlines()) == 1
