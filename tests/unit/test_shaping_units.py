"""Shaping's pure parts: rates, HTB parameters, class ids, tags, rules, netlink encoding."""

from __future__ import annotations

import re

import pytest

from hookpack.actions.shaping import legacy, nft, tc
from hookpack.actions.shaping.model import (
    MINOR_FIRST,
    QUANTUM_MAX,
    QUANTUM_MIN,
    ClassParams,
    allocate_minors,
    class_params,
    format_rate,
    parse_rate,
)
from hookpack.actions.shaping.policy import Defaults, PolicyStore, from_tags
from hookpack.actions.shaping.reconcile import Settings, read_nics, same_class
from hookpack.errors import BadInput, ConfigError


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


def test_allocate_minors_never_keeps_one_minor_for_two_taps():
    # two taps marked alike (a hand edit, an old bug) would share one class
    got = allocate_minors(["tap1", "tap2"], {"tap1": 0x20, "tap2": 0x20}, set())
    assert got["tap1"] == 0x20 and got["tap2"] == MINOR_FIRST
    # a kept minor another instance's tap (out of this reconcile's scope) holds moves
    got = allocate_minors(["tap1"], {"tap1": 0x30}, {0x30})
    assert got["tap1"] == MINOR_FIRST


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


def test_policy_store_removes_a_killed_saves_temporary_file(tmp_path):
    """A save killed between write and rename leaves .tags.<random>; the next run's first
    save (under the same node lock) removes it, also when it has nothing to change. A run
    lists the directory once, not once per instance it saves."""
    assert PolicyStore(tmp_path).save("web1.example.test", ["hookpack:egress=5mbit"])
    store = PolicyStore(tmp_path)  # the next run
    stale = store.dir / ".tags.qpro7064"
    stale.write_text("[]\n")
    assert not store.save("web1.example.test", ["hookpack:egress=5mbit"])
    assert sorted(p.name for p in store.dir.iterdir()) == ["web1.example.test"]
    stale.write_text("[]\n")  # made during this run: its own save's, not a dead one's
    assert store.save("web2.example.test", ["hookpack:egress=5mbit"])
    assert stale.exists()


def test_nft_mark_rule_round_trips_through_the_dump_parser():
    msg = nft.new_mark_rule("tap3", 0x10, 0xFFFF, nft.comment("web1.example.test", 1))
    raw = msg.encode(5)[tc._NLMSG.size:]  # a dump answer has the request's layout
    table, chain, mark = nft._rule(raw)
    assert (table, chain) == ("hookpack", "mark/tap3")  # the tap's record chain
    assert (mark.value, mark.mask, mark.comment) == (0x10, 0xFFFF, "hookpack:web1.example.test:1")
    assert mark.jump == ""
    jump = nft.new_jump_rule("tap3").encode(7)[tc._NLMSG.size:]
    table, chain, rule = nft._rule(jump)
    assert (chain, rule.jump, rule.value) == ("tap3", "mark/tap3", None)
    assert nft.parse_comment(mark.comment) == ("web1.example.test", 1)
    assert nft.parse_comment("admin rule") is None
    chain_msg = nft.new_chain("tap3").encode(6)[tc._NLMSG.size:]
    assert nft._chain(chain_msg).hooked_on("tap3")
    assert not nft._chain(chain_msg).hooked_on("tap4")
    record = nft._chain(nft.new_record_chain("tap3").encode(8)[tc._NLMSG.size:])
    assert record.name == "mark/tap3" and not record.hooked_on("tap3")
    assert nft.record_tap("mark/tap3") == "tap3" and nft.record_tap("tap3") is None


def test_nft_set_tap_writes_only_what_is_missing_or_wrong():
    def kinds(msgs):
        return [(m.type, m.chain) for m in msgs]
    fresh = nft.set_tap("tap3", 0x10, 0xFFFF, "hookpack:a:0", nft.TapChains())
    assert kinds(fresh) == [(nft.NEWCHAIN, "mark/tap3"), (nft.NEWRULE, "mark/tap3"),
                            (nft.NEWCHAIN, "tap3"), (nft.NEWRULE, "tap3")]
    # the layout before record chains: the base chain stays, its rule becomes the jump
    old = nft.set_tap("tap3", 0x10, 0xFFFF, "hookpack:a:0",
                      nft.TapChains(base=True, base_on_tap=True))
    assert kinds(old) == [(nft.NEWCHAIN, "mark/tap3"), (nft.NEWRULE, "mark/tap3"),
                          (nft.DELRULE, "tap3"), (nft.NEWRULE, "tap3")]
    # a base chain on another hook is made again
    moved = nft.set_tap("tap3", 0x10, 0xFFFF, "hookpack:a:0",
                        nft.TapChains(record=True, base=True))
    assert kinds(moved) == [(nft.DELRULE, "mark/tap3"), (nft.NEWRULE, "mark/tap3"),
                            (nft.DELRULE, "tap3"), (nft.DELCHAIN, "tap3"),
                            (nft.NEWCHAIN, "tap3"), (nft.NEWRULE, "tap3")]
    # a tap gone with its base chain (Linux < 6.16): only the record is left to remove
    assert kinds(nft.drop_tap("tap3", nft.TapChains(record=True))) == [
        (nft.DELRULE, "mark/tap3"), (nft.DELCHAIN, "mark/tap3")]


