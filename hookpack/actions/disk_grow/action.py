"""Live disk grow: after grow-disk, tell the running QEMU the disk's new size (block_resize)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from hookpack.action import ActionContext, Paths
from hookpack.actions.disk_grow import node
from hookpack.actions.disk_grow.grow import DiskOutcome, grow_disk
from hookpack.actions.disk_grow.plan import BlockNode, Decision, mib
from hookpack.config import Field
from hookpack.deadline import Deadline
from hookpack.errors import ActionError, BadInput
from hookpack.result import Outcome, Result
from hookpack.validate import device_index, instance_name

if TYPE_CHECKING:
    import argparse

SETTINGS = {
    "qmp_timeout": Field(float, 10.0, "Longest wait, in seconds, for QEMU's QMP socket when "
                         "Ganeti holds it (always capped by the hook deadline).",
                         minimum=0.5, maximum=600.0),
}
# Leave this much of the hook deadline for the result line and exit.
DEADLINE_MARGIN = 0.5


def run(ctx: ActionContext) -> Result:
    env = ctx.env
    instance = env.instance_after
    grow = env.disk_grow
    if instance is None or grow is None or grow.disk is None:
        return Result.skipped("no instance or disk index in the environment")
    name = instance_name(instance.name)
    index = device_index(grow.disk, "disk index")
    disk = next((d for d in instance.disks if d.index == index), None)
    pid = node.qemu_pid(ctx.paths, name)
    if pid is None:
        return Result.skipped("instance not running on this node (no live QEMU)")
    timeout = min(float(ctx.settings["qmp_timeout"]),
                  ctx.deadline.remaining() - DEADLINE_MARGIN)
    outcome = _grow_one(ctx.paths, name, pid, index, disk.qemu_id if disk else None,
                        disk.size_mib if disk else None, timeout, apply=True)
    return _result(outcome)


def _result(outcome: DiskOutcome) -> Result:
    if outcome.outcome is Outcome.CHANGED:
        return Result.changed(outcome.message, [outcome.change or outcome.message])
    return Result(outcome.outcome, outcome.message)


def _grow_one(paths: Paths, name: str, pid: int, index: int, qemu_id: str | None,
              expected_mib: int | None, timeout: float, *, apply: bool) -> DiskOutcome:
    """One disk, its own QMP session. QMP trouble becomes an outcome, never an exception."""
    from hookpack.adapters.qmp import QmpBusy, QmpError, QmpUnavailable

    link = node.disk_link(paths, name, index)
    try:
        with _qmp(paths, name, timeout) as qmp:
            return grow_disk(qmp, index, qemu_id, str(link),
                             _storage_reader(paths, name, pid, index, qemu_id), expected_mib,
                             apply=apply)
    except QmpUnavailable as err:
        return DiskOutcome(index, Outcome.SKIPPED, f"disk {index}: no QEMU to talk to ({err})")
    except QmpBusy as err:
        return DiskOutcome(index, Outcome.FAILED, f"disk {index}: {err}; run `hookpack disk "
                           f"resize {name} --disk {index}` later")
    except QmpError as err:
        return DiskOutcome(index, Outcome.FAILED, f"disk {index}: {err}")
    except ActionError as err:
        return DiskOutcome(index, Outcome.FAILED, f"disk {index}: {err}")


def _storage_reader(paths: Paths, name: str, pid: int, index: int,
                    qemu_id: str | None) -> Callable[[BlockNode], node.Storage]:
    def read(block: BlockNode) -> node.Storage:
        where = node.storage_link(paths, name, pid, index, qemu_id or block.name, block.file)
        return node.read_storage(where, paths.sysfs_root)
    return read


@contextmanager
def _qmp(paths: Paths, name: str, timeout: float) -> Iterator[Any]:
    from hookpack.adapters.qmp import QmpUnavailable, session

    sock = node.qmp_socket(paths, name)
    if not sock.exists():
        raise QmpUnavailable(f"{sock}: no QMP socket")
    with session(sock, max(0.1, timeout)) as qmp:
        yield qmp


# -- CLI: hookpack disk resize / check --------------------------------------------------

def add_cli(sub: Any) -> None:
    from hookpack.config import add_config_arg

    disk = sub.add_parser("disk", help="live disk sizes of running instances (disk-grow)")
    actions = disk.add_subparsers(metavar="ACTION")
    p = actions.add_parser("resize", help="tell a running QEMU its disks' storage size "
                           "(what the disk-grow hook does)")
    p.add_argument("instance")
    p.add_argument("--disk", help="disk index (default: every disk)")
    p.add_argument("--dry-run", action="store_true", help="show what would change")
    p.add_argument("--json", action="store_true", help="the result as one JSON object")
    add_config_arg(p)
    p.set_defaults(handler=cmd_resize)
    p = actions.add_parser("check", help="compare QEMU's and the storage's size of every "
                           "disk of every instance running on this node")
    p.add_argument("--json", action="store_true", help="the result as one JSON object")
    add_config_arg(p)
    p.set_defaults(handler=cmd_check)


def _cli_setup(ns: argparse.Namespace) -> tuple[Paths, Deadline, float]:
    from hookpack.config import load

    cfg = load(ns)
    settings = cfg.section("disk_grow", SETTINGS)
    return Paths.from_config(cfg), Deadline(cfg.deadline), float(settings["qmp_timeout"])


def cmd_resize(ns: argparse.Namespace) -> int:
    paths, deadline, qmp_timeout = _cli_setup(ns)
    name = instance_name(ns.instance)
    pid = node.qemu_pid(paths, name)
    if pid is None:
        raise BadInput(f"instance {name}: not running on this node (no live QEMU)")
    disks = node.runtime_disks(paths, name)
    if ns.disk is not None:
        index = device_index(ns.disk, "disk index")
        disks = [d for d in disks if d.index == index]
        if not disks:
            raise BadInput(f"instance {name}: has no disk {index}")
    worst = 0
    rows = []
    for disk in disks:
        timeout = min(qmp_timeout, deadline.remaining())
        outcome = _grow_one(paths, name, pid, disk.index, disk.qemu_id, None, timeout,
                            apply=not ns.dry_run)
        rows.append({"instance": name, "disk": disk.index, "outcome": outcome.outcome.value,
                     "message": outcome.message})
        if not ns.json:
            print(f"{name}: {outcome.outcome.value}: {outcome.message}")
        if outcome.outcome is Outcome.FAILED:
            worst = 1
    if ns.json:
        print(json.dumps({"disks": rows}, sort_keys=True))
    return worst


def cmd_check(ns: argparse.Namespace) -> int:
    from hookpack.adapters.qmp import QmpBusy, QmpError, QmpUnavailable

    paths, deadline, qmp_timeout = _cli_setup(ns)
    drift = 0
    rows: list[dict[str, Any]] = []
    for name, pid in node.running_instances(paths):
        try:
            disks = node.runtime_disks(paths, name)
            with _qmp(paths, name, min(qmp_timeout, deadline.remaining())) as qmp:
                for disk in disks:
                    outcome = _check_disk(qmp, name, pid, disk, paths)
                    drift |= outcome.outcome is not Outcome.NOCHANGE
                    rows.append({"instance": name, "disk": disk.index,
                                 "ok": outcome.outcome is Outcome.NOCHANGE,
                                 "message": outcome.message})
        except (QmpUnavailable, QmpBusy, QmpError, ActionError) as err:
            rows.append({"instance": name, "disk": None, "ok": False,
                         "message": f"cannot check: {err}"})
            drift = 1
    if ns.json:
        print(json.dumps({"disks": rows}, sort_keys=True))
    else:
        for row in rows:
            print(f"{row['instance']}: {row['message']}")
    return 1 if drift else 0


def _check_disk(qmp: Any, name: str, pid: int, disk: node.RuntimeDisk,
                paths: Paths) -> DiskOutcome:
    link = node.disk_link(paths, name, disk.index)
    try:
        outcome = grow_disk(qmp, disk.index, disk.qemu_id, str(link),
                            _storage_reader(paths, name, pid, disk.index, disk.qemu_id), None,
                            apply=False)
    except ActionError as err:
        return DiskOutcome(disk.index, Outcome.FAILED, f"disk {disk.index}: {err}")
    if outcome.plan is None or outcome.block is None:
        return outcome
    plan = outcome.plan
    label = f"disk {disk.index} ({outcome.block.name}): QEMU {mib(plan.current)}, " \
            f"storage {mib(plan.target)}"
    if plan.decision is Decision.IN_STEP:
        return DiskOutcome(disk.index, Outcome.NOCHANGE, f"{label}: ok", plan=plan)
    if plan.decision is Decision.RESIZE:
        return DiskOutcome(disk.index, Outcome.FAILED, f"{label}: DRIFT; fix: hookpack disk "
                           f"resize {name} --disk {disk.index}", plan=plan)
    return DiskOutcome(disk.index, Outcome.FAILED, f"{label}: {plan.reason}", plan=plan)


# -- hookpack status ---------------------------------------------------------------------

def status(cfg: Any, paths: Paths, instance_names: list[str]) -> dict[str, Any]:
    """`hookpack status`: each disk's size in QEMU vs its storage (read-only)."""
    from hookpack.actions.disk_grow import status as dstatus
    from hookpack.adapters.qmp import QmpUnavailable, session
    from hookpack.status import QMP_TIMEOUT, Part

    settings = cfg.section("disk_grow", SETTINGS)
    timeout = min(QMP_TIMEOUT, float(settings["qmp_timeout"]))
    out: dict[str, Any] = {}
    for name in instance_names:
        def query_block(name: str = name) -> Any:
            sock = node.qmp_socket(paths, name)
            if not sock.exists():
                raise QmpUnavailable(f"{sock}: no QMP socket")
            with session(sock, timeout) as qmp:
                return qmp.execute("query-block")
        try:
            view = dstatus.observe(paths, name, query_block)
        except ActionError as err:
            out[name] = Part({"disks": []}, error=str(err))
            continue
        out[name] = Part(view.to_json(), [dstatus.describe(d) for d in view.disks],
                         error=view.error)
    return out
