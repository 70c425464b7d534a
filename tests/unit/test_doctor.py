"""Each core doctor check, in a failing and a passing state, on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hookpack.action import Paths
from hookpack.config import load_config
from hookpack.doctor import FAIL, PASS, WARN, numa_check, outbox_check, run_checks
from hookpack.hooksinstall import install
from hookpack.outbox import Outbox, event_id, now_ms
from hookpack.record import fields
from hookpack.roles import system_fqdn
from tests.helpers.fakehost import write_sysfs
from tests.unit.test_hookserver import Server


def _doctor(config_path):
    return {c.name: c for c in run_checks(load_config(config_path, required=True))}


def test_fresh_node_fails_with_what_to_do(tmp_path, write_config):
    checks = _doctor(write_config())
    assert checks["ganeti"].status == FAIL and "not found" in checks["ganeti"].message
    assert checks["hooks"].status == FAIL
    assert checks["hooks"].fix.startswith("run `hookpack hooks install --root ")


def _ready(tmp_path, config=None):
    (tmp_path / "ganeti_data_dir").mkdir()
    (tmp_path / "ganeti_data_dir/ssconf_release_version").write_text("3.0.2\n")
    (tmp_path / "ganeti_data_dir/ssconf_node_list").write_text(
        f"node0.example.test\n{system_fqdn()}\n")
    (tmp_path / "kvm_dir").mkdir()
    install(tmp_path / "hooks_dir", python=sys.executable,
            config=str(config) if config else None)


def test_ready_node_passes(tmp_path, write_config):
    config = write_config()
    _ready(tmp_path, config)
    server = Server(config, tmp_path / "run_dir")  # as the role's unit runs it
    try:
        checks = _doctor(config)
    finally:
        server.stop()
    assert {name: c.status for name, c in checks.items()} == {
        "ganeti": PASS, "node-name": PASS, "paths": PASS, "hooks": PASS, "hook-facts": PASS,
        "hook-names": PASS, "config-mode": PASS, "config": PASS, "secrets": PASS, "qmp": PASS,
        "numa": PASS, "outbox": PASS, "hook server": PASS,
        "units": PASS}  # no systemd as PID 1 here: "not a systemd host"
    assert checks["ganeti"].message == "Ganeti 3.0.2"
    assert checks["qmp"].message.startswith("no running instance")
    assert checks["hook server"].message == (
        f"serving {tmp_path / 'run_dir/hookserver.sock'} (pid {server.pid})")
    check = _doctor(config)["hook server"]  # stopped: hooks still run, each in its own Python
    assert check.status == WARN and check.message.startswith("not running"), check


def test_entry_with_missing_interpreter_or_not_executable_fails(tmp_path, write_config):
    config = write_config()
    install(tmp_path / "hooks_dir", python="/nonexistent/python")
    assert _doctor(config)["hooks"].status == FAIL
    install(tmp_path / "hooks_dir", python=sys.executable)
    (tmp_path / "hooks_dir/disk-grow-post.d/50-hookpack").chmod(0o644)
    check = _doctor(config)["hooks"]
    assert check.status == FAIL and "not executable" in check.message


def test_emptied_entry_counts_as_missing(tmp_path, write_config):
    config = write_config()
    install(tmp_path / "hooks_dir", python=sys.executable)
    entry = tmp_path / "hooks_dir/disk-grow-post.d/50-hookpack"
    entry.write_text("")
    check = _doctor(config)["hooks"]
    assert check.status == FAIL
    assert check.message.endswith("entries are missing (e.g. disk-grow-post.d/50-hookpack)")


def test_misnamed_operator_script_is_a_warning(tmp_path, write_config):
    config = write_config()
    install(tmp_path / "hooks_dir", python=sys.executable)
    (tmp_path / "hooks_dir/instance-start-post.d/10-notify.sh").write_text("#!/bin/sh\n")
    check = _doctor(config)["hook-names"]
    assert check.status == WARN and "instance-start-post.d/10-notify.sh" in check.message


def test_group_writable_config_fails_and_invalid_section_fails(tmp_path, write_config):
    config = write_config("[record]\nenabled = 'yes'\n", mode=0o664)
    checks = run_checks(load_config(config, required=True))
    by_name = {}
    for check in checks:
        by_name.setdefault(check.name, []).append(check)
    assert by_name["config-mode"][0].status == FAIL
    assert any(c.status == FAIL and "record.enabled" in c.message for c in by_name["config"])


def test_doctor_command_exit_codes(tmp_path, write_config):
    config = write_config()
    failing = subprocess.run([sys.executable, "-m", "hookpack", "doctor", "--config", str(config)],
                             capture_output=True, text=True)
    assert failing.returncode == 1 and "FAIL ganeti:" in failing.stdout
    _ready(tmp_path)
    passing = subprocess.run([sys.executable, "-m", "hookpack", "doctor", "--config", str(config)],
                             capture_output=True, text=True)
    assert passing.returncode == 0, passing.stdout


def _all(config_path):
    by_name = {}
    for check in run_checks(load_config(config_path, required=True)):
        by_name.setdefault(check.name, []).append(check)
    return by_name


def test_ganeti_older_than_3_0_is_a_warning(tmp_path, write_config):
    config = write_config()
    (tmp_path / "ganeti_data_dir").mkdir()
    (tmp_path / "ganeti_data_dir/ssconf_release_version").write_text("2.16.2\n")
    check = _doctor(config)["ganeti"]
    assert check.status == WARN and "2.16.2" in check.message


def test_missing_kvm_dir_warns_and_existing_one_passes(tmp_path, write_config):
    config = write_config()
    check = _doctor(config)["paths"]
    assert check.status == WARN and check.fix.startswith("set paths.kvm_dir")
    (tmp_path / "kvm_dir").mkdir()
    assert _doctor(config)["paths"].status == PASS


def test_config_not_owned_by_root_fails(tmp_path, write_config):
    assert os.geteuid() == 0, "the ownership check applies when doctor runs as root"
    config = write_config()
    os.chown(config, 65534, 65534)
    check = _all(config)["config-mode"][0]
    assert check.status == FAIL and check.fix == f"chown root: {config}"


def test_unknown_section_fails_and_says_how_to_check(tmp_path, write_config):
    checks = _all(write_config("[shapping]\nenabled = true\n"))["config"]
    assert [c.message for c in checks] == ["unknown section [shapping]"]
    assert checks[0].status == FAIL and "hookpack config check" in checks[0].fix


def _announce(tmp_path, write_config, mode):
    secret = tmp_path / "slack-url"
    secret.write_text("https://hooks.slack.example/x\n")
    secret.chmod(mode)
    config = write_config(f'[announce]\nenabled = true\nslack_webhook_url_file = "{secret}"\n')
    return config, secret


def test_secret_file_readable_by_others_fails_and_root_only_passes(tmp_path, write_config):
    config, secret = _announce(tmp_path, write_config, 0o644)
    [check] = _all(config)["secrets"]
    assert check.status == FAIL
    assert check.message == (f"announce.slack_webhook_url_file: {secret} is accessible by group "
                             "or others (mode 644): the action refuses to read it")
    assert check.fix == f"chmod 600 {secret}"
    secret.chmod(0o600)
    [check] = _all(config)["secrets"]
    assert check.status == PASS and check.message == "1 secret file(s), each root-only"


def test_secret_file_missing_or_not_root_owned_fails(tmp_path, write_config):
    config, secret = _announce(tmp_path, write_config, 0o600)
    os.chown(secret, 65534, 65534)
    [check] = _all(config)["secrets"]
    assert check.status == FAIL and "is not owned by root" in check.message
    secret.unlink()
    [check] = _all(config)["secrets"]
    assert check.status == FAIL and "does not exist" in check.message


def _paths(tmp_path, sysfs_root):
    return Paths(**{**{k: tmp_path / k for k in fields(Paths)},
                    "sysfs_root": sysfs_root})


def test_numa_on_this_machine_and_on_a_two_node_sysfs_copy(tmp_path, write_config):
    cfg = load_config(write_config(), required=True)
    # This machine has one NUMA node: a two-node topology can only be shown with a
    # sysfs tree written in the kernel's layout (tests/helpers/fakehost.py).
    here = numa_check(cfg, _paths(tmp_path, Path("/sys")))
    assert here.status == PASS and here.message.startswith("1 NUMA node(s)")
    write_sysfs(tmp_path / "sys", nodes=2, cores_per_node=4, threads=2)
    two = numa_check(cfg, _paths(tmp_path, tmp_path / "sys"))
    assert two.status == PASS
    assert two.message == ("2 NUMA node(s), 16 online CPU(s), 2 thread(s) per core "
                           "(node0: 8 CPU(s), node1: 8 CPU(s))")


def test_numa_unreadable_topology_fails(tmp_path, write_config):
    cfg = load_config(write_config(), required=True)
    check = numa_check(cfg, _paths(tmp_path, tmp_path / "nosuch"))
    assert check.status == FAIL and "cannot read the CPU topology" in check.message
    assert "paths.sysfs_root" in check.fix


def test_numa_reserved_cpus_that_empty_a_node_or_do_not_exist_warn(tmp_path, write_config):
    write_sysfs(tmp_path / "sys", nodes=2, cores_per_node=2, threads=1)  # node0: 0-1
    paths = _paths(tmp_path, tmp_path / "sys")
    for reserved, expect in (("0-1", "leaves NUMA node(s) [0] no CPU"),
                             ("2,9", "does not have online: [9]")):
        cfg = load_config(write_config(f'[pinning]\nenabled = true\nreserved_cpus = '
                                       f'"{reserved}"\n'), required=True)
        check = numa_check(cfg, paths)
        assert check.status == WARN and expect in check.message, check
    cfg = load_config(write_config('[pinning]\nenabled = true\nreserved_cpus = "0"\n'),
                      required=True)
    assert numa_check(cfg, paths).status == PASS


def _queue(paths, age_s, error=""):
    outbox = Outbox(paths.spool_dir, paths.run_dir)
    event = event_id(now_ms() - int(age_s * 1000), os.urandom(8).hex())
    outbox.write(event, {"subject": "web1", "event": {"kind": "migration"}, "deliveries": {
        "slack": {"attempts": 3, "next_attempt_ms": 0, "last_error": error}}}, new=True)
    return outbox, event


def test_outbox_empty_and_young_backlog_pass(tmp_path):
    paths = _paths(tmp_path, Path("/sys"))
    assert outbox_check(paths).message == "empty"
    _queue(paths, 30)
    check = outbox_check(paths)
    assert check.status == PASS and check.message.startswith("1 event(s) queued, oldest")


def test_outbox_backlog_older_than_an_hour_warns_with_the_error(tmp_path):
    paths = _paths(tmp_path, Path("/sys"))
    _queue(paths, 3 * 3600, "HTTP 503 from hooks.slack.example")
    _queue(paths, 60)
    check = outbox_check(paths)
    assert check.status == WARN
    assert check.message.startswith("2 event(s) queued, oldest 3.0 h old")
    assert check.message.endswith("last error: HTTP 503 from hooks.slack.example")
    assert "hookpack outbox list" in check.fix


def test_outbox_corrupt_event_fails_and_names_it(tmp_path):
    paths = _paths(tmp_path, Path("/sys"))
    outbox, event = _queue(paths, 10)
    (outbox.dir / f"{event}.json").write_text("{not json")
    check = outbox_check(paths)
    assert check.status == FAIL and event in check.message
    assert check.fix.endswith(f"`hookpack outbox drop {event}`")


def test_doctor_json_lists_every_check(tmp_path, write_config):
    config = write_config()
    proc = subprocess.run([sys.executable, "-m", "hookpack", "doctor", "--json", "--config",
                           str(config)], capture_output=True, text=True)
    names = {c["name"] for c in json.loads(proc.stdout)}
    assert {"ganeti", "paths", "hooks", "config", "secrets", "qmp", "numa", "outbox"} <= names


def test_node_name_ganeti_does_not_know_fails_and_says_what_to_set(tmp_path, write_config):
    config = write_config('[node]\nfqdn = "node3.example.test"\n')
    _ready(tmp_path, config)
    check = _doctor(config)["node-name"]
    assert check.status == FAIL
    assert check.message.startswith("'node3.example.test' (node.fqdn) is not a node of the "
                                    f"cluster (node0.example.test, {system_fqdn()}): ")
    assert check.fix == "set node.fqdn to this node's name as `gnt-node list` shows it"
    config.write_text(config.read_text().replace("node3.example.test", "NODE0.example.test."))
    check = _doctor(config)["node-name"]
    assert check.status == PASS, check.line()
    assert check.message == "NODE0.example.test. (node.fqdn) is a node of the cluster"


def test_node_name_without_ssconf_fails(tmp_path, write_config):
    check = _doctor(write_config())["node-name"]
    assert check.status == FAIL and "ssconf_node_list not found" in check.message


def test_config_changed_after_install_warns_until_reinstalled(tmp_path, write_config):
    config = write_config()
    _ready(tmp_path, config)
    config.write_text(config.read_text() + "[record]\nenabled = true\n")
    check = _doctor(config)["hook-facts"]
    assert check.status == WARN and "changed after the hook entries were installed" in \
        check.message
    assert check.fix == (f"run `hookpack hooks install --root {tmp_path / 'hooks_dir'} "
                         f"--entry-config {config}`")
    install(tmp_path / "hooks_dir", python=sys.executable, config=str(config))
    assert _doctor(config)["hook-facts"].status == PASS
    install(tmp_path / "hooks_dir", python=sys.executable)  # entries read another file
    check = _doctor(config)["hook-facts"]
    assert check.status == WARN and check.message.endswith(f", not {config}")
