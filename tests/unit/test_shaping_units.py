"""Shaping's pure parts: rates, HTB parameters, class ids, tags, rules, netlink encoding."""

from __future__ import annotations

import re

import pytest

from hookpack.errors import BadInput, ConfigError
from hookpack.shaping import netfilter, tc
from hookpack.shaping.model import (
    MINOR_FIRST,
    QUANTUM_MAX,
    QUANTUM_MIN,
    ClassParams,
    allocate_minors,
    class_params,
    format_rate,
    parse_rate,
)
from hookpack.shaping.policy import Defaults, PolicyStore, from_tags
from hookpack.shaping.reconcile import Settings, read_nics, same_class


@pytest.mark.parametrize(("text", "rate"), [
    ("50mbit", 6_250_000), ("1gbit", 125_000_000), ("800kbps", 800_000),
    ("1.5mbit", 187_500), ("10MBIT", 1_250_000), ("8kbit", 1000),
])
def test_parse_rate_follows_tc_units(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "50", "mbit", "50 mbit", "50mb", "-5mbit", "1e3mbit",
                                  "50mbit;", "0mbit", "2tbit", "50mbit x", "9" * 20 + "bit"])
def test_parse_rate_is_strict(text):
    with pytest.raises(BadInput):
        parse_rate(text)


def test_format_rate_round_trips():
    for text in ("10mbit", "500mbit", "1gbit", "16kbit"):
        assert format_rate(parse_rate(text)) == text


def test_class_params_burst_quantum_and_cburst():
    p = class_params(parse_rate("100mbit"), 1500)
    assert p.burst == 125_000 and p.cburst == p.burst  # rate_bytes/100
    assert p.rate == p.ceil
    assert p.quantum == 1500  # rate / (rate // mtu)
    low = class_params(parse_rate("64kbit"), 1500)
    assert low.burst == 1500  # never below one MTU
    assert QUANTUM_MIN <= low.quantum <= QUANTUM_MAX
    jumbo = class_params(parse_rate("10gbit"), 9000)
    assert QUANTUM_MIN <= jumbo.quantum <= QUANTUM_MAX


def test_allocate_minors_keeps_existing_and_skips_taken():
    got = allocate_minors(["tap3", "tap1", "tap2"], {"tap2": 0x40}, {MINOR_FIRST, 0x11})
    assert got["tap2"] == 0x40
    assert got["tap1"] == 0x12 and got["tap3"] == 0x13


DEFAULTS = Defaults(egress=parse_rate("100mbit"), ingress=parse_rate("100mbit"),
                    max_egress=parse_rate("200mbit"), max_ingress=parse_rate("100mbit"))


def test_tags_lower_and_are_capped():
    p = from_tags(["hookpack:egress=50mbit", "other", "hookpack:pin=1"], DEFAULTS)
    assert (p.egress, p.ingress) == (parse_rate("50mbit"), parse_rate("100mbit"))
    p = from_tags(["hookpack:egress=1gbit", "hookpack:ingress=5gbit"], DEFAULTS)
    assert p.egress == parse_rate("200mbit") and p.ingress == parse_rate("100mbit")
    assert any("capped" in n for n in p.notes)


def test_ganeti_tag_form_with_a_colon():
    # Ganeti's tag check (VALID_TAG_RE = [\w.+*/:@-]+) refuses "=": the colon form works
    ganeti_ok = re.compile(r"^[\w.+*/:@-]+$")
    assert ganeti_ok.match("hookpack:egress:50mbit")
    assert not ganeti_ok.match("hookpack:egress=50mbit")
    p = from_tags(["hookpack:egress:50mbit", "hookpack:ingress:1.5mbit"], DEFAULTS)
    assert (p.egress, p.ingress) == (parse_rate("50mbit"), parse_rate("1.5mbit"))


