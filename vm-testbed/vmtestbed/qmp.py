"""A minimal synchronous QMP client (JSON lines over a unix socket).

Deliberately raw so tests show exactly what goes over the wire (the hookpack
itself has its own QMP adapter; this one only drives the testbed).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from vmtestbed.errors import QMPError, TestbedError


class QMPClient:
    """One QMP session: greeting, ``qmp_capabilities``, then :meth:`execute`.

    QEMU serves one client per ``-qmp`` socket at a time; the testbed uses the
    ``.qmp`` socket for short calls and leaves ``.kvmd`` alone, as Ganeti does.
    """

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self._sock = _connect(path, timeout)
        self._file = self._sock.makefile("rwb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise TestbedError(f"{path}: not a QMP socket, got {greeting!r}")
        self.execute("qmp_capabilities")

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Send one command; return its ``return`` value or raise :class:`QMPError`."""
        self._next_id += 1
        msg: dict[str, Any] = {"execute": command, "id": self._next_id}
        if arguments:
            msg["arguments"] = arguments
        self._file.write(json.dumps(msg).encode() + b"\n")
        self._file.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != self._next_id:
                continue
            if "error" in reply:
                err = reply["error"]
                raise QMPError(command, err.get("class", "?"), err.get("desc", ""))
            return reply.get("return")

    def _read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise TestbedError(f"{self.path}: QEMU closed the QMP connection")
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._sock.close()

    def __enter__(self) -> QMPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(path: Path, timeout: float) -> socket.socket:
    """Connect, retrying while the socket is missing or busy (QEMU still starting)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if time.monotonic() > deadline:
                raise TestbedError(f"{path}: cannot connect to QMP: {exc}") from exc
            time.sleep(0.05)
