"""What an action reports: an outcome, a message and the changes it made, as data."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from hookpack.record import field, record


class Outcome(StrEnum):
    CHANGED = "changed"
    NOCHANGE = "nochange"
    SKIPPED = "skipped"
    FAILED = "failed"
    VETO = "veto"
    TIMEOUT = "timeout"


@record(frozen=True)
class Result:
    outcome: Outcome
    message: str = ""
    changes: tuple[str, ...] = field(default=())

    @classmethod
    def changed(cls, message: str, changes: Iterable[str]) -> Result:
        return cls(Outcome.CHANGED, message, tuple(changes))

    @classmethod
    def nochange(cls, message: str = "nothing to do") -> Result:
        return cls(Outcome.NOCHANGE, message)

    @classmethod
    def skipped(cls, message: str) -> Result:
        return cls(Outcome.SKIPPED, message)

    @classmethod
    def failed(cls, message: str) -> Result:
        return cls(Outcome.FAILED, message)

    @classmethod
    def veto(cls, message: str) -> Result:
        return cls(Outcome.VETO, message)

    @classmethod
    def from_changes(cls, changes: Iterable[str], *, unchanged: str = "in step") -> Result:
        """CHANGED with a summary when there are changes, NOCHANGE otherwise."""
        done = tuple(changes)
        if not done:
            return cls.nochange(unchanged)
        return cls.changed("; ".join(done), done)
