"""One line per action run, to stderr (Ganeti's job log) and syslog/journald."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from hookpack.result import Outcome, Result

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_LINE = 600
_PRIORITY = {Outcome.FAILED: "err", Outcome.TIMEOUT: "err", Outcome.VETO: "warning"}


class RunLog:
    def __init__(self, settings: Mapping[str, Any], stream: TextIO | None = None) -> None:
        self._settings = settings
        self._stream = stream if stream is not None else sys.stderr
        self._secrets: set[str] = set()
        self._syslog_open = False

    def redact(self, secret: str) -> None:
        """Never let ``secret`` reach a log line (replaced by ***)."""
        if secret and len(secret) >= 4:
            self._secrets.add(secret)

    def action(self, name: str, subject: str, result: Result, where: str, ms: int) -> str:
        count = len(result.changes)
        detail = f"{where}, {count} change{'s' if count != 1 else ''}, {ms} ms"
        target = f" {subject}" if subject else ""
        line = f"hookpack {name}:{target}: {result.outcome.value}: {result.message} ({detail})"
        self.write(line, _PRIORITY.get(result.outcome, "info"))
        return line

    def write(self, line: str, priority: str = "info") -> None:
        line = self.clean(line)
        if self._settings.get("stderr", True):
            self._stream.write(line + "\n")
            self._stream.flush()
        if self._settings.get("syslog", False):
            self._syslog(line, priority)
        if self._settings.get("file"):
            self._append_file(str(self._settings["file"]), line)

    def clean(self, line: str) -> str:
        for secret in self._secrets:
            line = line.replace(secret, "***")
        line = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", line)
        return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."

    def _syslog(self, line: str, priority: str) -> None:
        import syslog

        if not os.path.exists("/dev/log"):
            return
        if not self._syslog_open:
            facility = getattr(syslog, "LOG_" + str(self._settings.get("syslog_facility",
                                                                       "daemon")).upper())
            syslog.openlog("hookpack", syslog.LOG_PID, facility)
            self._syslog_open = True
        syslog.syslog(getattr(syslog, "LOG_" + priority.upper()), line)

    @staticmethod
    def _append_file(path: str, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, f"{stamp} {line}\n".encode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)
        except OSError as err:
            sys.stderr.write(f"hookpack: cannot append to log file {path}: {err.strerror}\n")
