"""The testbed's exceptions: one base class, subclasses carry the subject and cause."""

from __future__ import annotations


class TestbedError(RuntimeError):
    """Base of every error the testbed raises on purpose."""

    __test__ = False  # not a pytest test class despite the name


class CommandFailed(TestbedError):
    """A host command (ip, losetup, ...) exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{' '.join(argv)}: exit {returncode}: {stderr.strip()}")


class QMPError(TestbedError):
    """QEMU answered a QMP command with an error."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        self.command = command
        self.error_class = error_class
        self.desc = desc
        super().__init__(f"QMP {command}: {error_class}: {desc}")


class ConsoleTimeout(TestbedError):
    """The guest did not print what we waited for on its serial console."""

    def __init__(self, what: str, timeout: float, tail: str) -> None:
        self.what = what
        self.tail = tail
        super().__init__(
            f"serial console: no match for {what!r} within {timeout:.0f}s; "
            f"last output:\n{tail}"
        )


class GuestCommandFailed(TestbedError):
    """A shell command run in the guest over the serial console exited non-zero."""

    def __init__(self, command: str, returncode: int, output: str) -> None:
        self.command = command
        self.returncode = returncode
        self.output = output
        super().__init__(f"guest: {command!r} exited {returncode}: {output.strip()[-2000:]}")


class GuestKernelLockup(TestbedError):
    """The guest kernel reported a soft lockup (and panicked: the run was cut short)."""

    def __init__(self, tail: str) -> None:
        self.tail = tail
        super().__init__(f"hostguest: guest kernel soft lockup; console tail:\n{tail}")
