"""Pure logic of a live disk grow: find the QEMU block node, compare sizes, decide.

No I/O here: the inputs are what QEMU's ``query-block`` returned and what the storage
and Ganeti say, so every rule is unit-tested on recorded QEMU 7.2 answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from hookpack.record import record

MIB = 1 << 20
SECTOR = 512


@record(frozen=True)
class BlockNode:
    """One disk as QEMU's ``query-block`` shows it, and how ``block_resize`` names it.

    Ganeti 3.0 gives disks as ``-drive ...,id=disk-<uuid3>``: the BlockBackend has that
    name, ``block_resize`` takes it as ``device``. Ganeti 3.1+ uses ``-blockdev
    node-name=disk-<uuid3>``: the backend is anonymous (``device`` is empty) and the
    node is named, ``block_resize`` takes ``node-name``.
    (shared/reference/ganeti-hooks.md; tests/actions/fixtures/query-block-*.json)
    """

    key: str  # "device" or "node-name"
    name: str
    size: int  # bytes, QEMU's virtual size
    file: str

    def resize_args(self, size: int) -> dict[str, object]:
        return {self.key: self.name, "size": size}


def find_block(blocks: Iterable[Mapping[str, Any]], qemu_id: str | None,
               link: str | None) -> BlockNode | None:
    """The block node of one disk: by Ganeti's id (3.0 ``device``, 3.1 ``node-name``),
    else by the ``instance-disks`` link QEMU opened, else by the qdev path of the id."""
    entries = [b for b in blocks if isinstance(b, Mapping)
               and isinstance(b.get("inserted"), Mapping)]
    if qemu_id:
        for b in entries:
            if b.get("device") == qemu_id:
                return _node(b, "device", qemu_id)
        for b in entries:
            if b["inserted"].get("node-name") == qemu_id:
                return _node(b, "node-name", qemu_id)
    fallback = None
    if link:
        fallback = next((b for b in entries if b["inserted"].get("file") == link), None)
    if fallback is None and qemu_id:
        fallback = next((b for b in entries
                         if f"/peripheral/{qemu_id}/" in str(b.get("qdev", ""))), None)
    if fallback is None:
        return None
    if fallback.get("device"):
        return _node(fallback, "device", str(fallback["device"]))
    return _node(fallback, "node-name", str(fallback["inserted"].get("node-name", "")))


def _node(block: Mapping[str, Any], key: str, name: str) -> BlockNode:
    inserted = block["inserted"]
    image = inserted.get("image") or {}
    return BlockNode(key=key, name=name, size=int(image.get("virtual-size", 0)),
                     file=str(inserted.get("file", "")))


class Decision(StrEnum):
    RESIZE = "resize"
    IN_STEP = "in-step"
    REFUSE = "refuse"
    SHORT = "short"  # the storage here is smaller than the size Ganeti recorded


@record(frozen=True)
class Plan:
    decision: Decision
    current: int  # what QEMU sees, bytes
    target: int  # what the storage holds, bytes
    reason: str = ""


def plan_resize(current: int, storage: int, is_file: bool, expected_mib: int | None) -> Plan:
    """Decide whether QEMU must learn the storage's size.

    - The target is the storage's own size (never Ganeti's number: for a file,
      ``block_resize`` makes QEMU truncate the file to the size it is given).
    - QEMU already at the target (a repeat run, or Ganeti 3.1+ did it): nothing to do.
    - Never shrink.
    - Data-loss guard: for a file, when the file and Ganeti disagree on the size,
      refuse; something else is going on (e.g. a later grow, a wrong file).
    - Storage smaller than what Ganeti recorded (a SAN LUN not yet rescanned on this
      node, an LV not yet extended): SHORT, a failure, even when QEMU is in step with
      the storage; nothing is written.
    - For a block device QEMU only learns the size (it refuses to go past the end):
      a device larger than Ganeti's number (LVM rounds up to whole extents) is used
      as it is, so QEMU ends at the size the storage really has.
    """
    in_step = current == _sectors(storage)
    if storage < current and not in_step:
        return Plan(Decision.REFUSE, current, storage,
                    f"storage is {mib(storage)}, smaller than QEMU's {mib(current)}; "
                    "never shrinking")
    if expected_mib is not None and storage < expected_mib * MIB:
        return Plan(Decision.SHORT, current, storage,
                    f"storage is {mib(storage)}, smaller than the {expected_mib} MiB Ganeti "
                    f"recorded (a LUN not rescanned, an LV not extended?); QEMU left at "
                    f"{mib(current)}")
    if in_step:
        return Plan(Decision.IN_STEP, current, storage)
    if expected_mib is not None and expected_mib * MIB != storage:
        said = f"Ganeti says {expected_mib} MiB"
        if is_file:
            return Plan(Decision.REFUSE, current, storage,
                        f"file is {mib(storage)} but {said}; refusing block_resize "
                        "(QEMU truncates the file to the size it is given)")
        return Plan(Decision.RESIZE, current, storage, f"device is {mib(storage)}, {said}")
    return Plan(Decision.RESIZE, current, storage)


def _sectors(size: int) -> int:
    # QEMU reports a raw image's size in whole 512-byte sectors, rounded up.
    return -(-size // SECTOR) * SECTOR


def mib(size: int) -> str:
    """A byte count as MiB for messages: ``128 MiB``, or ``128.5 MiB`` when not whole."""
    if size % MIB == 0:
        return f"{size // MIB} MiB"
    return f"{size / MIB:.1f} MiB"
