"""pytest fixtures for :mod:`vmtestbed.hostguest` (import them into a conftest).

- ``host_guest_image`` (session): the cached stage-1 initramfs + Debian kernel.
- ``run_in_host_guest``: ``run_in_host_guest(argv, **kwargs) -> GuestRun``; boots the
  stock-kernel guest with this machine's root shared read-only, runs ``argv``,
  powers off (QEMU and virtiofsd are killed by pid in any case). A run cut short by a
  guest kernel soft lockup is run once more, with a warning that carries the first
  run's console (the lockup's stack). Seen once in CI (TCG guest, a pytest process stuck
  in the guest kernel; not reproduced in 5 runs here); two in a row fail the test.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from vmtestbed.errors import GuestKernelLockup
from vmtestbed.hostguest import GuestRun, HostGuestImage, build_image, run_in_guest

RunInHostGuest = Callable[..., GuestRun]


@pytest.fixture(scope="session")
def host_guest_image() -> HostGuestImage:
    return build_image()


def run_once_more_on_lockup(image: HostGuestImage, argv: Sequence[str],
                            **kwargs: Any) -> GuestRun:
    """:func:`run_in_guest`, run a second time when the first hit a soft lockup."""
    try:
        return run_in_guest(argv, image=image, **kwargs)
    except GuestKernelLockup as lockup:
        warnings.warn(f"guest soft lockup, running once more: {lockup}", stacklevel=2)
    return run_in_guest(argv, image=image, **kwargs)


@pytest.fixture
def run_in_host_guest(host_guest_image: HostGuestImage) -> RunInHostGuest:
    def run(argv: Sequence[str], **kwargs: Any) -> GuestRun:
        return run_once_more_on_lockup(host_guest_image, argv, **kwargs)

    return run
