"""A short, bounded QMP session with a running QEMU.

Why not qemu.qmp: it is asyncio-based, and importing asyncio plus the library costs
60-125 ms on this class of machine, on every hook run that talks to QEMU (disk-grow's
whole budget is 150 ms). QMP is a line protocol (a JSON greeting, `qmp_capabilities`,
then one JSON reply per command, with asynchronous events interleaved), so a small
synchronous client over a Unix socket does the job with `socket` and `json` only.

Ganeti's KVM code connects to `ctrl/<instance>.qmp` itself for short calls
(shared/reference/ganeti-hooks.md). QEMU serves one QMP client per socket at a time:
a second client's connect() succeeds but the greeting only comes once the first
client leaves, so a busy socket looks like a hang. Every step therefore has a short
timeout, and the whole session is retried until the caller's deadline.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hookpack.errors import ActionError

ATTEMPT_TIMEOUT = 1.0  # one connect + greeting + negotiation
RETRY_PAUSE = 0.1
MAX_MESSAGE = 16 << 20


class QmpError(ActionError):
    """QEMU answered a command with an error."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        self.command = command
        self.error_class = error_class
        self.desc = desc
        super().__init__(f"QMP {command} failed: {error_class}: {desc}")


class QmpUnavailable(ActionError):
    """No QEMU to talk to (socket missing, refused, or QEMU died): a clean skip."""


class QmpBusy(ActionError):
    """The socket kept being busy (another client) until the deadline."""


class _Timeout(Exception):
    pass


class _Channel:
    """One connected QMP socket: JSON messages, one per line, read with a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def send(self, message: Mapping[str, object]) -> None:
        self._sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self, give_up: float) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            left = give_up - time.monotonic()
            if left <= 0:
                raise _Timeout
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise _Timeout from None
            if not chunk:
                raise EOFError("QEMU closed the QMP connection")
            self._buffer += chunk
            if len(self._buffer) > MAX_MESSAGE:
                raise EOFError("QMP message too large")
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise EOFError("QMP sent something that is not a JSON object")
        return message

    def reply(self, give_up: float) -> dict[str, Any]:
        """The next reply, skipping asynchronous events."""
        while True:
            message = self.receive(give_up)
            if "event" not in message:
                return message

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


class QmpSession:
    """Use as a context manager: ``with QmpSession(path, deadline_s) as qmp: qmp.execute(...)``."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        self.socket_path = socket_path
        self._give_up = time.monotonic() + max(0.0, timeout)
        self._channel: _Channel | None = None

    def __enter__(self) -> QmpSession:
        self._connect()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._channel is not None:
            self._channel.close()

    def remaining(self) -> float:
        return max(0.0, self._give_up - time.monotonic())

    def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        assert self._channel is not None, "use QmpSession as a context manager"
        if self.remaining() <= 0:
            raise QmpBusy(f"{self.socket_path}: no time left for QMP {command}")
        request: dict[str, object] = {"execute": command}
        if arguments:
            request["arguments"] = dict(arguments)
        try:
            self._channel.send(request)
            reply = self._channel.reply(self._give_up)
        except _Timeout:
            raise QmpBusy(f"{self.socket_path}: QEMU did not answer {command} in time") from None
        except (OSError, EOFError, ValueError) as err:
            raise QmpUnavailable(f"{self.socket_path}: QEMU went away during {command}: "
                                 f"{err}") from err
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            raise QmpError(command, str(error.get("class", "?")), str(error.get("desc", "")))
        return reply.get("return")

    def _connect(self) -> None:
        attempts = 0
        while True:
            attempts += 1
            if not self.socket_path.exists():
                raise QmpUnavailable(f"{self.socket_path}: no QMP socket (instance not running "
                                     "on this node?)")
            try:
                self._channel = self._attempt()
                return
            except _Timeout:
                pass
            if self.remaining() <= RETRY_PAUSE:
                raise QmpBusy(f"{self.socket_path}: QMP socket stayed busy for {attempts} "
                              "attempt(s) until the deadline (another client connected?)")
            time.sleep(RETRY_PAUSE)

    def _attempt(self) -> _Channel:
        """One connect + greeting + negotiation; _Timeout when the socket is busy."""
        channel = self._open()
        try:
            self._negotiate(channel, min(time.monotonic() + ATTEMPT_TIMEOUT, self._give_up))
        except _Timeout:
            channel.close()
            raise
        except (OSError, EOFError, ValueError) as err:
            channel.close()
            raise QmpUnavailable(f"{self.socket_path}: QMP handshake failed: {err}") from err
        return channel

    def _open(self) -> _Channel:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.05, min(ATTEMPT_TIMEOUT, self.remaining())))
        try:
            sock.connect(str(self.socket_path))
        except (TimeoutError, BlockingIOError):
            # EAGAIN: QEMU's listen backlog is full because another client holds the
            # socket. Busy, not dead: the caller retries.
            sock.close()
            raise _Timeout from None
        except OSError as err:
            sock.close()
            if err.errno in (errno.ECONNREFUSED, errno.ENOENT):
                raise QmpUnavailable(f"{self.socket_path}: QEMU does not accept connections "
                                     "(not running?)") from None
            raise QmpUnavailable(f"{self.socket_path}: cannot connect: {err.strerror}") from None
        return _Channel(sock)

    @staticmethod
    def _negotiate(channel: _Channel, give_up: float) -> None:
        greeting = channel.receive(give_up)
        if "QMP" not in greeting:
            raise ValueError(f"no QMP greeting: {str(greeting)[:80]}")
        channel.send({"execute": "qmp_capabilities"})
        answer = channel.reply(give_up)
        if "return" not in answer:
            raise ValueError(f"qmp_capabilities refused: {str(answer)[:80]}")


@contextlib.contextmanager
def session(socket_path: Path, timeout: float) -> Iterator[QmpSession]:
    with QmpSession(socket_path, timeout) as qmp:
        yield qmp