def test_nft_comment_longer_than_a_udata_field_is_refused():
    with pytest.raises(ValueError):
        nft.new_mark_rule("tap3", 0x10, 0xFFFF, "hookpack:" + "a" * 250 + ":0")


def _run_cbpf(program: bytes, mark: int) -> int:
    """A tiny classic BPF interpreter for the opcodes mark_program uses."""
    ops = [tc._SOCK_FILTER.unpack_from(program, i) for i in range(0, len(program), 8)]
    a, pc = 0, 0
    while True:
        code, jt, jf, k = ops[pc]
        pc += 1
        if code == 0x20:
            assert k == tc.SKF_AD_MARK
            a = mark
        elif code == 0x54:
            a &= k
        elif code == 0x44:
            a |= k
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x25:
            pc += jt if a > k else jf
        elif code == 0x16:
            return a
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"opcode {code:#x}")


def test_mark_program_maps_the_mark_to_a_class_or_no_match():
    prog = tc.mark_program(0x4850, 0xFFFF)
    assert _run_cbpf(prog, 0x10) == 0x48500010
    assert _run_cbpf(prog, 0xAB0010) == 0x48500010  # bits outside the mask: someone else's
    assert _run_cbpf(prog, 0) == 0  # unmarked: no match, the default class
    wide = tc.mark_program(0x4850, 0xFFFFFFFF)
    assert _run_cbpf(wide, 0x10000) == 0  # does not fit a minor: no match
    assert _run_cbpf(wide, 0xFFFE) == 0x4850FFFE


def test_legacy_parse_finds_only_hookpacks_old_lines():
    text = "\n".join([
        "*mangle", ":FORWARD ACCEPT [0:0]", ":HOOKPACK-SHAPE - [0:0]",
        "-A FORWARD -m comment --comment hookpack-shape -j HOOKPACK-SHAPE",
        "-A FORWARD -j MARK --set-xmark 0x1/0x1",
        '-A HOOKPACK-SHAPE -m physdev --physdev-in tap0 -m comment --comment '
        '"hookpack:a:0" -j CLASSIFY --set-class 4850:0010',
        '-A HOOKPACK-SHAPE -m physdev --physdev-in tap1 -m comment --comment '
        '"hookpack:b:0" -j MARK --set-xmark 0x11/0xffff', "COMMIT"])
    found = legacy.parse(text)
    assert found.chain and len(found.jumps) == 1 and len(found.rules) == 2
    lines = found.lines()
    assert lines[-1] == "-X HOOKPACK-SHAPE" and len(lines) == 4
    assert all("0x1/0x1" not in line for line in lines)
    # a line hookpack did not write keeps the chain and its jump
    kept = legacy.parse(text.replace("COMMIT", "-A HOOKPACK-SHAPE -j RETURN\nCOMMIT"))
    assert kept.foreign == 1 and kept.lines() == [f"-D {r[3:]}" for r in kept.rules]


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
    from hookpack.actions.shaping.action import SETTINGS

    raw = {k: f.default for k, f in SETTINGS.items()}
    with pytest.raises(ConfigError, match="uplink"):
        Settings.from_config(raw, "bpf")
    raw["uplink"] = "eth0"
    s = Settings.from_config(raw, "bpf")
    assert s.major == 0x4850 and s.classifier == "bpf"
    raw["uplink"] = "eth0/../x"
    with pytest.raises(ConfigError):
        Settings.from_config(raw, "bpf")


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


@pytest.mark.parametrize("value,mask", [(0x10, 0xFFFF), (0x1234, 0xFF00), (7, 0xFFFFFFFF),
                                        (0xFFFF, 0xFFFF)])
def test_nft_mark_rule_carries_any_value_and_mask(value, mask):
    """The rule is built from a cached head and the value's 4 bytes: every value lands
    where the kernel (and the dump parser) reads it."""
    raw = nft.new_mark_rule("tap9", value, mask, "hookpack:a:0").encode(3)[tc._NLMSG.size:]
    _table, _chain, mark = nft._rule(raw)
    assert (mark.value, mark.mask) == (value, mask)


