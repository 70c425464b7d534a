"""The one exception hierarchy of hookpack.

Every message names its subject, says what went wrong and, where it can, what to do.
"""

from __future__ import annotations


class HookpackError(Exception):
    """Base of every error hookpack raises on purpose."""


class ConfigError(HookpackError):
    """The configuration file is unreadable, unsafe or does not match the schema."""

    def __init__(self, message: str, *, path: str = "", key: str = "") -> None:
        self.path = path
        self.key = key
        where = ": ".join(part for part in (path, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class BadInput(HookpackError):
    """A value from Ganeti's environment or the command line is unusable or unsafe."""


class LockTimeout(HookpackError):
    """A node-wide lock could not be taken before the deadline."""


class ActionError(HookpackError):
    """An action could not do its work; the message says why and what to do."""


class Veto(HookpackError):
    """A pre-phase action refuses the operation (Ganeti aborts it)."""
