"""What an action gets to work with: the parsed hook, its roles, its settings, a deadline."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hookpack.record import fields, record

if TYPE_CHECKING:  # annotations only: a CLI command (`shaping apply`) needs none of them
    from hookpack.config import Config
    from hookpack.deadline import Deadline
    from hookpack.env import HookEnv
    from hookpack.roles import Role


@record(frozen=True)
class Paths:
    hooks_dir: Path
    kvm_dir: Path
    instance_disks_dir: Path
    ganeti_data_dir: Path
    sysfs_root: Path
    proc_root: Path
    state_dir: Path
    spool_dir: Path
    run_dir: Path

    @classmethod
    def from_config(cls, config: Config) -> Paths:
        return cls(**{name: config.path_of(name) for name in fields(cls)})


@record(frozen=True)
class ActionContext:
    env: HookEnv
    roles: frozenset[Role]
    fqdn: str
    config: Config
    settings: Mapping[str, Any]
    deadline: Deadline
    paths: Paths
    redact: Callable[[str], None] = lambda secret: None

    def has_role(self, *roles: Role) -> bool:
        return bool(self.roles.intersection(roles))


class Redactor(Protocol):
    """Where a secret read for a request is registered so that no log line shows it."""

    def redact(self, secret: str) -> None: ...


class NoRedact:
    """For the CLI commands and doctor, which log no secret."""

    @staticmethod
    def redact(secret: str) -> None:
        return None
