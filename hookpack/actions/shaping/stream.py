"""Writes that start while the plan is still being made.

A whole-node run that makes the uplink's qdisc (the first run after boot, or after the
qdisc was deleted) creates everything: thousands of classes and qdiscs, and the kernel
takes as long to make them as Python takes to plan them. Nothing it deletes can clash
with what it creates then (the uplink holds nothing of hookpack's yet; the taps it
cleans are not the taps it shapes), so its creations need not wait for the whole plan:
``OpStream`` is the plan's list of creations that hands every full chunk to a thread,
which sends it on a netlink socket of its own while the plan goes on (the system call
releases the interpreter, so the kernel works on one CPU while Python plans on the
other). ``finish`` sends the rest and returns one reply per operation, in order.

While a stream is open the interpreter switches threads every ``SWITCH_INTERVAL``
seconds instead of every 5 ms: the writer needs the interpreter for a moment between two
system calls (read the acks, take the next chunk), and the planning thread would keep it
for up to the whole interval each time, leaving the kernel idle.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

from hookpack.actions.shaping import tc

SWITCH_INTERVAL = 0.0005


class OpStream(list[Any]):
    """A plan's creations (``Op``s, each with a ``request``), sent in chunks as they are
    appended. Only ``append`` may add to it."""

    def __init__(self, connect: Callable[[], tc.Netlink], chunk: int) -> None:
        super().__init__()
        self._chunk = max(1, chunk)
        self._handed = 0  # operations handed to the writer
        self._chunks: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
        self._replies: list[tc.Reply] = []
        self._error: BaseException | None = None
        self._finished = False
        self.writes = 0
        self._connect = connect
        self._writer = threading.Thread(target=self._write, name="hookpack-stream",
                                        daemon=True)
        self._writer.start()
        self._interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._interval, SWITCH_INTERVAL))

    def append(self, op: Any) -> None:
        super().append(op)
        if len(self) - self._handed >= self._chunk:
            self._hand_over()

    def finish(self) -> list[tc.Reply]:
        """Send what is left, wait for the writer; raises what the writer raised
        (``tc.NetlinkLost``: the caller observes again). Once; later calls return the
        same."""
        if not self._finished:
            self._finished = True
            try:
                self._hand_over()
                self._chunks.put(None)
                self._writer.join()  # bounded: the socket has a timeout
            finally:
                sys.setswitchinterval(self._interval)
        if self._error is not None:
            raise self._error
        return self._replies

    def _hand_over(self) -> None:
        if self._handed < len(self):
            self._chunks.put(self[self._handed:])
            self._handed = len(self)

    def _write(self) -> None:
        try:
            with self._connect() as nl:
                nl.chunk = self._chunk
                try:
                    while (ops := self._chunks.get()) is not None:
                        self._replies += nl.transact([op.request for op in ops])
                finally:
                    self.writes = nl.writes
        except BaseException as err:  # raised again by finish(), in the caller's thread
            self._error = err
            while self._chunks.get() is not None:  # drain: finish() must not block
                pass
