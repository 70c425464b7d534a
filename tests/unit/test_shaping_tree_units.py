"""Pure parts of the class tree: HTB parameters with a ceil, leaves, scope tags, echoes."""

from __future__ import annotations

import struct

from hookpack.actions.shaping import tc
from hookpack.actions.shaping.leaf import leaf_for
from hookpack.actions.shaping.model import (
    INSTANCE_BIT,
    PRIO_HOST,
    PRIO_VM,
    class_params,
    instance_minor,
    parse_rate,
    uplink_classes,
    vm_class,
)
from hookpack.actions.shaping.policy import Defaults, from_tags

MBIT = 10**6 // 8


def test_vm_class_is_guaranteed_little_and_limited_by_its_ceil():
    p = vm_class(10 * MBIT, 1 * MBIT, 1500)
    assert (p.rate, p.ceil, p.prio) == (1 * MBIT, 10 * MBIT, PRIO_VM)
    assert p.burst == 1500 and p.cburst == 12500  # 10 ms of each, at least one MTU
    small = vm_class(MBIT // 2, 1 * MBIT, 1500)  # a limit below the guarantee
    assert small.rate == small.ceil == MBIT // 2


def test_uplink_classes_cap_the_host_at_the_uplink():
    root, host = uplink_classes(100 * MBIT, 300 * MBIT, 1500)
    assert root.rate == root.ceil == 100 * MBIT
    assert (host.rate, host.ceil, host.prio) == (100 * MBIT, 100 * MBIT, PRIO_HOST)


def test_instance_minor_is_its_lowest_tap_minor_with_the_high_bit():
    assert instance_minor({0x13, 0x11, 0x2F}) == 0x11 | INSTANCE_BIT == 0x8011


def test_leaves_per_kind():
    assert leaf_for("default", 10 * MBIT, 1500, 10) is None
    assert leaf_for("fq_codel", 10 * MBIT, 1500, 10) == tc.Leaf("fq_codel")
    assert leaf_for("bfifo", 10 * MBIT, 1500, 10) == tc.Leaf("bfifo", 12500)
    assert leaf_for("bfifo", 8000, 1500, 10) == tc.Leaf("bfifo", 3028)  # two frames at least
    t = leaf_for("tbf", 10 * MBIT, 1500, 10)
    assert t == tc.Leaf("tbf", 12500, 10**12 // 8, 3028)  # HTB limits, not the tbf


def test_tbf_leaf_round_trips_through_the_encoder_and_allows_tick_rounding():
    want = tc.Leaf("tbf", 12500, 100 * MBIT, 3028)
    body = tc.leaf_options(want)
    attrs = tc.parse_attrs(body)
    assert attrs[tc.TCA_KIND] == b"tbf\0"
    obj = tc.TcObject(1, 0x80010000, 0x48500010, 0, "tbf", attrs[tc.TCA_OPTIONS])
    assert want.same(obj.leaf())
    assert not want.same(tc.Leaf("tbf", 12501, 100 * MBIT, 3028))
    assert not want.same(tc.Leaf("bfifo", 12500))
    big = tc.Leaf("tbf", 10**9, 400 * 10**9 // 8, 3028)  # rate above 2^32 bytes/s
    opts = tc.parse_attrs(tc.parse_attrs(tc.leaf_options(big))[tc.TCA_OPTIONS])
    assert struct.unpack("=Q", opts[tc.TCA_TBF_RATE64])[0] == 400 * 10**9 // 8


def test_a_fifo_leaf_is_read_from_its_raw_limit_and_handle_zero_is_the_default():
    obj = tc.TcObject(1, 0x80020000, 0x48500010, 0, "bfifo", struct.pack("=I", 12500))
    assert obj.leaf() == tc.Leaf("bfifo", 12500)
    assert tc.TcObject(1, 0, 0x48500010, 0, "pfifo").leaf() == tc.Leaf("default")


def test_echoed_write_asks_the_kernel_for_the_object():
    req = tc.set_class(3, 0x4850, 0x10, tc.HtbParams(1, 2, 3, 4, 5), "c", parent=1)
    assert req.parent == tc.handle(0x4850, 1)
    echoed = req.echoed()
    assert echoed.flags == req.flags | tc.NLM_F_ECHO and echoed.body == req.body


DEFAULTS = Defaults(parse_rate("100mbit"), parse_rate("100mbit"), parse_rate("100mbit"),
                    parse_rate("100mbit"))


def test_scope_tag_narrows_only():
    assert from_tags([], DEFAULTS).scope == "nic"
    assert from_tags(["hookpack:egress-scope:instance"], DEFAULTS).scope == "instance"
    per_inst = Defaults(DEFAULTS.egress, DEFAULTS.ingress, DEFAULTS.max_egress,
                        DEFAULTS.max_ingress, scope="instance")
    widened = from_tags(["hookpack:egress-scope:nic"], per_inst)
    assert widened.scope == "instance" and any("cannot widen" in n for n in widened.notes)
    bad = from_tags(["hookpack:egress-scope:vm"], DEFAULTS)
    assert bad.scope == "nic" and any("tag ignored" in n for n in bad.notes)


def test_class_params_ceil_never_below_rate():
    assert class_params(10 * MBIT, 1500, 5 * MBIT).ceil == 10 * MBIT
