"""A gate that stays closed: with dns_fail_closed / netbox_fail_closed every failure of
the check vetoes; only a completed check that finds nothing wrong lets the name through.

DNS: a real PowerDNS (Debian pdns-server); a timeout is the real server stopped with
SIGSTOP (the kernel still accepts the connection, nothing answers). Name resolution: the
hook entry run in an empty network namespace (`unshare -n`, loopback down), where the
API's host name cannot be resolved and no packet leaves. An unexpected exception and a
check that ignores its own timeout cannot be produced by a real server: those two are
injected in process (monkeypatched), and the tests say so. NetBox: the local FAKE
(tests/helpers/netbox_fake.py) for a NetBox that stalls, which a real one does not do on
demand.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time

import pytest
from vmtestbed import pdns

from hookpack import registry
from hookpack.dispatch import dispatch
from hookpack.hooksinstall import ENTRY_NAME
from hookpack.result import Outcome
from tests.actions.test_policy_checks import NAME, policy_hooks, pre  # noqa: F401
from tests.helpers.ganeti_env import instance_env
from tests.helpers.netbox_fake import FakeNetBox

IPS = ["198.51.100.21"]


@pytest.fixture(scope="module")
def live_pdns(tmp_path_factory):
    if pdns.available():
        pytest.fail(pdns.available())
    with pdns.running_pdns(tmp_path_factory.mktemp("pdns-gate")) as srv:
        srv.client().create_zone("example.test.", ["ns1.example.test."])
        yield srv


@pytest.mark.slow
def test_a_stopped_pdns_times_out_and_vetoes_then_a_completed_check_allows(
        live_pdns, policy_hooks):  # noqa: F811 - the fixture, imported
    closed = policy_hooks("dns_check = true\ndns_fail_closed = true", dns_url=live_pdns.url,
                          key=live_pdns.api_key, dns_timeout=0.5)
    aborted, line = pre(closed, NAME, IPS)  # it answers now
    assert not aborted, line
    os.kill(live_pdns.process.pid, signal.SIGSTOP)
    try:
        aborted, line = pre(closed, NAME, IPS)
        assert aborted, line
        assert f": veto: cannot check DNS for '{NAME}', refusing (fail closed): PowerDNS API " \
               "at 127.0.0.1:" in line and "did not answer within 0.5 s" in line
    finally:
        os.kill(live_pdns.process.pid, signal.SIGCONT)
    aborted, line = pre(closed, NAME, IPS)
    assert not aborted and f": nochange: name '{NAME}' allowed (" in line


@pytest.mark.netns
@pytest.mark.parametrize("closed", [True, False])
def test_the_api_name_not_resolving_vetoes_when_closed(policy_hooks, closed):  # noqa: F811
    root = policy_hooks(f"dns_check = true\ndns_fail_closed = {str(closed).lower()}",
                        dns_url="http://pdns-api.example.test:8081")
    entry = root / "instance-add-pre.d" / ENTRY_NAME
    environ = {**instance_env("instance-add", "pre", NAME, IPS),
               "PATH": "/sbin:/bin:/usr/sbin:/usr/bin"}
    start = time.monotonic()
    done = subprocess.run(["unshare", "--net", str(entry)], env=environ, cwd="/",
                          capture_output=True, text=True, timeout=60)
    [line] = done.stderr.splitlines()
    assert "pdns-api.example.test" in line and "name resolution" in line, line
    if closed:
        assert done.returncode == 1 and ": veto: cannot check DNS for" in line
    else:
        assert done.returncode == 0 and "warning: DNS not checked (fail open)" in line
    assert time.monotonic() - start < 30


def _in_process(write_config, policy: str, monkeypatch, fault, *, deadline: float = 3.0,
                actions: tuple[registry.ActionSpec, ...] = registry.ACTIONS):
    """One pre hook run in this process, with ``fault`` replacing the named check."""
    key = write_config().parent / "key"
    key.write_text("k")
    key.chmod(0o600)
    config = write_config(
        f'[hook]\ndeadline = {deadline}\n\n[node]\nfqdn = "node1.example.test"\n\n'
        f"[policy]\nenabled = true\n{policy}\n\n"
        f'[dns]\napi_url = "http://127.0.0.1:9"\napi_key_file = "{key}"\n'
        'forward_zones = ["example.test"]\ntimeout = 30\n\n'
        f'[netbox]\nurl = "http://127.0.0.1:9"\ntoken_file = "{key}"\ntimeout = 30\n')
    from hookpack.actions.policy import action as policy

    for target, replacement in fault.items():
        monkeypatch.setattr(policy, target, replacement)
    stream = io.StringIO()
    run = dispatch(instance_env("instance-add", "pre", NAME, IPS), config=config,
                   stream=stream, actions=actions)
    return run, stream.getvalue()


def _boom(ctx, name):
    raise ZeroDivisionError("division by zero")


def _ignores_its_timeout(ctx, name):
    time.sleep(30)
    return ""


@pytest.mark.parametrize("what,on,check", [("DNS", "dns_check", "_dns_conflict"),
                                           ("NetBox", "netbox_require_known",
                                            "_netbox_unknown")])
@pytest.mark.parametrize("closed", [True, False])
def test_an_unexpected_exception_in_the_check(write_config, monkeypatch, what, on, check,
                                              closed):
    """INJECTED fault (monkeypatched check): a bug in the check, not a service error."""
    fail = "dns_fail_closed" if what == "DNS" else "netbox_fail_closed"
    run, out = _in_process(write_config, f"{on} = true\n{fail} = {str(closed).lower()}",
                           monkeypatch, {check: _boom})
    [action] = [r for r in run.runs if r.spec.name == "policy"]
    if closed:
        assert action.result.outcome is Outcome.VETO and run.exit_code == 1
        assert "refusing (fail closed): unexpected error: ZeroDivisionError" in out
    else:
        assert action.result.outcome is Outcome.NOCHANGE and run.exit_code == 0
        assert f"{what} not checked (fail open): unexpected error: ZeroDivisionError" in out
    assert "Traceback" not in out


@pytest.mark.slow
@pytest.mark.parametrize("closed", [True, False])
def test_a_check_that_ignores_its_timeout_is_cut_at_the_hook_deadline(write_config,
                                                                      monkeypatch, closed):
    """INJECTED fault: a request that never honours its timeout (a blocking call the
    adapter cannot bound). The gate still decides before the hook's deadline."""
    start = time.monotonic()
    run, out = _in_process(write_config, f"dns_check = true\ndns_fail_closed = "
                           f"{str(closed).lower()}", monkeypatch,
                           {"_dns_conflict": _ignores_its_timeout}, deadline=1.5)
    assert time.monotonic() - start < 1.5 + 1.0
    assert run.exit_code == (1 if closed else 0), out
    assert "DNS check not finished" in out and "s before the hook's deadline" in out
    assert "abandoned" not in out


