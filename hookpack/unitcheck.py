"""`hookpack doctor` on a systemd host: are hookpack's units installed, enabled, running?

Which units a node should have follows from its config and Ganeti's ssconf, the same
way the Ansible role decides (docs/ansible.md):

- ``hookpack-shaping.service`` (boot-time shaping, active after it ran) and
  ``hookpack-shaping-reconcile.timer`` (when ``shaping.reconcile_interval`` > 0):
  when shaping is enabled;
- ``hookpack-outbox-flush.timer``: when announce is enabled (it queues to the outbox);
- ``hookpack-jobwatch.service``: on the master and every master candidate
  (``ssconf_master_candidates``) while global hooks are enabled;
- ``hookpack-hook-server.service`` is optional (hooks run without it, slower): reported
  when installed, and `doctor`'s "hook server" check says whether one serves.

A unit that is expected fails the check when it is missing, disabled or failed; a unit
that is not expected is only reported when it failed. Hosts without systemd as init
(no ``/run/systemd/system``) get one line saying so.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from hookpack.config import Config
from hookpack.errors import HookpackError
from hookpack.record import record
from hookpack.roles import normalize_host, system_fqdn

SYSTEMD_RUN_DIR = Path("/run/systemd/system")
ALL_UNITS = ("hookpack-shaping.service", "hookpack-shaping-reconcile.timer",
             "hookpack-outbox-flush.timer", "hookpack-jobwatch.service",
             "hookpack-hook-server.service")
PROPERTIES = ("Id", "LoadState", "UnitFileState", "ActiveState", "SubState")
TIMEOUT_S = 10.0


@record(frozen=True)
class UnitState:
    name: str
    load: str  # loaded | not-found | masked | ...
    file_state: str  # enabled | disabled | static | masked | ""
    active: str  # active | inactive | failed | activating | ...
    sub: str


@record(frozen=True)
class UnitVerdict:
    unit: str
    status: str  # pass | warn | fail
    message: str
    fix: str = ""


def expected_units(cfg: Config, fqdn: str | None = None) -> dict[str, str]:
    """Unit -> why this node should have it."""
    from hookpack.actions.shaping.action import SETTINGS as SHAPING

    want: dict[str, str] = {}
    if cfg.section_enabled("shaping", False):
        want["hookpack-shaping.service"] = "shaping is enabled"
        try:
            interval = int(cfg.section("shaping", SHAPING).get("reconcile_interval", 0))
        except HookpackError:
            interval = 0  # reported by the config check
        if interval > 0:
            want["hookpack-shaping-reconcile.timer"] = f"shaping.reconcile_interval = {interval}"
    if cfg.section_enabled("announce", False):
        want["hookpack-outbox-flush.timer"] = "announce is enabled (it queues to the outbox)"
    if cfg.core["global_hooks"]["enabled"] and _is_master_candidate(cfg, fqdn):
        want["hookpack-jobwatch.service"] = "this node is a master candidate"
    return want


def _is_master_candidate(cfg: Config, fqdn: str | None) -> bool:
    me = normalize_host(fqdn or cfg.core["node"]["fqdn"] or system_fqdn())
    data = cfg.path_of("ganeti_data_dir")
    names: set[str] = set()
    for name in ("ssconf_master_candidates", "ssconf_master_node"):
        try:
            names.update(normalize_host(n) for n in (data / name).read_text().split())
        except OSError:
            continue
    return me in names


def read_states(units: Iterable[str], systemctl: str = "systemctl") -> dict[str, UnitState]:
    """One ``systemctl show`` for all ``units``."""
    units = list(units)
    argv = [systemctl, "show", "--property=" + ",".join(PROPERTIES), "--", *units]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise HookpackError(f"`{' '.join(argv[:2])}` did not answer: {err}") from None
    if proc.returncode != 0:
        raise HookpackError(f"`systemctl show` exited {proc.returncode}: "
                            f"{proc.stderr.strip()[:300]}")
    states = {}
    for block in proc.stdout.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" in props:
            states[props["Id"]] = UnitState(props["Id"], props.get("LoadState", ""),
                                            props.get("UnitFileState", ""),
                                            props.get("ActiveState", ""),
                                            props.get("SubState", ""))
    return states


def judge(want: Mapping[str, str], states: Mapping[str, UnitState]) -> list[UnitVerdict]:
    out = []
    for unit in ALL_UNITS:
        state = states.get(unit) or UnitState(unit, "not-found", "", "inactive", "dead")
        why = want.get(unit)
        installed = state.load not in ("not-found", "")
        if why is None:
            if state.active == "failed":
                out.append(UnitVerdict(unit, "warn", "failed (not expected on this node)",
                                       f"`journalctl -u {unit}`; remove it or "
                                       f"`systemctl reset-failed {unit}`"))
            elif installed and state.file_state == "enabled":
                out.append(UnitVerdict(unit, "pass", f"enabled, {state.active}"))
            continue
        if not installed or state.load == "masked":
            out.append(UnitVerdict(unit, "fail", f"{'masked' if installed else 'not installed'}"
                                   f" ({why})", "run the Ansible role (docs/ansible.md)"))
        elif state.file_state != "enabled":
            out.append(UnitVerdict(unit, "fail", f"{state.file_state or 'not enabled'} ({why})",
                                   f"systemctl enable --now {unit}"))
        elif state.active == "failed":
            out.append(UnitVerdict(unit, "fail", f"failed ({why})",
                                   f"`journalctl -u {unit}`, then `systemctl restart {unit}`"))
        elif state.active != "active":
            out.append(UnitVerdict(unit, "warn", f"enabled but {state.active} ({why})",
                                   f"systemctl start {unit}"))
        else:
            out.append(UnitVerdict(unit, "pass", f"enabled, active ({state.sub})"))
    return out


def check_units(cfg: Config, *, systemctl: str = "systemctl",
                run_dir: Path = SYSTEMD_RUN_DIR) -> list[UnitVerdict]:
    """The verdicts for this node's hookpack units (none wanted, none found: one pass)."""
    if not run_dir.is_dir():
        return [UnitVerdict("units", "pass", f"not a systemd host (no {run_dir}): not checked")]
    want = expected_units(cfg)
    try:
        states = read_states(ALL_UNITS, systemctl)
    except HookpackError as err:
        return [UnitVerdict("units", "fail", str(err), "is systemd running? run as root")]
    verdicts = judge(want, states)
    return verdicts or [UnitVerdict("units", "pass", "none expected on this node, none found")]
