"""A short, bounded QMP session with a running QEMU (qemu.qmp underneath).

Ganeti's KVM code connects to `ctrl/<instance>.qmp` itself for short calls
(shared/reference/ganeti-hooks.md). QEMU serves one QMP client per socket at a time:
a second client's connect() succeeds but the greeting only comes once the first
client leaves, so a busy socket looks like a hang. Every step therefore has a short
timeout, and the whole session is retried until the caller's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hookpack.errors import ActionError

ATTEMPT_TIMEOUT = 1.0  # one connect + greeting + negotiation
RETRY_PAUSE = 0.1


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


class QmpSession:
    """Use as a context manager: ``with QmpSession(path, deadline_s) as qmp: qmp.execute(...)``."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        self.socket_path = socket_path
        self._give_up = time.monotonic() + max(0.0, timeout)
        self._loop = asyncio.new_event_loop()
        self._client: Any = None

    def __enter__(self) -> QmpSession:
        try:
            self._connect()
        except BaseException:
            self._loop.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._client is not None:
                self._run(self._client.disconnect(), 1.0)
        except Exception:  # noqa: S110 - leaving anyway; QEMU drops the client
            pass
        finally:
            self._loop.close()

    def remaining(self) -> float:
        return max(0.0, self._give_up - time.monotonic())

    def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        from qemu.qmp import ExecuteError

        if self.remaining() <= 0:
            raise QmpBusy(f"{self.socket_path}: no time left for QMP {command}")
        try:
            return self._run(self._client.execute(command, arguments), self.remaining())
        except ExecuteError as err:
            raise QmpError(command, str(err.error_class), _desc(err)) from err
        except TimeoutError:
            raise QmpBusy(f"{self.socket_path}: QEMU did not answer {command} in time") from None
        except (OSError, EOFError, ConnectionError) as err:
            raise QmpUnavailable(f"{self.socket_path}: QEMU went away during {command}: "
                                 f"{err}") from err
        except Exception as err:
            if type(err).__module__.startswith("qemu.qmp"):
                raise QmpUnavailable(f"{self.socket_path}: QMP session broke during "
                                     f"{command}: {err}") from err
            raise

    def _connect(self) -> None:
        from qemu.qmp import ConnectError, QMPClient

        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
        attempts = 0
        while True:
            attempts += 1
            if not self.socket_path.exists():
                raise QmpUnavailable(f"{self.socket_path}: no QMP socket (instance not running "
                                     "on this node?)")
            client = QMPClient("hookpack")
            try:
                self._run(client.connect(str(self.socket_path)),
                          min(ATTEMPT_TIMEOUT, self.remaining()))
                self._client = client
                return
            except TimeoutError:
                self._abandon(client)
            except ConnectError as err:
                self._abandon(client)
                if _refused(err):
                    raise QmpUnavailable(f"{self.socket_path}: QEMU does not accept connections "
                                         "(not running?)") from None
            if self.remaining() <= RETRY_PAUSE:
                raise QmpBusy(f"{self.socket_path}: QMP socket stayed busy for {attempts} "
                              "attempt(s) until the deadline (another client connected?)")
            time.sleep(RETRY_PAUSE)

    def _abandon(self, client: Any) -> None:
        with contextlib.suppress(Exception):
            self._run(client.disconnect(), 0.5)

    def _run(self, coro: Any, timeout: float) -> Any:
        return self._loop.run_until_complete(asyncio.wait_for(coro, max(0.01, timeout)))


def _refused(err: Exception) -> bool:
    cause = getattr(err, "exc", None) or err.__cause__
    return isinstance(cause, ConnectionRefusedError | FileNotFoundError)


def _desc(err: Exception) -> str:
    error = getattr(err, "error", None)
    inner = getattr(error, "error", None)
    return str(getattr(inner, "desc", "") or err)


@contextlib.contextmanager
def session(socket_path: Path, timeout: float) -> Iterator[QmpSession]:
    with QmpSession(socket_path, timeout) as qmp:
        yield qmp
