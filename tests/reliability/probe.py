"""Run inside the node's netns: hookpack's kernel state, read back, and a full plan.

``python -m tests.reliability.probe CONFIG`` prints one JSON object:

- ``classes``: device -> HTB class handle -> {rate, ceil} (bytes/s), read with pyroute2;
- ``qdiscs``: device -> root qdisc "kind handle";
- ``filters``: number of tc filters on the uplink;
- ``rules``: family -> the mangle lines of hookpack's chain and its FORWARD jump(s);
- ``foreign``: the mangle lines carrying the foreign writer's comment;
- ``backend``: the iptables backend hookpack detects;
- ``plan``: the changes a full ``shaping apply --all`` would make now (dry run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from hookpack.action import Paths
from hookpack.actions.shaping import SETTINGS, reconcile
from hookpack.cli import load
from hookpack.shaping import netfilter

FOREIGN = "relload-fw"


def main() -> int:
    from pyroute2 import IPRoute

    config = sys.argv[1]
    cfg = load(argparse.Namespace(config=config))
    settings = cfg.section("shaping", SETTINGS)
    paths = Paths.from_config(cfg)
    classes: dict[str, dict[str, dict[str, int]]] = {}
    qdiscs: dict[str, str] = {}
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for q in ipr.get_qdiscs():
            if q["parent"] == 0xFFFFFFFF:
                h = q["handle"]
                qdiscs[names[q["index"]]] = f"{q.get_attr('TCA_KIND')} {h >> 16:x}:"
        for index, name in names.items():
            got = {}
            for c in ipr.get_classes(index):
                h = c["handle"]
                p = c.get_nested("TCA_OPTIONS", "TCA_HTB_PARMS") or {}
                got[f"{h >> 16:x}:{h & 0xffff:x}"] = {"rate": p.get("rate", 0),
                                                      "ceil": p.get("ceil", 0)}
            if got:
                classes[name] = got
    shown = subprocess.run(["tc", "filter", "show", "dev", str(settings["uplink"])],
                           capture_output=True, text=True, check=True, timeout=60).stdout
    filters = sum(1 for line in shown.splitlines() if line.startswith("filter "))
    tools = netfilter.detect(str(settings["iptables_backend"]))
    rules: dict[str, list[str]] = {}
    foreign: list[str] = []
    for family, save in zip((4, 6), tools.save, strict=True):
        text = subprocess.run([save, "-t", "mangle"], capture_output=True, text=True,
                              check=True, timeout=60).stdout
        lines = text.splitlines()
        rules[str(family)] = sorted(
            line for line in lines
            if line.startswith(f"-A {netfilter.CHAIN} ")
            or (line.startswith("-A ") and line.endswith(f"-j {netfilter.CHAIN}")))
        if family == 4:
            foreign = sorted(line for line in lines if FOREIGN in line)
    plan = reconcile(settings, paths, None, dry_run=True, timeout=lambda: 30.0)
    print(json.dumps({"classes": classes, "qdiscs": qdiscs, "filters": filters,
                      "rules": rules, "foreign": foreign, "backend": tools.backend,
                      "save_tool": tools.save[0], "plan": plan.changes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
