"""The `hookpack status --json` schema (docs/monitoring.md), checked key by key and type
by type: every key present, no unknown key, every value of its documented type."""

from __future__ import annotations

from typing import Any

INT, NUM, STR, BOOL, NONE = int, (int, float), str, bool, type(None)

COUNTERS = {"bytes": INT, "packets": INT, "drops": INT, "overlimits": INT, "requeues": INT,
            "backlog": INT, "qlen": INT}
SHAPING_CLASS = {"direction": STR, "device": STR, "handle": STR, "want_rate": (INT, NONE),
                 "rate": (INT, NONE), "ceil": (INT, NONE), "match": (BOOL, NONE),
                 "counters": (dict, NONE), "error": (STR, NONE)}
SHAPING_TAP = {"nic": INT, "tap": STR, "error": (STR, NONE), "classes": list}
VCPU = {"index": INT, "thread_id": INT, "cpus": (list, NONE), "numa_nodes": (list, NONE),
        "want": (list, NONE), "match": (BOOL, NONE), "error": (STR, NONE)}
MEMORY = {"per_node": dict, "vcpu_nodes": list, "local_share": (NUM, NONE)}
DISK = {"index": INT, "qemu_id": (STR, NONE), "storage_path": STR, "qemu_size": (INT, NONE),
        "storage_size": (INT, NONE), "match": (BOOL, NONE), "error": (STR, NONE)}
RUN = {"action": STR, "time": (NUM, NONE), "hpath": (STR, NONE), "phase": (STR, NONE),
       "outcome": (STR, NONE), "ms": (INT, NONE), "message": STR}
INSTANCE = {"name": STR, "running": BOOL, "pid": (INT, NONE), "sources": list,
            "actions": dict, "runs": list}
PARTS = {
    "shaping": {"enabled": BOOL, "error": (STR, NONE), "taps": list},
    "pinning": {"enabled": BOOL, "error": (STR, NONE), "cpu_mask": STR, "mode": (STR, NONE),
                "note": (STR, NONE), "vcpus": list, "memory": dict},
    "disk-grow": {"enabled": BOOL, "error": (STR, NONE), "disks": list},
}
SOURCES = {"pid", "runtime", "qmp", "nic", "records"}


def _check(obj: Any, spec: dict[str, Any], where: str) -> None:
    assert isinstance(obj, dict), f"{where}: not an object"
    assert set(obj) == set(spec), f"{where}: keys {sorted(obj)} != {sorted(spec)}"
    for key, kind in spec.items():
        value = obj[key]
        ok = isinstance(value, kind) and not (kind is INT and isinstance(value, bool))
        assert ok, f"{where}.{key}: {value!r} is not {kind}"


def check_status(doc: Any) -> None:
    _check(doc, {"schema": INT, "generated_at": NUM, "instances": list}, "status")
    assert doc["schema"] == 1
    for inst in doc["instances"]:
        where = inst.get("name", "?")
        _check(inst, INSTANCE, where)
        assert set(inst["sources"]) <= SOURCES and inst["sources"], where
        assert set(inst["actions"]) == set(PARTS), f"{where}: actions {sorted(inst['actions'])}"
        for action, part in inst["actions"].items():
            if part == {"enabled": False}:
                continue
            _check(part, PARTS[action], f"{where}.{action}")
        shaping = inst["actions"]["shaping"]
        for tap in shaping.get("taps", []):
            _check(tap, SHAPING_TAP, f"{where}.shaping.{tap.get('tap')}")
            for cls in tap["classes"]:
                _check(cls, SHAPING_CLASS, f"{where}.shaping.{tap['tap']}.class")
                assert cls["direction"] in ("egress", "ingress")
                if cls["counters"] is not None:
                    _check(cls["counters"], COUNTERS, f"{where}.shaping.counters")
        for vcpu in inst["actions"]["pinning"].get("vcpus", []):
            _check(vcpu, VCPU, f"{where}.pinning.vcpu")
        if "memory" in inst["actions"]["pinning"]:
            memory = inst["actions"]["pinning"]["memory"]
            _check(memory, MEMORY, f"{where}.pinning.memory")
            assert all(k.isdigit() and isinstance(v, int)
                       for k, v in memory["per_node"].items()), memory
        for disk in inst["actions"]["disk-grow"].get("disks", []):
            _check(disk, DISK, f"{where}.disk-grow.disk")
        for run in inst["runs"]:
            _check(run, RUN, f"{where}.run")