def test_rule_shapes_read_what_the_full_parse_reads(monkeypatch):
    """Rules read from a remembered shape give what the full parse gives, for every
    value, mask and target length; a rule of another shape is parsed in full. (The
    kernel's dump layout differs from the request's: the netns tests read real dumps.)"""
    def exprs(msg: nft.Msg) -> bytes:
        return tc.parse_attrs(msg.encode(1)[tc._NLMSG.size:], nft._NFGEN.size)[
            nft.RULE_EXPRESSIONS]

    blobs = [exprs(nft.new_mark_rule(f"tap{i}", value, mask, "hookpack:a:0"))
             for i, (value, mask) in enumerate([(0x10, 0xFFFF), (0x11, 0xFFFF), (0x1234, 0xFF00),
                                                (0xFFFF, 0xFFFF), (7, 0xFFFFFFFF), (0, 0xFFFF)])]
    blobs += [exprs(nft.new_jump_rule(tap)) for tap in ("tap1", "tap2", "tap13", "tap14",
                                                        "vnet123456", "t")]
    # another rule of hookpack's table: a counter, not a mark or jump
    blobs.append(nft._nest(nft.RULE_EXPRESSIONS, nft._expr("counter"))[4:])
    full = [nft._read_exprs(b) for b in blobs]
    shapes = nft.RuleShapes()
    assert [shapes.read(b) for b in blobs] == full
    parsed: list[bytes] = []

    def counting(blob: bytes):
        parsed.append(blob)
        return full[blobs.index(blob)]

    monkeypatch.setattr(nft, "_read_exprs", counting)
    assert [shapes.read(b) for b in blobs] == full  # the second time: from the shapes
    assert parsed == [blobs[-1]]  # only the counter rule, which has no shape, is parsed


def test_ifindexes_agrees_with_if_nametoindex():
    import socket

    names = [name for _index, name in socket.if_nameindex()]
    got = tc.ifindexes([*names, "hp-no-such0", "x" * 16, ""])
    assert {n: got[n] for n in names} == {n: socket.if_nametoindex(n) for n in names}
    assert got["hp-no-such0"] is None and got["x" * 16] is None and got[""] is None


def test_refused_modes_reads_the_datapaths_ports(tmp_path):
    """The ports of ``ovs-system`` (its ``lower_*`` links) are refused, a bridge's are
    not (the real kernel's links: tests/shaping/test_classifier_netns.py)."""
    from hookpack.actions.shaping.reconcile import OVS_REFUSED, refused_mode, refused_modes

    net = tmp_path / "class" / "net"
    for dev in ("ovs-system", "tapo", "tapb", "br0"):
        (net / dev).mkdir(parents=True)
    (net / "tapo" / "master").symlink_to("../ovs-system")
    (net / "ovs-system" / "lower_tapo").symlink_to("../tapo")
    (net / "tapb" / "master").symlink_to("../br0")
    (net / "br0" / "lower_tapb").symlink_to("../tapb")
    taps = ["tapo", "tapb", "tapx"]
    assert refused_modes(taps, tmp_path) == {"tapo": OVS_REFUSED}
    assert [refused_mode(t, tmp_path) for t in taps] == [OVS_REFUSED, "", ""]
    assert refused_modes(taps, tmp_path / "none") == {}


def test_only_the_first_of_equal_creations_is_read_back(tmp_path):
    """A change is always echoed; of creations with the same options on the same kind
    of device (uplink or tap) only the first: the others go without NLM_F_ECHO and
    without a check (the chunk's closing ack proves them done)."""
    from hookpack.actions.shaping.action import SETTINGS
    from hookpack.actions.shaping.model import class_params
    from hookpack.actions.shaping.reconcile import Plan, Reconciler

    raw = {k: f.default for k, f in SETTINGS.items()} | {"uplink": "up0"}
    rec = Reconciler(Settings.from_config(raw, "bpf"), kvm_dir=tmp_path, state_dir=tmp_path,
                     nl=None, nft=None)  # type: ignore[arg-type]  # no I/O here
    from hookpack.actions.shaping.observe import Kernel

    rec.kernel = Kernel(uplink_ifindex=2)  # what the observation found: the uplink is 2
    ten, twenty = class_params(10_000_000, 1500), class_params(20_000_000, 1500)
    plan = Plan()

    def add(ifindex, minor, want, creates):
        req = tc.set_class(ifindex, 0x4850, minor, tc.HtbParams(
            want.rate, want.ceil, want.burst, want.cburst, want.quantum, want.prio), "c")
        rec._add_checked(plan, req, creates, want,
                         lambda: tc.get_class(ifindex, 0x4850, minor, "c"))
        op = plan.first[-1]
        return bool(op.request.flags & tc.NLM_F_ECHO), op.check is not None, op.get

    assert add(2, 0x10, ten, True)[:2] == (True, True)  # first on the uplink
    assert add(2, 0x11, ten, True) == (False, False, None)  # alike: not read back
    assert add(7, 1, ten, True)[:2] == (True, True)  # first on a tap
    assert add(8, 1, ten, True)[:2] == (False, False)
    assert add(2, 0x12, twenty, True)[:2] == (True, True)  # other options
    assert add(2, 0x13, ten, False)[:2] == (True, True)  # a change: always
    echoed = [op for op in plan.first if op.request.flags & tc.NLM_F_ECHO]
    assert all(op.get is not None and op.get.type == tc.RTM_GETTCLASS for op in echoed)