@pytest.mark.slow
@pytest.mark.parametrize("closed", [True, False])
def test_a_gate_that_never_started_before_the_deadline(write_config, monkeypatch, closed):
    """An action before the gate used up the whole deadline (tests/helpers/act_hang):
    the dispatcher asks the gate what that means: a veto when it fails closed."""
    hang = registry.ActionSpec("act_hang", "tests.helpers.act_hang", ("instance-add",),
                               ("pre",), (), "act_hang", enabled_by_default=True)
    policy_spec = next(s for s in registry.ACTIONS if s.name == "policy")
    run, out = _in_process(write_config, f"dns_check = true\ndns_fail_closed = "
                           f"{str(closed).lower()}", monkeypatch, {}, deadline=1.0,
                           actions=(hang, policy_spec))
    outcomes = {r.spec.name: r.result.outcome for r in run.runs}
    if closed:
        assert outcomes == {"act_hang": Outcome.TIMEOUT, "policy": Outcome.VETO}
        assert run.exit_code == 1
        assert "refusing (fail closed): not started: no time left before the deadline" in out
    else:
        assert outcomes == {"act_hang": Outcome.TIMEOUT, "policy": Outcome.TIMEOUT}
        assert run.exit_code == 0


@pytest.mark.slow
def test_netbox_timeout_vetoes_when_closed_and_a_completed_check_allows(
        policy_hooks):  # noqa: F811
    with FakeNetBox() as netbox:  # a FAKE NetBox: see tests/helpers/netbox_fake.py
        netbox.add("virtualization/clusters", name="cluster1.example.test")
        netbox.add("virtualization/virtual-machines", name=NAME, cluster=1)
        root = policy_hooks("netbox_require_known = true\nnetbox_fail_closed = true",
                            netbox_url=netbox.url, key=netbox.token)
        assert not pre(root, NAME, [])[0]
        netbox.delay = 2.0
        aborted, line = pre(root, NAME, [])
        assert aborted and "refusing (fail closed): NetBox did not answer in time" in line
