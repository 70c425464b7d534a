"""pytest plugin: fail any test whose output shows one of the test suite's secrets.

Registered in tests/conftest.py. It knows every secret value the suite hands hookpack
(webhook/Slack/Grafana tokens, the HMAC key, the PowerDNS API key, the NetBox token and
the ones tests/reliability uses) and scans, for every test phase (setup, call,
teardown):

* what pytest captured (stdout/stderr at fd level, so subprocesses that inherit the
  test's fds are covered, and log records);
* the output of every hook run through hookpack.emulator.run_hooks (the hook
  entries' stdout+stderr, i.e. what Ganeti would put in its job log);
* the stdout/stderr of every ``subprocess.run`` call that captured them (e.g. the
  `hookpack` CLI run by tests).

These taps pass every call through unchanged: they only keep a copy of the output.
A test in which a secret shows is turned into a failure naming the secret's label and
where it was seen (never the value itself).
"""

from __future__ import annotations

import functools
import subprocess
from typing import Any

import pytest
from vmtestbed import netbox as vmtestbed_netbox

import hookpack.emulator

# label -> value. The values are the ones the tests themselves use (grep for them).
SECRETS: dict[str, str] = {
    "slack webhook token": "sEcReTtOkEn123",  # vm-testbed/vmtestbed/receivers.py SLACK_PATH
    "grafana token": "glsa_sEcReTgRaFaNaToKeN_0123",  # receivers.GRAFANA_TOKEN
    "webhook hmac key": "hmac-sEcReT-kEy-456",  # receivers.HMAC_KEY
    "powerdns api key": "test-api-key-123",  # vm-testbed/vmtestbed/pdns.py default
    "netbox token": "0123456789abcdef0123456789abcdef01234567",  # netbox_fake default
    "real netbox v1 token": vmtestbed_netbox.TOKEN,  # the real NetBox's (vmtestbed.netbox)
    "real netbox v2 secret": vmtestbed_netbox.TOKEN_V2_SECRET,
    "reliability webhook secret": "fuzz-webhook-secret-0001",  # tests/reliability
    "reliability pdns key": "rel-pdns-KEY-secret-77",  # tests/reliability
}

_seen: list[tuple[str, str]] = []  # (where, text) since the last phase report


def _remember(where: str, *texts: Any) -> None:
    for text in texts:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if isinstance(text, str) and text:
            _seen.append((where, text))


def _tap_run_hooks(original):
    @functools.wraps(original)
    def run_hooks(*args, **kwargs):
        results = original(*args, **kwargs)
        for result in results:
            _remember(f"hook output of {result.name}", result.output)
        return results
    return run_hooks


def _tap_subprocess_run(original):
    @functools.wraps(original)
    def run(*args, **kwargs):
        try:
            done = original(*args, **kwargs)
        except subprocess.SubprocessError as err:
            _remember("output of a subprocess.run that raised", getattr(err, "stdout", None),
                      getattr(err, "stderr", None))
            raise
        _remember("output of a subprocess.run", done.stdout, done.stderr)
        return done
    return run


def install_taps() -> None:
    if not getattr(hookpack.emulator.run_hooks, "_secretscan", False):
        hookpack.emulator.run_hooks = _tap_run_hooks(hookpack.emulator.run_hooks)
        hookpack.emulator.run_hooks._secretscan = True  # type: ignore[attr-defined]
    if not getattr(subprocess.run, "_secretscan", False):
        subprocess.run = _tap_subprocess_run(subprocess.run)
        subprocess.run._secretscan = True  # type: ignore[attr-defined]


# Before any test module is imported (they bind `run_hooks` at import time).
install_taps()


def find_leaks(texts: list[tuple[str, str]]) -> list[str]:
    return sorted({f"{label} in {where}" for where, text in texts
                   for label, secret in SECRETS.items() if secret in text})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # report.sections holds the earlier phases' captures too: scan only this phase's.
    texts = [*_seen, *((title.lower(), body) for title, body in report.sections
                       if title.endswith(f" {report.when}"))]
    _seen.clear()
    leaks = find_leaks(texts)
    if leaks and report.outcome != "failed":
        report.outcome = "failed"
        report.longrepr = ("secretscan: a secret showed in this test's output: "
                           + "; ".join(leaks))
