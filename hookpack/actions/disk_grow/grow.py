"""One disk's live grow over an open QMP session: observe, plan, apply, read back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from hookpack.actions.disk_grow.node import Storage
from hookpack.actions.disk_grow.plan import BlockNode, Decision, Plan, find_block, mib, plan_resize
from hookpack.record import record
from hookpack.result import Outcome


class Qmp(Protocol):
    def execute(self, command: str, arguments: dict[str, object] | None = None) -> Any: ...


@record(frozen=True)
class DiskOutcome:
    index: int
    outcome: Outcome
    message: str  # names the disk: "disk 0: ..."
    change: str | None = None
    plan: Plan | None = None
    block: BlockNode | None = None


def grow_disk(qmp: Qmp, index: int, qemu_id: str | None, link: str,
              storage_of: Callable[[BlockNode], Storage], expected_mib: int | None, *,
              apply: bool = True) -> DiskOutcome:
    """Tell QEMU the storage's size for disk ``index`` when it is behind; never shrink.

    The block node is found by ``qemu_id`` (else by ``link``, the storage link QEMU may
    have opened); ``storage_of`` reads the storage of that node. ``expected_mib`` is
    Ganeti's new size (GANETI_POST_INSTANCE_DISK<N>_SIZE), None for a manual run.
    ``apply=False`` plans only (dry run).
    """
    subject = f"disk {index}"
    block = find_block(qmp.execute("query-block"), qemu_id, link)
    if block is None:
        return DiskOutcome(index, Outcome.FAILED,
                           f"{subject}: QEMU has no block device {qemu_id or '?'} "
                           f"(nor one opened from {link})")
    storage = storage_of(block)
    plan = plan_resize(block.size, storage.size, storage.is_file, expected_mib)
    where = f"{block.key} {block.name}"
    if plan.decision is Decision.IN_STEP:
        return DiskOutcome(index, Outcome.NOCHANGE,
                           f"{subject}: QEMU already sees {mib(block.size)}", plan=plan,
                           block=block)
    if plan.decision is Decision.SHORT:
        return DiskOutcome(index, Outcome.FAILED,
                           f"{subject} ({where}): {storage.path}: {plan.reason}", plan=plan,
                           block=block)
    if plan.decision is Decision.REFUSE:
        return DiskOutcome(index, Outcome.FAILED, f"{subject}: {plan.reason}", plan=plan,
                           block=block)
    note = f" ({plan.reason})" if plan.reason else ""
    change = f"block_resize {where}: {mib(block.size)} -> {mib(plan.target)}"
    if not apply:
        return DiskOutcome(index, Outcome.NOCHANGE,
                           f"{subject}: would grow {mib(block.size)} -> {mib(plan.target)} "
                           f"({where}){note}", plan=plan, block=block)
    qmp.execute("block_resize", block.resize_args(plan.target))
    # Read back: the same node, found by the name block_resize was given.
    after = find_block(qmp.execute("query-block"), block.name, link)
    seen = after.size if after is not None else -1
    if seen < plan.target:
        return DiskOutcome(index, Outcome.FAILED,
                           f"{subject}: block_resize to {mib(plan.target)} accepted but QEMU "
                           f"reports {mib(seen) if seen >= 0 else 'no device'}",
                           change=change, plan=plan, block=block)
    return DiskOutcome(index, Outcome.CHANGED,
                       f"{subject}: grown {mib(block.size)} -> {mib(plan.target)} "
                       f"({where}){note}", change=change, plan=plan, block=block)
