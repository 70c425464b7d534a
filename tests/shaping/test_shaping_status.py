"""`hookpack status` and `hookpack metrics` shaping counters against real HTB classes in
network namespaces, with traffic sent inside them.

Counters move while packets drain from the queues (and the bridge may flood the odd
multicast to a tap), so every check reads the kernel with pyroute2 (A), then hookpack
(status, then metrics), then pyroute2 again (B): hookpack's numbers must lie within
[A, B] for every counter. Rates are compared exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.promtool import check_with_promtool
from tests.helpers.status_schema import check_status

pytestmark = pytest.mark.netns

A, B = "sta.example.test", "stb.example.test"
FIELDS = ("bytes", "packets", "drops", "overlimits")

# pyroute2 (allowed in tests, never in hookpack/): classes of a device with their counters
_READ = """
import json, sys
from pyroute2 import IPRoute
out = {}
with IPRoute() as ipr:
    for dev in sys.argv[1:]:
        idx = ipr.link_lookup(ifname=dev)[0]
        for c in ipr.get_classes(idx):
            h = c.get("handle")
            p = c.get_nested("TCA_OPTIONS", "TCA_HTB_PARMS") or {}
            basic = c.get_nested("TCA_STATS2", "TCA_STATS_BASIC") or {}
            queue = c.get_nested("TCA_STATS2", "TCA_STATS_QUEUE") or {}
            out[f"{dev} {h >> 16:x}:{h & 0xffff:x}"] = {
                "rate": p.get("rate"), "ceil": p.get("ceil"),
                "bytes": basic.get("bytes", 0), "packets": basic.get("packets", 0),
                "drops": queue.get("drops", 0), "overlimits": queue.get("overlimits", 0)}
print(json.dumps(out))
"""


def _udp_blast(ns: str, dst: str, count: int, size: int = 1000) -> None:
    code = (f"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"for _ in range({count}): s.sendto(b'x'*{size},('{dst}',9))\n")
    subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", code], check=True, timeout=60)


def _kernel(s, *devs: str) -> dict[str, dict]:
    return json.loads(s.node.run(sys.executable, "-c", _READ, *devs))


def _hookpack(s, *args: str) -> str:
    return s.node.run(sys.executable, "-m", "hookpack", *args, "--config", str(s.config))


def _classes(doc: dict) -> dict[str, dict]:
    """'<device> <handle>' -> status's class entry, with its instance/tap/direction."""
    out = {}
    for inst in doc["instances"]:
        for tap in inst["actions"]["shaping"]["taps"]:
            for cls in tap["classes"]:
                if cls["error"] is None:
                    out[f"{cls['device']} {cls['handle']}"] = {
                        **cls, "instance": inst["name"], "tap": tap["tap"], "nic": tap["nic"]}
    return out


def _within(low: dict, got: dict, high: dict, key: str) -> None:
    for field in FIELDS:
        assert low[field] <= got[field] <= high[field], (key, field, low, got, high)


def test_status_and_metrics_counters_match_the_kernel(shaper):
    s = shaper()
    for tap in ("tap0", "tap1"):
        s.node.add_tap(tap, vm=True)
    s.node.nic(A, 0, "tap0")
    s.node.nic(B, 0, "tap1")
    tags = s.base / "state" / "shaping" / "tags"
    tags.mkdir(parents=True)
    (tags / A).write_text(json.dumps(["hookpack:egress:8mbit"]) + "\n")
    out = s.cli("apply", "--all")
    assert not out["failures"], out
    vm_a = s.node.vms["tap0"]
    _udp_blast(vm_a, "192.0.2.1", 3000)  # A -> world at 8mbit: queued, overlimits, drops
    _udp_blast(s.node.world, "192.0.2.11", 200)  # world -> B: its tap's own class

    before = _kernel(s, "up0", "tap0", "tap1")
    doc = json.loads(_hookpack(s, "status", "--json"))
    metrics = _hookpack(s, "metrics")
    after = _kernel(s, "up0", "tap0", "tap1")

    check_status(doc)
    got = _classes(doc)
    assert set(got) == {"up0 4850:10", "up0 4850:11", "tap0 4850:1", "tap1 4850:1"}
    for key, cls in got.items():
        assert cls["rate"] == before[key]["rate"] and cls["ceil"] == before[key]["ceil"]
        assert cls["match"] is True and cls["want_rate"] == cls["ceil"] >= cls["rate"]
        _within(before[key], cls["counters"], after[key], key)
    a_up = got["up0 4850:10"]
    assert (a_up["instance"], a_up["tap"], a_up["direction"]) == (A, "tap0", "egress")
    assert a_up["ceil"] == 1_000_000  # 8mbit in bytes/s, as the tag asked
    assert a_up["counters"]["overlimits"] > 0 and a_up["counters"]["drops"] > 0
    assert a_up["counters"]["packets"] + a_up["counters"]["drops"] >= 1000
    b_in = got["tap1 4850:1"]["counters"]  # world -> B (its bounded leaf drops part)
    assert b_in["packets"] + b_in["drops"] >= 200

    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    by_tap: dict[tuple[str, str], dict[str, float]] = {}
    for field in FIELDS:
        family = families[f"hookpack_shaping_tap_{field}"]
        assert family.type == "counter" and family.documentation
        for sample in family.samples:
            lab = sample.labels
            by_tap.setdefault((lab["tap"], lab["direction"]), {})[field] = sample.value
            assert lab["ganeti_instance"] in (A, B) and lab["nic"] == "0"
            assert "instance" not in lab  # Prometheus' own target label
    device = {"egress": lambda tap: "up0", "ingress": lambda tap: tap}
    handle = {("tap0", "egress"): "4850:10", ("tap1", "egress"): "4850:11",
              ("tap0", "ingress"): "4850:1", ("tap1", "ingress"): "4850:1"}
    assert set(by_tap) == set(handle)
    for (tap, direction), values in by_tap.items():
        key = f"{device[direction](tap)} {handle[(tap, direction)]}"
        _within(before[key], values, after[key], key)
    # per tap only: the per-instance sums went (taps reset on their own; sum in PromQL)
    assert not [f for f in families if f in ("hookpack_shaping_bytes", "hookpack_shaping_drops")]
    check_with_promtool(metrics)
    rates = families["hookpack_shaping_tap_rate_bytes_per_second"]
    assert rates.type == "gauge"
    assert {(x.labels["tap"], x.labels["direction"]): x.value for x in rates.samples}[
        ("tap0", "egress")] == 1_000_000


def test_vanished_tap_is_an_item_error(shaper):
    s = shaper()
    for tap in ("tap0", "tap1"):
        s.node.add_tap(tap, vm=True)
    s.node.nic(A, 0, "tap0")
    s.node.nic(B, 0, "tap1")
    assert not s.cli("apply", "--all")["failures"]
    s.node.del_link("tap1")  # gone without a hook (QEMU died)
    doc = json.loads(_hookpack(s, "status", "--json"))
    check_status(doc)
    taps = {i["name"]: i["actions"]["shaping"]["taps"] for i in doc["instances"]}
    (gone,) = taps[B]
    assert "tap1 does not exist" in gone["error"]
    (fine,) = taps[A]
    assert fine["error"] is None and all(c["match"] for c in fine["classes"])
    text = _hookpack(s, "status", B)
    assert "tap1 (nic 0): tap1 does not exist" in text and "Traceback" not in text
    one = json.loads(_hookpack(s, "status", A, "--json"))
    assert [i["name"] for i in one["instances"]] == [A]
