"""The guest's serial console: QEMU's ``-serial unix:...,server,nowait`` socket.

A reader thread copies everything the guest prints into a buffer (and a log
file). :meth:`SerialConsole.wait_for` searches it from a cursor that only moves
forward, so each marker is consumed once. :meth:`SerialConsole.run` talks to
the non-interactive shell the guest's init serves on ttyS0 (see
:mod:`vmtestbed.guest`).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import threading
import time
from pathlib import Path

from vmtestbed.errors import ConsoleTimeout, GuestCommandFailed, TestbedError


class SerialConsole:
    """Connected to a QEMU serial socket; connect before ``cont`` to see the whole boot."""

    def __init__(self, path: Path, log_path: Path | None = None, timeout: float = 10.0) -> None:
        self.path = path
        self.log_path = log_path
        self._buf = ""
        self._pos = 0
        self._closed = False
        self._cond = threading.Condition()
        self._sock = _connect(path, timeout)
        self._log = log_path.open("a", encoding="utf-8") if log_path else None
        self._thread = threading.Thread(target=self._reader, name=f"console-{path.name}",
                                        daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            text = data.decode("utf-8", "replace").replace("\r", "")
            with self._cond:
                if not data:
                    self._closed = True
                    self._cond.notify_all()
                    return
                self._buf += text
                self._cond.notify_all()
            if self._log:
                self._log.write(text)
                self._log.flush()

    @property
    def output(self) -> str:
        """Everything the guest printed so far."""
        with self._cond:
            return self._buf

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until ``pattern`` (a regex, multiline) appears after the cursor.

        Only complete lines are searched, so ``size=(\\d+)`` never matches half a
        number that is still arriving. Returns the match and moves the cursor
        past it; raises :class:`ConsoleTimeout` with the console's last lines.
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                complete = self._buf.rfind("\n") + 1
                m = regex.search(self._buf, self._pos, complete) if complete > self._pos else None
                if m:
                    self._pos = m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    tail = "\n".join(self._buf.splitlines()[-15:])
                    why = pattern if not self._closed else f"{pattern} (console closed)"
                    raise ConsoleTimeout(why, timeout, tail)
                self._cond.wait(left)

    def send(self, text: str) -> None:
        self._sock.sendall(text.encode())

    def run(self, command: str, timeout: float = 30.0, check: bool = True) -> str:
        """Run a shell command in the guest and return its output (stdout + stderr).

        The command runs in a subshell with stdin from /dev/null, so it can
        neither read the following commands nor exit the console shell. Keep it
        under ~4000 characters (the tty's canonical line limit).
        """
        if "\n" in command:
            raise TestbedError("guest command must be one line")
        nonce = secrets.token_hex(4)
        # The markers are printed with printf so the literal marker never appears
        # in the command text itself (in case the tty echoes).
        # The end marker starts on a fresh line even when the output lacks a final
        # newline; that extra newline is cut off again below.
        line = (f"printf 'HPB-%s\\n' {nonce}; ( {command} ) </dev/null 2>&1; "
                f"printf '\\nHPE-%s=%d\\n' {nonce} $?\n")
        self.send(line)
        begin = self.wait_for(rf"^HPB-{nonce}\n", timeout)
        end = self.wait_for(rf"^HPE-{nonce}=(\d+)\n", timeout)
        output = self._buf[begin.end():end.start()].removesuffix("\n")
        rc = int(end.group(1))
        if check and rc != 0:
            raise GuestCommandFailed(command, rc, output)
        return output

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=2)
        if self._log:
            self._log.close()
            self._log = None


def _connect(path: Path, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if time.monotonic() > deadline:
                raise TestbedError(f"{path}: cannot connect to the serial console: {exc}") from exc
            time.sleep(0.05)
