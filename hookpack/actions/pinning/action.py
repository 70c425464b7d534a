"""NUMA-aware 1:1 vCPU pinning of the instance this node now runs (and `hookpack pinning`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from hookpack.action import ActionContext, Paths
from hookpack.config import Field, add_config_arg
from hookpack.errors import BadInput, ConfigError
from hookpack.result import Result

if TYPE_CHECKING:  # the hot path imports these lazily
    import argparse

    from hookpack.actions.pinning.allocate import Plan, Policy
    from hookpack.actions.pinning.node import Outcome

SETTINGS = {
    "smt": Field(str, "avoid", "SMT siblings: `avoid` never lets two instances share a "
                 "core's hardware threads; `allow` fills free threads of partly used cores.",
                 choices=("avoid", "allow")),
    "placement": Field(str, "pack", "NUMA node choice: `pack` the fullest node that fits "
                       "(keeps whole nodes free for big instances); `spread` the emptiest.",
                       choices=("pack", "spread")),
    "reserved_cpus": Field(str, "", "Host CPUs no instance thread may use (cpulist, e.g. "
                           "`0-1,32-33`). Empty: none.", pattern=r"[0-9,:\- ]*"),
    "emulator_cpus": Field(int, 1, "Non-dedicated CPUs that must stay free on the chosen "
                           "NUMA node for emulator and I/O threads (0: they may share the "
                           "instance's own vCPU CPUs when nothing else is left).",
                           minimum=0, maximum=64),
    "floating": Field(str, "anywhere", "Where an instance that gets no 1:1 pinning "
                      "(overcommit, does not fit) runs: `anywhere` on all usable CPUs not "
                      "dedicated to others; `numa_node` confined to the node with most such "
                      "CPUs.", choices=("anywhere", "numa_node")),
    "dedicated_cpus": Field(str, "", "CPUs vCPUs may be pinned to 1:1 (cpulist, like Nova's "
                            "`cpu_dedicated_set`); may name `isolcpus` CPUs. Empty: every "
                            "online CPU that is not isolated.", pattern=r"[0-9,:\- ]*"),
    "shared_cpus": Field(str, "", "CPUs for emulator, I/O and vhost threads and floating "
                         "instances (cpulist, like Nova's `cpu_shared_set`); isolated CPUs "
                         "are never used for them. Empty: every online CPU that is not "
                         "isolated.", pattern=r"[0-9,:\- ]*"),
    "memory": Field(str, "move", "Guest memory of an instance pinned to a NUMA node: `move` "
                    "moves its resident pages to that node (move_pages(2)) after the "
                    "threads are placed; `off` leaves memory where it is.",
                    choices=("move", "off")),
    "lock_timeout": Field(float, 5.0, "Seconds to wait for the node-wide pinning lock "
                          "(bounded by the hook deadline).", minimum=0.1, maximum=120),
}

QMP_MARGIN = 1.0  # seconds of the deadline kept for planning and applying
MEMORY_MARGIN = 0.5  # seconds of the deadline kept after moving memory


def policy_from(settings: Mapping[str, Any]) -> Policy:
    from hookpack.actions.pinning.allocate import Policy
    from hookpack.actions.pinning.topology import parse_cpulist

    sets: dict[str, frozenset[int] | None] = {}
    for key in ("reserved_cpus", "dedicated_cpus", "shared_cpus"):
        try:
            text = settings.get(key, "")
            sets[key] = parse_cpulist(text) if text.strip() else None
        except BadInput as err:
            raise ConfigError(str(err), key=f"pinning.{key}") from None
    return Policy(smt=settings["smt"], placement=settings["placement"],
                  reserved=sets["reserved_cpus"] or frozenset(),
                  emulator_cpus=settings["emulator_cpus"], floating=settings["floating"],
                  dedicated_set=sets["dedicated_cpus"], shared_set=sets["shared_cpus"])


def run(ctx: ActionContext) -> Result:
    from hookpack.validate import instance_name

    inst = ctx.env.instance_after or ctx.env.instance
    if inst is None or not inst.name:
        return Result.skipped("no instance in the environment")
    name = instance_name(inst.name)
    mask = (inst.hv.get("cpu_mask") or "all").strip()
    if mask != "all":
        return Result.skipped(f"cpu_mask {mask!r} set: left alone")
    outcome = pin(ctx.paths, name, policy_from(ctx.settings), ctx.deadline.remaining,
                  ctx.settings["lock_timeout"], dry_run=False,
                  move_memory=ctx.settings.get("memory", "move") == "move")
    if isinstance(outcome, Result):
        return outcome
    return _result(outcome)


def pin(paths: Paths, name: str, policy: Policy, remaining: Callable[[], float],
        lock_timeout: float, dry_run: bool, move_memory: bool = True) -> Result | Outcome:
    """Pin one running instance: QMP for its vCPU ids, then lock, observe, plan, apply
    (and read back); then, outside the lock, move its memory to its node.

    Returns a Result for the clean skips, else the node.Outcome.
    """
    from hookpack.actions.pinning import node as pnode
    from hookpack.actions.pinning.threads import qmp_vcpu_tids, running_instances
    from hookpack.adapters.qmp import QmpUnavailable
    from hookpack.locks import node_lock

    procs = running_instances(paths.kvm_dir, paths.proc_root)
    if name not in procs:
        return Result.skipped("no running QEMU for it on this node")
    # QMP before the lock: a busy socket must not hold up other instances' hooks.
    try:
        tids = qmp_vcpu_tids(paths.kvm_dir / "ctrl" / f"{name}.qmp",
                             max(0.1, remaining() - QMP_MARGIN))
    except QmpUnavailable as err:
        return Result.skipped(f"QEMU not reachable: {err}")
    with node_lock(paths.run_dir, "pinning", max(0.1, min(lock_timeout,
                                                          remaining() - 0.5))):
        state = pnode.observe_node(paths.sysfs_root, paths.kvm_dir, paths.proc_root,
                                   {name: tids})
        if name not in state.observed:
            return Result.skipped("its QEMU exited meanwhile")
        outcome = pnode.pin_instance(state, name, policy)
        if not dry_run:
            pnode.apply(outcome)
    if not dry_run and move_memory:
        # Outside the lock: a big guest's move takes seconds, other hooks must not wait.
        moved = pnode.move_memory(paths.proc_root, paths.sysfs_root, state, outcome.plans[0],
                                  lambda: remaining() - MEMORY_MARGIN)
        if moved is not None:
            outcome.memory.append(moved)
    return outcome


def _result(outcome: Outcome) -> Result:
    from hookpack.result import Outcome as Verdict

    plan = outcome.plans[0]
    summary = plan.summary()
    if plan.mode == "pinned" and plan.kept and not outcome.moves:
        summary = "already " + summary
    notes = "; ".join(outcome.notes)
    if notes:
        summary += f" ({notes})"
    changes = [m.describe() for m in outcome.done]
    failures = list(outcome.failures)
    memory, mem_changes, mem_failures = _memory_lines(outcome)
    changes += mem_changes
    failures += mem_failures
    if outcome.done:
        moved = len(outcome.done)
        summary += f" ({moved} thread affinit{'y' if moved == 1 else 'ies'} set)"
    elif outcome.moves and not failures:
        summary += " (threads exited before they could be set)"
    summary += memory
    if failures:
        return Result(Verdict.FAILED, f"{summary}; " + "; ".join(failures), tuple(changes))
    if changes:
        return Result.changed(summary, changes)
    return Result.nochange(summary)


def _memory_lines(outcome: Outcome) -> tuple[str, list[str], list[str]]:
    """The memory part of the log line, the changes, the failures."""
    from hookpack.actions.pinning.memory import LOCAL_MIN, describe_usage, mib

    if not outcome.memory:
        return "", [], []
    moved = outcome.memory[0]
    name = outcome.plans[0].name
    where = (f"; memory {moved.share:.0%} of {mib(sum(moved.after.values()))} on node "
             f"{moved.node}")
    changes, failures = [], []
    if moved.moved:
        where += f" ({mib(moved.moved)} moved in {moved.seconds:.1f} s)"
        changes.append(f"{name} memory: {mib(moved.moved)} moved to NUMA node {moved.node} "
                       f"({describe_usage(moved.before)} -> {describe_usage(moved.after)})")
    if moved.error:
        failures.append(f"memory move to node {moved.node}: {moved.error}")
    elif moved.cut_short:
        where += (f" ({mib(moved.left)} still on other nodes at the deadline: the move "
                  f"goes on in the background, pid {moved.background})")
        changes.append(f"{name} memory: moving to NUMA node {moved.node} in the background "
                       f"(pid {moved.background})")
    elif moved.share < LOCAL_MIN:
        failures.append(f"only {moved.share:.0%} of its memory is on node {moved.node} "
                        f"after the move ({describe_usage(moved.after)})"
                        + (f": {moved.why}" if moved.why else ""))
    return where, changes, failures


# -- CLI -----------------------------------------------------------------------

def add_cli(sub: Any) -> None:
    parser = sub.add_parser("pinning", help="NUMA-aware 1:1 vCPU pinning on this node")
    cmds = parser.add_subparsers(metavar="ACTION")
    for cmd, helptext in (("show", "topology and each running instance's pinning"),
                          ("plan", "what `apply` would do (changes nothing)"),
                          ("apply", "pin one running instance now (what the hook does)"),
                          ("rebalance", "re-plan every instance of the node from scratch")):
        p = cmds.add_parser(cmd, help=helptext)
        if cmd in ("plan", "apply"):
            p.add_argument("instance")
        if cmd == "rebalance":
            p.add_argument("--dry-run", action="store_true", help="print, change nothing")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
        add_config_arg(p)
        p.set_defaults(handler=_cli, pinning_cmd=cmd)


def _cli(ns: argparse.Namespace) -> int:
    import time

    from hookpack.config import load
    from hookpack.validate import instance_name

    cfg = load(ns)
    settings = cfg.section("pinning", SETTINGS)
    paths = Paths.from_config(cfg)
    policy = policy_from(settings)
    give_up = time.monotonic() + float(ns.timeout)

    def remaining() -> float:
        return max(0.0, give_up - time.monotonic())

    command = ns.pinning_cmd
    if command == "show":
        return _show(paths, ns.json)
    if command in ("plan", "apply"):
        name = instance_name(ns.instance)
        from hookpack.actions.pinning.node import runtime_cpu_mask

        mask = runtime_cpu_mask(paths.kvm_dir, name)
        if mask != "all":
            print(f"{name}: cpu_mask {mask!r} set: left alone")
            return 0
        outcome = pin(paths, name, policy, remaining, settings["lock_timeout"],
                      dry_run=command == "plan", move_memory=settings["memory"] == "move")
        if isinstance(outcome, Result):
            print(f"{name}: {outcome.outcome.value}: {outcome.message}")
            return 0 if outcome.outcome.value == "skipped" else 1
        _print_outcome(outcome, command == "plan", ns.json)
        if command == "apply":
            return 1 if _result(outcome).outcome.value == "failed" else 0
        return 0
    return _rebalance(paths, policy, remaining, settings["lock_timeout"], ns.dry_run, ns.json,
                      settings["memory"] == "move")


def _rebalance(paths: Paths, policy: Policy, remaining: Callable[[], float],
               lock_timeout: float, dry_run: bool, as_json: bool,
               move_memory: bool = True) -> int:
    from hookpack.actions.pinning import node as pnode
    from hookpack.actions.pinning.threads import qmp_vcpu_tids, running_instances
    from hookpack.adapters.qmp import QmpBusy, QmpError, QmpUnavailable
    from hookpack.locks import node_lock

    procs = running_instances(paths.kvm_dir, paths.proc_root)
    tids: dict[str, list[int]] = {}
    unknown: set[str] = set()
    for name in procs:
        if pnode.runtime_cpu_mask(paths.kvm_dir, name) != "all":
            continue
        try:
            tids[name] = qmp_vcpu_tids(paths.kvm_dir / "ctrl" / f"{name}.qmp",
                                       max(0.1, min(5.0, remaining() - QMP_MARGIN)))
        except (QmpBusy, QmpError, QmpUnavailable):
            unknown.add(name)
    with node_lock(paths.run_dir, "pinning", max(0.1, min(lock_timeout, remaining()))):
        state = pnode.observe_node(paths.sysfs_root, paths.kvm_dir, paths.proc_root, tids,
                                   processes=procs)
        outcome = pnode.rebalance(state, policy, unknown & set(state.observed))
        if not dry_run:
            pnode.apply(outcome)
    if not dry_run and move_memory:
        for plan in outcome.plans:
            moved = pnode.move_memory(paths.proc_root, paths.sysfs_root, state, plan,
                                      lambda: remaining() - MEMORY_MARGIN)
            if moved is not None and (moved.moved or moved.error or moved.cut_short):
                outcome.memory.append(moved)
                outcome.notes.append(f"{plan.name} memory: " + _describe_move(moved))
    _print_outcome(outcome, dry_run, as_json, memory_lines=False)
    return 1 if outcome.failures or any(m.error for m in outcome.memory) else 0


def _describe_move(moved: Any) -> str:
    from hookpack.actions.pinning.memory import describe_usage, mib

    if moved.error:
        return f"move to node {moved.node} failed: {moved.error}"
    if moved.cut_short:
        return f"moving to node {moved.node} in the background (pid {moved.background})"
    return (f"{mib(moved.moved)} moved to node {moved.node} in {moved.seconds:.1f} s "
            f"({describe_usage(moved.after)})")


def _print_outcome(outcome: Outcome, dry_run: bool, as_json: bool,
                   memory_lines: bool = True) -> None:
    moves = outcome.moves if dry_run else outcome.done
    if as_json:
        print(json.dumps({
            "plans": [_plan_dict(p) for p in outcome.plans],
            "moves" if dry_run else "done": [
                {"instance": m.instance, "tid": m.tid, "role": m.role,
                 "old": sorted(m.old), "new": sorted(m.new)} for m in moves],
            "notes": outcome.notes, "failures": outcome.failures,
            "memory": [{"node": m.node, "before": m.before, "after": m.after,
                        "moved": m.moved, "seconds": round(m.seconds, 3),
                        "cut_short": m.cut_short, "error": m.error}
                       for m in outcome.memory]}, indent=2))
        return
    for plan in outcome.plans:
        print(f"{plan.name}: {plan.summary()}")
    verb = "would set" if dry_run else "set"
    for move in moves:
        print(f"  {verb} {move.describe()}")
    for note in outcome.notes:
        print(f"  note: {note}")
    for failure in outcome.failures:
        print(f"  FAILED: {failure}")
    if outcome.memory and memory_lines:
        _, changes, failures = _memory_lines(outcome)
        for line in changes:
            print(f"  {line}")
        for line in failures:
            print(f"  FAILED: {line}")
    if not moves and not any(m.moved for m in outcome.memory):
        print("  nothing to change")


def _plan_dict(plan: Plan) -> dict[str, Any]:
    return {"instance": plan.name, "mode": plan.mode, "node": plan.node,
            "vcpu_cpus": list(plan.vcpu_cpus), "emulator": sorted(plan.emulator),
            "pool": sorted(plan.pool), "reason": plan.reason, "kept": plan.kept}


def _show(paths: Paths, as_json: bool) -> int:
    from hookpack.actions.pinning import node as pnode
    from hookpack.actions.pinning.topology import format_cpulist

    state = pnode.observe_node(paths.sysfs_root, paths.kvm_dir, paths.proc_root)
    rows: list[dict[str, Any]] = []
    for name, obs in sorted(state.observed.items()):
        others = {frozenset(c) for t, c in obs.affinities.items() if t not in obs.vcpu_tids}
        mask = state.cpu_masks.get(name, "all")
        pinned = len(obs.dedicated) == obs.vcpus and obs.vcpus > 0
        rows.append({"instance": name, "pid": obs.process.pid, "vcpus": obs.vcpus,
                     "cpu_mask": mask, "pinned": pinned, "dedicated": list(obs.dedicated),
                     "held": obs.held,
                     "other_threads": sorted(format_cpulist(c) for c in others)})
    if as_json:
        print(json.dumps({"topology": {str(k): list(v) for k, v in state.topo.nodes.items()},
                          "instances": rows}, indent=2))
        return 0
    print(f"host: {state.topo.describe()}")
    for node_id, cpus in state.topo.nodes.items():
        print(f"  NUMA node {node_id}: CPUs {format_cpulist(cpus)}")
    for row in rows:
        if row["pinned"]:
            where = f"1:1 on CPU(s) {','.join(map(str, row['dedicated']))}"
        elif row["held"] is not None:
            where = f"every thread on CPU {row['held']}"
        else:
            where = "not pinned 1:1"
        mask = "" if row["cpu_mask"] == "all" else f", cpu_mask {row['cpu_mask']} (left alone)"
        print(f"{row['instance']}: pid {row['pid']}, {row['vcpus']} vCPU(s), {where}; "
              f"other threads on {' | '.join(row['other_threads']) or '-'}{mask}")
    if not rows:
        print("no running instance")
    return 0



# -- hookpack status -----------------------------------------------------------

def status(cfg: Any, paths: Paths, instance_names: list[str]) -> dict[str, Any]:
    """`hookpack status`: each vCPU thread's affinity and NUMA node vs the plan."""
    from hookpack.actions.pinning import status as pstatus
    from hookpack.actions.pinning.threads import qmp_vcpu_tids
    from hookpack.status import QMP_TIMEOUT, Part

    policy = policy_from(cfg.section("pinning", SETTINGS))
    out: dict[str, Any] = {}
    for name in instance_names:
        qmp_path = paths.kvm_dir / "ctrl" / f"{name}.qmp"

        def tids(qmp_path: Any = qmp_path) -> list[int]:
            from hookpack.adapters.qmp import QmpUnavailable

            if not qmp_path.exists():
                raise QmpUnavailable(f"{qmp_path}: no QMP socket")
            return qmp_vcpu_tids(qmp_path, QMP_TIMEOUT)
        view = pstatus.observe(name, kvm_dir=paths.kvm_dir, proc_root=paths.proc_root,
                               sysfs_root=paths.sysfs_root, policy=policy, vcpu_tids=tids)
        data = view.to_json()
        data.pop("error")
        lines = ([view.note] if view.note else []) + [pstatus.describe(v) for v in view.vcpus]
        if view.memory:
            lines.append(view.memory_line())
        out[name] = Part(data, lines, error=view.error)
    return out
