"""Helpers of the Ganeti end-to-end tests: run an operation, check where hookpack ran."""

from __future__ import annotations

import time
from typing import Any

from vmtestbed.ganeti import Lab, compat

from tests.ganeti.hooktable import expected_nodes, expected_roles

MASTER = "node1.example.test"


def run_op(lab: Lab, timings: dict[str, float], label: str, hpath: str, argv: list[str], *,
           instance: str, primary: str, target: str | None = None) -> list[dict[str, Any]]:
    """Run ``argv`` on the master; assert hookpack ran exactly where Ganeti's table says,
    in both phases, with the roles it implies; return the records of ``hpath``."""
    lab.clear_records()
    t0 = time.monotonic()
    lab.gnt(*argv)
    timings[f"op.{label}"] = round(time.monotonic() - t0, 1)
    records = [r for n in lab.nodes for r in lab.records(n)
               if r["hpath"] == hpath and r["instance"] == instance]
    seen: dict[str, set[str]] = {"pre": set(), "post": set()}
    for r in records:
        seen[r["phase"]].add(r["node"])
    want = expected_nodes(hpath, master=MASTER, primary=primary, target=target)
    assert seen == want, f"{label}: hookpack ran on {seen}, Ganeti's table says {want}"
    note_hook_table(lab, hpath, seen, primary=primary, target=target)
    for r in records:
        must = expected_roles(r["node"], hpath=hpath, phase=r["phase"], master=MASTER,
                              primary=primary, target=target)
        assert must <= set(r["roles"]), f"{label}: {r['node']} {r['phase']}: {r['roles']}"
        assert r["env"]["GANETI_HOOKS_PATH"] == hpath
        assert r["env"]["GANETI_INSTANCE_NAME"] == instance
    return records


def hookpack_marks(lab: Lab, node: str) -> dict[str, dict[str, Any]]:
    """hookpack's netdev table on ``node``, read with nft: tap -> device, mark, comment."""
    from tests.shaping.conftest import parse_nft

    out = lab.run_on(node, ["nft", "list", "table", "netdev", "hookpack"]).stdout
    result: dict[str, dict[str, Any]] = parse_nft(out)
    return result


def wait_guest(lab: Lab, instance: str, ip: str, timeout: float = 90) -> None:
    lab.wait_guest(instance, ip, timeout)


def guest_uptime(lab: Lab, instance: str) -> float:
    return lab.guest_uptime(instance)


def guest_disk_bytes(lab: Lab, instance: str) -> int:
    return lab.guest_disk_bytes(instance)


def note_hook_table(lab: Lab, hpath: str, seen: dict[str, set[str]], *, primary: str,
                     target: str | None) -> None:
    """The compatibility table's row for ``hpath``: each node that ran a phase, by its
    parts in the operation (``master+primary``, ``target``...)."""
    if f"hooks.{hpath}" not in compat.FACTS:
        return

    def parts(node: str) -> str:
        named = [("master", MASTER), ("primary", primary), ("target", target)]
        return "+".join(part for part, who in named if who == node) or "other"

    text = "; ".join(f"{phase}: " + (", ".join(sorted(parts(n) for n in seen[phase]))
                                     or "none")
                     for phase in ("pre", "post"))
    compat.note(lab.version, f"hooks.{hpath}", text)
