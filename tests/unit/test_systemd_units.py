"""Every systemd unit the Ansible role installs passes `systemd-analyze verify`.

The role's templates are the only source of the units. They are rendered here with
Jinja2 (what Ansible's template module uses), with ExecStart pointing at this venv's
hookpack (verify checks that the executable exists).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

TEMPLATES = Path(__file__).resolve().parents[2] / "ansible/roles/hookpack/templates/systemd"
UNITS = sorted(p.name.removesuffix(".j2") for p in TEMPLATES.glob("*.j2"))


def render(name: str, venv: Path) -> str:
    # Unit files, not HTML: no autoescaping (as in Ansible).
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),  # noqa: S701
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(f"{name}.j2").render(
        ansible_managed="Ansible managed", hookpack_venv=str(venv),
        hookpack_config_file="/etc/hookpack/hookpack.toml")


def test_the_role_ships_every_unit():
    assert UNITS == ["hookpack-jobwatch.service", "hookpack-outbox-flush.service",
                     "hookpack-outbox-flush.timer", "hookpack-shaping.service"]


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
    assert "\nOnUnitInactiveSec=1min\n" in timer and "\nWantedBy=timers.target\n" in timer
    jobwatch = render("hookpack-jobwatch.service", venv)
    assert "ExecStart=/opt/hookpack/venv/bin/hookpack jobwatch" in jobwatch