def test_bad_tag_is_ignored_with_a_note_and_lowest_duplicate_wins():
    p = from_tags(["hookpack:egress=fast", "hookpack:egress=20mbit",
                   "hookpack:egress=30mbit"], DEFAULTS)
    assert p.egress == parse_rate("20mbit")
    assert any("tag ignored" in n for n in p.notes)


def test_policy_store_persists_only_our_tags(tmp_path):
    store = PolicyStore(tmp_path)
    assert store.save("web1.example.test", ["hookpack:egress=5mbit", "team:x"])
    assert not store.save("web1.example.test", ["team:x", "hookpack:egress=5mbit"])
    assert store.load("web1.example.test") == ["hookpack:egress=5mbit"]
    with pytest.raises(BadInput):
        store.save("../evil", [])
    store.forget("web1.example.test")
    assert store.load("web1.example.test") == []


def test_rule_spec_and_save_line_round_trip():
    r = netfilter.Rule("tap3", "web1.example.test", 1, "classify", 0x10, major=0x4850)
    # iptables-save prints the comment quoted and the class as it was given
    line = f"-A {r.spec()}"
    assert netfilter.parse_rule(line) == r
    m = netfilter.Rule("tap4", "db", 0, "mark", 0x11, mask=0xFFFF)
    assert netfilter.parse_rule(f"-A {m.spec()}") == m
    assert netfilter.parse_rule("-A HOOKPACK-SHAPE -j ACCEPT") is None


def test_parse_save_separates_ours_and_foreign():
    text = "\n".join([
        "*mangle", ":FORWARD ACCEPT [0:0]", ":HOOKPACK-SHAPE - [0:0]",
        "-A FORWARD -m comment --comment hookpack-shape -j HOOKPACK-SHAPE",
        "-A FORWARD -j MARK --set-xmark 0x1/0x1",
        '-A HOOKPACK-SHAPE -m physdev --physdev-in tap0 -m comment --comment '
        '"hookpack:a:0" -j CLASSIFY --set-class 4850:0010',
        "-A HOOKPACK-SHAPE -j RETURN", "COMMIT"])
    seen = netfilter.parse_save(text)
    assert seen.chain and seen.jumps == 1 and len(seen.rules) == 1
    assert seen.foreign == ["-A HOOKPACK-SHAPE -j RETURN"]


def test_changes_declares_the_chain_only_when_missing():
    r = netfilter.Rule("tap0", "a", 0, "classify", 0x10, major=0x4850)
    fresh = netfilter.changes(netfilter.Observed(), [r], [], want_chain=True)
    assert fresh[0] == ":HOOKPACK-SHAPE - [0:0]" and fresh[1].startswith("-I FORWARD 1 ")
    there = netfilter.changes(netfilter.Observed(chain=True, jumps=1), [r], [], want_chain=True)
    assert there == [f"-A {r.spec()}"]  # a ":CHAIN" line would flush the chain


def test_htb_class_encoding_round_trips_through_the_reply_parser():
    want = tc.HtbParams(rate=1_250_000, ceil=1_250_000, burst=12_500, cburst=12_500,
                        quantum=1500)
    body = tc.htb_class_options(want)
    attrs = tc.parse_attrs(body)
    obj = tc.TcObject(1, tc.handle(0x4850, 0x10), 0, 0, "htb", attrs[2])
    assert obj.htb_class() == want
    big = tc.HtbParams(rate=10**10, ceil=10**10, burst=10**8, cburst=10**8, quantum=200000)
    obj = tc.TcObject(1, 0, 0, 0, "htb", tc.parse_attrs(tc.htb_class_options(big))[2])
    got = obj.htb_class()
    assert got is not None and got.rate == 10**10  # >4 GB/s goes in TCA_HTB_RATE64
    assert same_class(got, ClassParams(10**10, 10**10, 10**8, 10**8, 200000))


