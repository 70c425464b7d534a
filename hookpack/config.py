"""/etc/hookpack/hookpack.toml: loading, schema validation, secrets.

The schema is data (``Field``): it validates, fills defaults and generates the
configuration reference in docs/, so the three cannot drift. Core sections live
here; each action declares its own section in its module (``SETTINGS``).
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from hookpack.errors import ConfigError
from hookpack.record import field, record

if TYPE_CHECKING:  # argparse stays off the hook's hot path
    import argparse

DEFAULT_PATH = Path("/etc/hookpack/hookpack.toml")
ENV_VAR = "HOOKPACK_CONFIG"


@record(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None
    secret: bool = False
    item_type: type | None = None  # for lists


Schema = Mapping[str, Field]

CORE_SCHEMA: dict[str, Schema] = {
    "hook": {
        "deadline": Field(
            float, 15.0, "Hard wall-clock limit for one hook run, in seconds. Ganeti has "
            "no timeout of its own and holds the job's locks while hooks run.",
            minimum=0.5, maximum=600),
        "post_failure_exit_code": Field(
            int, 0, "Exit code of a post hook when an action failed. Ganeti only logs "
            "post-hook failures (a warning in the job log with the hook's output); 1 makes a "
            "failed action visible there, 0 keeps jobs free of warnings.",
            minimum=0, maximum=255),
        "pre_fail_closed": Field(
            bool, False, "In the pre phase, veto the operation when hookpack itself "
            "breaks (bad config, deadline). Actions with their own fail-open/closed "
            "setting follow that setting."),
    },
    "node": {
        "fqdn": Field(str, "", "This node's name as Ganeti knows it. Empty: the "
                      "system's FQDN (socket.getfqdn)."),
    },
    "paths": {
        "hooks_dir": Field(str, "/etc/ganeti/hooks", "Ganeti's hooks directory."),
        "kvm_dir": Field(str, "/var/run/ganeti/kvm-hypervisor",
                         "Ganeti's KVM runtime directory (pid/, ctrl/, conf/, nic/)."),
        "instance_disks_dir": Field(str, "/var/run/ganeti/instance-disks",
                                    "Where Ganeti links each running instance's disks."),
        "ganeti_data_dir": Field(str, "/var/lib/ganeti", "Ganeti's data directory."),
        "sysfs_root": Field(str, "/sys", "Root of sysfs (NUMA topology, block sizes)."),
        "proc_root": Field(str, "/proc", "Root of procfs (threads, affinities)."),
        "state_dir": Field(str, "/var/lib/hookpack", "hookpack's persistent state."),
        "spool_dir": Field(str, "/var/spool/hookpack", "Outbox of undelivered events."),
        "run_dir": Field(str, "/run/hookpack", "Locks and other runtime files."),
    },
    "global_hooks": {
        "enabled": Field(bool, True, "Run the operator's global hooks (`global-pre.d`/"
                         "`global-post.d` under the hooks directory; nothing happens "
                         "without scripts there) and let `hookpack jobwatch` report."),
        "script_timeout": Field(float, 10.0, "Seconds one global hook script may run "
                                "before it is killed (within a hook run, also bounded by "
                                "[hook] deadline).", minimum=0.1, maximum=3600),
        "poll_interval": Field(float, 2.0, "Seconds between two looks of `hookpack "
                               "jobwatch` at Ganeti's job queue.", minimum=0.1, maximum=600),
    },
    "log": {
        "stderr": Field(bool, True, "Write the one-line action results to stderr. Ganeti "
                        "shows a hook's output in the job's error when a pre hook vetoes, and "
                        "as a warning when a post hook exits non-zero (see "
                        "hook.post_failure_exit_code); a successful post hook's output is "
                        "not shown, so keep syslog or log.file on."),
        "syslog": Field(bool, True, "Send them to syslog/journald too."),
        "syslog_facility": Field(str, "daemon", "Syslog facility.",
                                 choices=("daemon", "user", "local0", "local1", "local2",
                                          "local3", "local4", "local5", "local6", "local7")),
        "file": Field(str, "", "Also append them to this file (empty: no file)."),
    },
}

ENABLED = Field(bool, False, "Run this action.")


@record(frozen=True)
class Config:
    """A loaded configuration: raw TOML plus validated core sections."""

    path: Path | None
    raw: Mapping[str, Any]
    core: Mapping[str, Mapping[str, Any]]
    group_or_other_readable: bool = False
    warnings: tuple[str, ...] = field(default=())

    def path_of(self, key: str) -> Path:
        return Path(self.core["paths"][key])

    @property
    def deadline(self) -> float:
        return float(self.core["hook"]["deadline"])

    def section_enabled(self, section: str, default: bool) -> bool:
        value = self.raw.get(section, {})
        if not isinstance(value, Mapping):
            return default
        enabled = value.get("enabled", default)
        return enabled if isinstance(enabled, bool) else default

    def section(self, name: str, schema: Schema) -> Mapping[str, Any]:
        """Validate section ``name`` against ``schema``; defaults filled in."""
        where = str(self.path) if self.path else "<defaults>"
        values = validate_section(name, self.raw.get(name, {}), {"enabled": ENABLED, **schema},
                                  where)
        self._check_secrets(name, values, schema)
        return values

    def _check_secrets(self, name: str, values: Mapping[str, Any], schema: Schema) -> None:
        holds_secret = any(f.secret and values.get(k) for k, f in schema.items())
        if holds_secret and self.group_or_other_readable:
            raise ConfigError(
                "holds secrets but group or others can read it; run "
                f"`chmod 600 {self.path}` (or move the secret to a root-only file)",
                path=str(self.path), key=name)


def config_path(explicit: str | os.PathLike[str] | None,
                environ: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The file to read and whether the user named it (then it must exist)."""
    if explicit:
        return Path(explicit), True
    environ = os.environ if environ is None else environ
    if environ.get(ENV_VAR):
        return Path(environ[ENV_VAR]), True
    return DEFAULT_PATH, False


