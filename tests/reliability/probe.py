"""Run inside the node's netns: hookpack's kernel state, read back, and a full plan.

``python -m tests.reliability.probe CONFIG`` prints one JSON object:

- ``classes``: device -> HTB class handle -> {rate, ceil (bytes/s), parent}, read with
  pyroute2 (a tbf leaf's own class is not listed);
- ``qdiscs``: device -> root qdisc "kind handle";
- ``leaves``: device -> parent class handle -> leaf qdisc kind, for every qdisc hanging
  under a class of hookpack's major (4850);
- ``filters``: the uplink's tc filters (one row per filter: kind, parent, pref, handle);
- ``marks``: hookpack's ``netdev hookpack`` table read back with the nft tool: chain ->
  {device, mark, comment, rules} (a missing table: {});
- ``foreign``: the mangle lines (iptables-save) carrying the foreign writer's comment;
- ``plan``: the changes a full ``shaping apply --all`` would make now (dry run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from hookpack.action import Paths
from hookpack.actions.shaping.action import SETTINGS, reconcile
from hookpack.config import load
from tests.shaping.conftest import parse_nft

FOREIGN = "relload-fw"
IPTABLES = "iptables"  # the system's default (nft or legacy): the foreign writer's tool
MAJOR = 0x4850


def _fmt(h: int) -> str:
    return f"{h >> 16:x}:{h & 0xffff:x}"


def read_tc() -> tuple[dict, dict, dict]:
    from pyroute2 import IPRoute

    classes: dict[str, dict[str, dict]] = {}
    qdiscs: dict[str, str] = {}
    leaves: dict[str, dict[str, str]] = {}
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for q in ipr.get_qdiscs():
            name, parent = names[q["index"]], q["parent"]
            if parent == 0xFFFFFFFF:
                qdiscs[name] = f"{q.get_attr('TCA_KIND')} {q['handle'] >> 16:x}:"
            elif parent >> 16 == MAJOR:
                leaves.setdefault(name, {})[_fmt(parent)] = q.get_attr("TCA_KIND")
        for index, name in names.items():
            got = {}
            for c in ipr.get_classes(index):
                if c.get_attr("TCA_KIND") != "htb":
                    continue
                p = c.get_nested("TCA_OPTIONS", "TCA_HTB_PARMS") or {}
                rate = c.get_nested("TCA_OPTIONS", "TCA_HTB_RATE64") or p.get("rate", 0)
                ceil = c.get_nested("TCA_OPTIONS", "TCA_HTB_CEIL64") or p.get("ceil", 0)
                got[_fmt(c["handle"])] = {"rate": rate, "ceil": ceil,
                                          "parent": _fmt(c["parent"])}
            if got:
                classes[name] = got
    return classes, qdiscs, leaves


def read_filters(uplink: str) -> list[dict]:
    shown = subprocess.run(["tc", "-j", "filter", "show", "dev", uplink],
                           capture_output=True, text=True, check=True, timeout=60).stdout
    rows = json.loads(shown) if shown.strip() else []
    # tc prints a filter's priority/protocol head and then each of its elements: count
    # the elements (the rows with options), the real filters
    return [{"kind": r.get("kind"), "parent": r.get("parent"), "pref": r.get("pref"),
             "handle": r["options"].get("handle")} for r in rows if "options" in r]


def read_marks() -> dict[str, dict]:
    proc = subprocess.run(["nft", "list", "table", "netdev", "hookpack"],
                          capture_output=True, text=True, check=False, timeout=60)
    return parse_nft(proc.stdout) if proc.returncode == 0 else {}


def read_foreign() -> list[str]:
    text = subprocess.run([f"{IPTABLES}-save", "-t", "mangle"], capture_output=True,
                          text=True, check=True, timeout=60).stdout
    return sorted(line for line in text.splitlines() if FOREIGN in line)


def main() -> int:
    cfg = load(argparse.Namespace(config=sys.argv[1]))
    settings = cfg.section("shaping", SETTINGS)
    paths = Paths.from_config(cfg)
    classes, qdiscs, leaves = read_tc()
    plan = reconcile(settings, paths, None, dry_run=True, timeout=lambda: 30.0)
    print(json.dumps({"classes": classes, "qdiscs": qdiscs, "leaves": leaves,
                      "filters": read_filters(str(settings["uplink"])),
                      "marks": read_marks(), "foreign": read_foreign(),
                      "iptables": IPTABLES, "plan": plan.changes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
