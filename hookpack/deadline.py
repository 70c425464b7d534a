"""Bounded run time: a hook must never hold Ganeti's locks for long.

Ganeti has no per-script timeout and holds the job's locks while hooks run
(shared/reference/ganeti-hooks.md). Actions run in worker threads the dispatcher can
abandon; a watchdog thread ends the process at the deadline whatever the action is
blocked on, and SIGALRM with its default action is the last resort if even the
watchdog cannot run (a C extension holding the GIL).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from hookpack.record import field, record

T = TypeVar("T")
Clock = Callable[[], float]


@record
class Deadline:
    seconds: float
    clock: Clock = time.monotonic
    start: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.start = self.clock()

    @property
    def at(self) -> float:
        return self.start + self.seconds

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def elapsed_ms(self) -> int:
        return int((self.clock() - self.start) * 1000)


@record
class Bounded(Generic[T]):
    finished: bool
    value: T | None = None
    error: BaseException | None = None


def run_bounded(fn: Callable[[], T], timeout: float, name: str = "action") -> Bounded[T]:
    """Run ``fn`` in a daemon thread; give up waiting after ``timeout`` seconds.

    An abandoned thread keeps running until the process exits (the dispatcher exits
    right after the last action), so it can never hold the hook past its deadline.
    """
    box: Bounded[T] = Bounded(finished=False)

    def target() -> None:
        try:
            box.value = fn()
        except BaseException as err:
            box.error = err
        box.finished = True

    thread = threading.Thread(target=target, name=f"hookpack-{name}", daemon=True)
    thread.start()
    thread.join(max(0.0, timeout))
    return box


class Watchdog:
    """Ends the process at the deadline, with a last word on stderr."""

    def __init__(self, deadline: Deadline, exit_code: int, last_word: Callable[[], str]) -> None:
        self._deadline = deadline
        self._exit_code = exit_code
        self._last_word = last_word
        self._timer = threading.Timer(deadline.remaining() + 0.25, self._fire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()
        # Backstop needing no Python at all: SIGALRM's default action ends the process.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(max(1, math.ceil(self._deadline.remaining() + 1.0)))

    def stop(self) -> None:
        self._timer.cancel()
        signal.alarm(0)

    def _fire(self) -> None:
        try:
            sys.stderr.write(self._last_word() + "\n")
            sys.stderr.flush()
        finally:
            os._exit(self._exit_code)