def load_config(path: Path, *, required: bool = False) -> Config:
    """Read and validate the core of a config file. A missing default file means defaults."""
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            raw = tomllib.load(handle)
    except FileNotFoundError:
        if required:
            raise ConfigError("file not found", path=str(path)) from None
        return Config(path=None, raw={}, core=_validate_core({}, "<defaults>"))
    except PermissionError:
        raise ConfigError("cannot read it (permission denied)", path=str(path)) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"not valid TOML: {err}", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read it: {err}", path=str(path)) from None
    return Config(
        path=path,
        raw=MappingProxyType(raw),
        core=_validate_core(raw, str(path)),
        group_or_other_readable=bool(info.st_mode & (stat.S_IRGRP | stat.S_IROTH)),
    )


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """The `--config` option every command that reads the configuration takes."""
    parser.add_argument("--config", help="config file (default: $HOOKPACK_CONFIG or "
                        "/etc/hookpack/hookpack.toml)")


def load(ns: argparse.Namespace) -> Config:
    """The configuration a command reads: its --config, else $HOOKPACK_CONFIG, else the
    default path (missing: defaults). Here, not in the CLI, so that action commands and
    jobwatch can load it without importing hookpack.cli."""
    path, required = config_path(ns.config)
    return load_config(path, required=required)


def _validate_core(raw: Mapping[str, Any], where: str) -> Mapping[str, Mapping[str, Any]]:
    return MappingProxyType({
        name: validate_section(name, raw.get(name, {}), schema, where)
        for name, schema in CORE_SCHEMA.items()
    })


def validate_section(name: str, raw: Any, schema: Schema, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a table ([" + name + "])", path=where, key=name)
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(schema))}",
            path=where, key=name)
    return MappingProxyType({
        key: validate_value(f"{name}.{key}", raw[key], fld, where) if key in raw else fld.default
        for key, fld in schema.items()
    })


def validate_value(key: str, value: Any, fld: Field, where: str) -> Any:
    expected = fld.kind if isinstance(fld.kind, tuple) else (fld.kind,)
    if float in expected and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in expected:
        raise ConfigError(f"must be {_type_names(expected)}, not a boolean", path=where, key=key)
    if not isinstance(value, expected):
        raise ConfigError(f"must be {_type_names(expected)}, not {type(value).__name__}",
                          path=where, key=key)
    if isinstance(value, list) and fld.item_type is not None:
        bad = [item for item in value if not isinstance(item, fld.item_type)]
        if bad:
            raise ConfigError(f"every item must be {fld.item_type.__name__}", path=where, key=key)
    if fld.choices is not None and value not in fld.choices:
        raise ConfigError(f"{value!r} is not one of {', '.join(map(repr, fld.choices))}",
                          path=where, key=key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if fld.minimum is not None and value < fld.minimum:
            raise ConfigError(f"{value} is below the minimum {fld.minimum}", path=where, key=key)
        if fld.maximum is not None and value > fld.maximum:
            raise ConfigError(f"{value} is above the maximum {fld.maximum}", path=where, key=key)
    if fld.pattern is not None and isinstance(value, str) and not re.fullmatch(fld.pattern, value):
        raise ConfigError(f"{value!r} does not match {fld.pattern}", path=where, key=key)
    return value


def _type_names(types: tuple[type, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def read_secret(path: Path) -> str:
    """Read a secret from a root-only file; refuse one that group or others can read."""
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(
                    f"secret file is accessible by group or others (mode "
                    f"{stat.S_IMODE(info.st_mode):o}); run `chmod 600 {path}`", path=str(path))
            return handle.read().decode("utf-8").strip()
    except FileNotFoundError:
        raise ConfigError("secret file not found", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read secret file: {err}", path=str(path)) from None
