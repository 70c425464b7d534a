"""hookpack's shaping measured through the real bridge datapath with iperf3 TCP.

Fake VMs (a veth in its own netns on the node's bridge, named as the instance's
tap in the KVM runtime dir) send to / receive from iperf3 servers in the
upstream netns, through the bridge and the uplink. ``hookpack shaping apply``
sets the rates. "from-vm" is shaped by the VM's class on the uplink, "to-vm" by
the HTB on the VM's tap. Judged on the wire rate (see vmtestbed.shapemeter:
HTB rates count Ethernet frames; goodput is ~4.4 % lower and is recorded too),
within +-5 % of the configured rate; a measurement outside is repeated, at most
three times, and every attempt is recorded.

Knobs (the stock-kernel guest runs this same file with the fw classifier and
rates a TCG guest can carry):
``SHAPEPROOF_CLASSIFIER`` auto|bpf|fw (default auto),
``SHAPEPROOF_RATES`` (default 10,100,500 Mbit/s),
``SHAPEPROOF_ISOLATION`` two rates (default 100,300),
``SHAPEPROOF_UNSHAPED_MIN`` Mbit/s an unshaped VM must exceed (default 1000).
"""

from __future__ import annotations

import os

import pytest
from vmtestbed.shapemeter import Flow, measure, measure_until_within, within

from tests.helpers.shapenode import HookpackNode

pytestmark = [pytest.mark.netns, pytest.mark.slow]

CLASSIFIER = os.environ.get("SHAPEPROOF_CLASSIFIER", "auto")
RATES = [int(r) for r in os.environ.get("SHAPEPROOF_RATES", "10,100,500").split(",")]
ISOLATION = [int(r) for r in os.environ.get("SHAPEPROOF_ISOLATION", "100,300").split(",")]
UNSHAPED_MIN = float(os.environ.get("SHAPEPROOF_UNSHAPED_MIN", "1000"))
SECONDS = int(os.environ.get("SHAPEPROOF_SECONDS", "6"))
ATTEMPTS = 3


@pytest.fixture
def shaper(node, tmp_path):
    return HookpackNode(node, tmp_path, CLASSIFIER)


def _apply(shaper):
    report = shaper.apply()
    assert not report["failures"], report
    if CLASSIFIER != "auto":
        assert f"mark -> class: cls_{CLASSIFIER} " in report["classifier"], report
    return report



@pytest.mark.parametrize("rate", RATES)
def test_one_vm_gets_its_rate_both_directions(shaper, servers, record, rate):
    vm = shaper.add_vm("vm1.example.test", f"{rate}mbit", f"{rate}mbit")
    report = _apply(shaper)
    for direction, dev in (("from-vm", "uplink"), ("to-vm", vm.host_ifname)):
        before = shaper.class_bytes(dev)
        flow = Flow(vm.netns, shaper.node.upstream_ip, servers.ports[0],
                    reverse=direction == "to-vm", label=direction)
        history = measure_until_within([flow], [rate], attempts=ATTEMPTS, seconds=SECONDS)
        attempts = [h[0] for h in history]
        after = shaper.class_bytes(dev)
        delta = {c: after.get(c, 0) - before.get(c, 0) for c in after}
        record(f"{rate}mbit {direction} ({report['classifier'].split(':')[0]})", rate,
               attempts, class_bytes=delta)
        assert within(attempts[-1].wire, rate), [str(m) for m in attempts]
        # the VM's traffic went through hookpack's class for it: on the uplink its own
        # class (not the host's default class x:2; the root x:1 counts every class's
        # bytes), on the tap the tap's single class
        if direction == "from-vm":
            default = next(c for c in delta if c.endswith(":2"))
            shaped = max(v for c, v in delta.items() if not c.endswith((":1", ":2")))
            assert shaped > 10 * delta[default], delta
        else:
            shaped = sum(delta.values())
        carried = sum(m.goodput * 1e6 / 8 * (m.seconds + 1) for m in attempts)
        assert shaped >= 0.9 * carried, (delta, carried)


@pytest.mark.parametrize("direction", ["from-vm", "to-vm"])
def test_two_vms_at_once_each_get_their_own_rate(shaper, servers, record, direction):
    low, high = ISOLATION
    a = shaper.add_vm("vm-a.example.test", f"{low}mbit", f"{low}mbit")
    b = shaper.add_vm("vm-b.example.test", f"{high}mbit", f"{high}mbit")
    _apply(shaper)
    flows = [Flow(vm.netns, shaper.node.upstream_ip, port, direction == "to-vm", name)
             for vm, port, name in ((a, servers.ports[0], "a"), (b, servers.ports[1], "b"))]
    history = measure_until_within(flows, [low, high], attempts=ATTEMPTS, seconds=SECONDS)
    record(f"isolation {direction} a={low}", low, [h[0] for h in history])
    record(f"isolation {direction} b={high}", high, [h[1] for h in history])
    got_a, got_b = history[-1]
    assert within(got_a.wire, low), [str(m) for h in history for m in h]
    assert within(got_b.wire, high), [str(m) for h in history for m in h]


def test_unshaped_vm_is_not_limited(shaper, servers, record):
    shaped = shaper.add_vm("vm-a.example.test", f"{ISOLATION[0]}mbit", f"{ISOLATION[0]}mbit")
    free = shaper.add_vm(None)
    _apply(shaper)
    up, down = (measure([Flow(free.netns, shaper.node.upstream_ip, servers.ports[0], rev,
                              "unshaped")], seconds=SECONDS)[0] for rev in (False, True))
    record("unshaped VM from-vm, to-vm", None, [up, down])
    # and the shaped neighbour is still held to its rate
    (neighbour,) = measure([Flow(shaped.netns, shaper.node.upstream_ip, servers.ports[1],
                                 False, "shaped")], seconds=SECONDS)
    record(f"shaped neighbour from-vm {ISOLATION[0]}", ISOLATION[0], [neighbour])
    assert up.wire > UNSHAPED_MIN and down.wire > UNSHAPED_MIN, (str(up), str(down))
    assert within(neighbour.wire, ISOLATION[0]), str(neighbour)