class _FakeNetlink:
    """Stands in for tc.Netlink (no root here): records what each transact sent, from
    which thread; the real socket is driven by the netns tests (a fresh node's
    ``apply --all`` streams, and the ENOBUFS test loses replies in the stream)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.sent: list[list[str]] = []
        self.threads: set[str] = set()
        self.chunk = 0
        self.writes = 0
        self.fail_at = fail_at

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def transact(self, requests):
        import threading

        self.threads.add(threading.current_thread().name)
        if self.fail_at is not None and len(self.sent) == self.fail_at:
            raise tc.NetlinkLost(105, "netlink: replies lost")
        self.sent.append([r.what for r in requests])
        self.writes += len(requests)
        return [tc.Reply(error=1 if r.what == "bad" else 0) for r in requests]


def test_op_stream_sends_full_chunks_while_appending_and_the_rest_at_finish():
    import time

    from hookpack.actions.shaping.reconcile import Op
    from hookpack.actions.shaping.stream import OpStream

    fake = _FakeNetlink()
    ops = OpStream(lambda: fake, 3)
    whats = ["a", "b", "c", "d", "bad", "f", "g"]
    for what in whats:
        ops.append(Op(tc.Request(tc.RTM_NEWTCLASS, 0, 1, what=what)))
    give_up = time.monotonic() + 10
    while len(fake.sent) < 2 and time.monotonic() < give_up:
        time.sleep(0.01)
    assert fake.sent == [["a", "b", "c"], ["d", "bad", "f"]]  # sent before finish()
    replies = ops.finish()
    assert fake.sent == [["a", "b", "c"], ["d", "bad", "f"], ["g"]]
    assert [r.error for r in replies] == [0, 0, 0, 0, 1, 0, 0]  # one per op, in order
    assert fake.threads == {"hookpack-stream"} and ops.writes == 7
    assert ops.finish() is replies and list(ops) == [Op(tc.Request(
        tc.RTM_NEWTCLASS, 0, 1, what=w)) for w in whats]


def test_op_stream_raises_what_the_writer_raised_and_never_hangs():
    from hookpack.actions.shaping.reconcile import Op
    from hookpack.actions.shaping.stream import OpStream

    ops = OpStream(lambda: _FakeNetlink(fail_at=1), 2)
    for what in "abcdefg":
        ops.append(Op(tc.Request(tc.RTM_NEWTCLASS, 0, 1, what=what)))
    with pytest.raises(tc.NetlinkLost):
        ops.finish()

    def no_socket():
        raise OSError(24, "Too many open files")

    broken = OpStream(no_socket, 2)
    broken.append(Op(tc.Request(tc.RTM_NEWTCLASS, 0, 1, what="a")))
    with pytest.raises(OSError, match="open files"):
        broken.finish()


def test_op_stream_shortens_the_thread_switch_interval_while_open_only():
    import sys

    from hookpack.actions.shaping.reconcile import Op
    from hookpack.actions.shaping.stream import SWITCH_INTERVAL, OpStream

    before = sys.getswitchinterval()
    assert before > SWITCH_INTERVAL  # Python's default, 5 ms
    for fail_at in (None, 0):
        ops = OpStream(lambda fail_at=fail_at: _FakeNetlink(fail_at=fail_at), 2)
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        ops.append(Op(tc.Request(tc.RTM_NEWTCLASS, 0, 1, what="a")))
        if fail_at is None:
            ops.finish()
        else:
            with pytest.raises(tc.NetlinkLost):
                ops.finish()
        assert sys.getswitchinterval() == before  # restored, on success and on error
