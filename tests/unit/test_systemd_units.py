"""Every systemd unit the Ansible role installs passes `systemd-analyze verify`.

The role's templates are the only source of the units. They are rendered here with
Jinja2 (what Ansible's template module uses), with ExecStart pointing at this venv's
hookpack (verify checks that the executable exists), and the role's defaults for the
other variables (the paths come from the config's [paths] section in the role).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

TEMPLATES = Path(__file__).resolve().parents[2] / "ansible/roles/hookpack/templates/systemd"
UNITS = sorted(p.name.removesuffix(".j2") for p in TEMPLATES.glob("*.j2"))


def render(name: str, venv: Path, **overrides: object) -> str:
    # Unit files, not HTML: no autoescaping (as in Ansible).
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),  # noqa: S701
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    variables = {
        "ansible_managed": "Ansible managed", "hookpack_venv": str(venv),
        "hookpack_bin": f"{venv}/bin/hookpack",
        "hookpack_config_file": "/etc/hookpack/hookpack.toml",
        "hookpack_spool_dir": "/var/spool/hookpack", "hookpack_state_dir": "/var/lib/hookpack",
        "hookpack_run_dir": "/run/hookpack", "hookpack_log_dir": "/var/log/hookpack",
        "hookpack_shaping_reconcile_interval": 300, "hookpack_outbox_flush_interval": 60,
        "hookpack_firewall_units": ["nftables.service", "netfilter-persistent.service"],
        **overrides,
    }
    return env.get_template(f"{name}.j2").render(**variables)


def test_the_role_ships_every_unit():
    assert UNITS == ["hookpack-hook-server.service", "hookpack-jobwatch.service",
                     "hookpack-outbox-flush.service",
                     "hookpack-outbox-flush.timer", "hookpack-shaping-reconcile.service",
                     "hookpack-shaping-reconcile.timer", "hookpack-shaping.service"]


@pytest.mark.parametrize("name", UNITS)
def test_unit_verifies(tmp_path, name):
    venv = Path(sys.executable).parent.parent
    for unit in UNITS:  # the timer needs its service beside it
        (tmp_path / unit).write_text(render(unit, venv))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)],
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if "hookpack" in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_what_the_units_run():
    venv = Path("/opt/hookpack/venv")
    shaping = render("hookpack-shaping.service", venv)
    assert "\nType=oneshot\n" in shaping and "After=network-online.target" in shaping
    assert "ExecStart=/opt/hookpack/venv/bin/hookpack shaping apply --all" in shaping
    assert "ExecStop=/opt/hookpack/venv/bin/hookpack shaping clear --all --yes" in shaping
    flush = render("hookpack-outbox-flush.service", venv)
    assert "ExecStart=/opt/hookpack/venv/bin/hookpack outbox flush" in flush
    timer = render("hookpack-outbox-flush.timer", venv)
    assert "\nOnUnitInactiveSec=60s\n" in timer and "\nWantedBy=timers.target\n" in timer
    jobwatch = render("hookpack-jobwatch.service", venv)
    assert "ExecStart=/opt/hookpack/venv/bin/hookpack jobwatch" in jobwatch
    assert "\nWantedBy=multi-user.target\n" in jobwatch  # runs without ganeti.target too


def test_shaping_units_follow_the_firewall_and_reload_by_reconciling():
    venv = Path("/opt/hookpack/venv")
    shaping = render("hookpack-shaping.service", venv)
    after = next(line for line in shaping.splitlines() if line.startswith("After="))
    assert "nftables.service" in after and "netfilter-persistent.service" in after
    assert "ExecReload=/opt/hookpack/venv/bin/hookpack shaping apply --all" in shaping
    reconcile = render("hookpack-shaping-reconcile.service", venv)
    assert "Requisite=hookpack-shaping.service" in reconcile
    assert "ExecStart=/opt/hookpack/venv/bin/hookpack shaping apply --all" in reconcile
    timer = render("hookpack-shaping-reconcile.timer", venv,
                   hookpack_shaping_reconcile_interval=45)
    assert "\nOnUnitActiveSec=45s\n" in timer and "\nPartOf=hookpack-shaping.service\n" in timer


def test_units_use_the_configured_paths():
    flush = render("hookpack-outbox-flush.service", Path("/opt/hookpack/venv"),
                   hookpack_spool_dir="/srv/spool", hookpack_state_dir="/srv/state",
                   hookpack_run_dir="/run/hp", hookpack_log_dir="/srv/log")
    assert "ConditionDirectoryNotEmpty=/srv/spool/outbox" in flush
    assert "ReadWritePaths=/srv/spool -/srv/state -/run/hp -/srv/log" in flush
    assert "/var/spool/hookpack" not in flush