def test_settings_need_an_uplink():
    from hookpack.actions.shaping import SETTINGS

    raw = {k: f.default for k, f in SETTINGS.items()}
    with pytest.raises(ConfigError, match="uplink"):
        Settings.from_config(raw, "classify")
    raw["uplink"] = "eth0"
    s = Settings.from_config(raw, "classify")
    assert s.major == 0x4850 and s.families == (4, 6)
    raw["uplink"] = "eth0/../x"
    with pytest.raises(ConfigError):
        Settings.from_config(raw, "classify")


def test_read_nics_validates_what_it_reads(tmp_path):
    nic = tmp_path / "nic"
    (nic / "web1.example.test").mkdir(parents=True)
    (nic / "web1.example.test" / "0").write_text("tap3\n")
    (nic / "web1.example.test" / "1").write_text("tap;rm -rf\n")
    (nic / "web1.example.test" / "x").write_text("tap4\n")
    (nic / "bad name").mkdir()
    got, notes = read_nics(tmp_path)
    assert [(n.index, n.tap) for n in got["web1.example.test"]] == [(0, "tap3")]
    assert len(notes) == 3
    got, _ = read_nics(tmp_path, ["gone.example.test"])
    assert got == {"gone.example.test": []}  # not running here: desired = nothing


def test_fw_filter_request_layout():
    req = tc.set_fw_filter(7, 0x4850, 4850, 0x10, tc.handle(0x4850, 0x10), 0xFFFF, False, "f")
    raw = req.encode(1)
    length, mtype, flags, seq, _pid = tc._NLMSG.unpack_from(raw)
    assert (length, mtype, seq) == (len(raw), tc.RTM_NEWTFILTER, 1)
    assert flags & tc.NLM_F_CREATE and flags & tc.NLM_F_EXCL and not flags & tc.NLM_F_ACK
    _fam, ifindex, handle, parent, info = tc._TCMSG.unpack_from(raw, tc._NLMSG.size)
    assert (ifindex, handle, parent) == (7, 0x10, 0x48500000)
    assert info >> 16 == 4850 and info & 0xFFFF == 0x0300  # htons(ETH_P_ALL)
    attrs = tc.parse_attrs(raw, tc._NLMSG.size + tc._TCMSG.size)
    obj = tc.TcObject(7, handle, parent, info, "fw", attrs[tc.TCA_OPTIONS])
    assert attrs[tc.TCA_KIND] == b"fw\0" and obj.fw() == (0x48500010, 0xFFFF)
    full = tc.set_fw_filter(7, 0x4850, 1, 0x10, 0x48500010, 0xFFFFFFFF, True, "f").encode(2)
    attrs = tc.parse_attrs(full, tc._NLMSG.size + tc._TCMSG.size)
    assert tc.TCA_FW_MASK not in tc.parse_attrs(attrs[tc.TCA_OPTIONS])


def test_scoped_parse_keeps_only_the_minors_of_other_instances():
    lines = ["-A HOOKPACK-SHAPE -m physdev --physdev-in tap0 -m comment --comment "
             '"hookpack:a:0" -j CLASSIFY --set-class 4850:0010',
             "-A HOOKPACK-SHAPE -m physdev --physdev-in tap1 -m comment --comment "
             '"hookpack:b:0" -j CLASSIFY --set-class 4850:0011',
             "-A HOOKPACK-SHAPE -m physdev --physdev-in tap2 -m comment --comment "
             '"hookpack:c:0" -j MARK --set-xmark 0x12/0xffff',
             "-A HOOKPACK-SHAPE -m physdev --physdev-in tap9 -m comment --comment "
             '"hookpack:c:1" -j CLASSIFY --set-class 4850:0019']
    seen = netfilter.parse_save("\n".join(lines),
                                netfilter.Scope(frozenset({"a"}), frozenset({"tap9"})))
    assert sorted(r.tap for r in seen.rules) == ["tap0", "tap9"]  # its own, and its tap's
    assert seen.other_minors == {0x11, 0x12}
    everything = netfilter.parse_save("\n".join(lines))
    assert len(everything.rules) == 4 and not everything.other_minors
