"""Shaping as it is, per tap: the rate hookpack wants vs the kernel's HTB class and counters.

Read-only and lock-free (a status or metrics run must never hold up a hook): the NICs
come from Ganeti's ``nic/<instance>/<index>`` files, the wanted rates from the
instance's stored tags and the config, the tap -> uplink class link from the mark rule
of the tap's chain in hookpack's nf_tables netdev table (two netlink dumps), and the
classes with their counters from rtnetlink gets (hookpack.actions.shaping.tc; no pyroute2).
A tap whose chain is missing, not hooked on the tap or not setting a mark is reported
as not classified, never as in step.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hookpack import validate
from hookpack.actions.shaping import nft, tc
from hookpack.actions.shaping.counters import Counters, counters
from hookpack.actions.shaping.model import TAP_MINOR, format_rate
from hookpack.actions.shaping.observe import TapMark, observe_marks
from hookpack.actions.shaping.policy import Defaults, PolicyStore, from_tags
from hookpack.actions.shaping.reconcile import Nic, read_nics, refused_mode
from hookpack.errors import BadInput, ConfigError
from hookpack.record import field, record

EGRESS, INGRESS = "egress", "ingress"  # VM -> world (uplink class), world -> VM (tap class)


@record
class ClassView:
    """One direction of one tap: wanted rate vs the kernel's class."""

    direction: str
    want_rate: int | None  # bytes/s; None: hookpack does not shape this direction
    handle: str = ""  # "4850:10" on the uplink, "4850:1" on the tap
    device: str = ""
    rate: int | None = None  # bytes/s, as the kernel has it
    ceil: int | None = None
    counters: Counters | None = None
    error: str | None = None

    @property
    def match(self) -> bool | None:
        if self.want_rate is None or self.rate is None:
            return None
        # the limit is the ceil; the rate is the guarantee under the root (at most the limit)
        return self.ceil == self.want_rate and self.rate <= self.want_rate

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "device": self.device, "handle": self.handle,
                "want_rate": self.want_rate, "rate": self.rate, "ceil": self.ceil,
                "match": self.match,
                "counters": self.counters.to_json() if self.counters else None,
                "error": self.error}


@record
class TapView:
    instance: str
    nic: int
    tap: str
    classes: list[ClassView] = field(default_factory=list)
    error: str | None = None  # the tap as a whole (vanished, ...)

    def to_json(self) -> dict[str, Any]:
        return {"nic": self.nic, "tap": self.tap, "error": self.error,
                "classes": [c.to_json() for c in self.classes]}


@record(frozen=True)
class View:
    uplink: str
    major: int
    ingress: bool
    families: tuple[int, ...]
    defaults: Defaults

    @classmethod
    def from_settings(cls, s: Mapping[str, Any]) -> View:
        if not s.get("uplink"):
            raise ConfigError("shaping.uplink is not set", key="shaping.uplink")
        try:
            uplink = validate.interface_name(str(s["uplink"]))
        except BadInput as err:
            raise ConfigError(str(err), key="shaping.uplink") from None
        return cls(uplink, int(str(s["handle"]), 16), bool(s["shape_ingress"]),
                   (4, 6) if s["ipv6"] else (4,), Defaults.from_settings(s))


def observe(settings: Mapping[str, Any], kvm_dir: Path, state_dir: Path,
            instances: Iterable[str] | None, timeout: float = 5.0) -> dict[str, list[TapView]]:
    """Per instance (those given; None: every instance with NIC files) its taps' views.

    Raises ConfigError/ActionError when nothing can be read (no uplink, no netlink).
    """
    view = View.from_settings(settings)
    nics, _notes = read_nics(kvm_dir, None if instances is None else list(instances))
    taps = {n.tap: n for group in nics.values() for n in group}
    rules, rules_error = _rules(taps, timeout)
    out: dict[str, list[TapView]] = {}
    store = PolicyStore(state_dir)
    up = tc.ifindex(view.uplink)
    with tc.Netlink(timeout=max(0.5, timeout)) as nl:
        for name, group in sorted(nics.items()):
            policy = from_tags(store.load(name), view.defaults)
            out[name] = [_tap(nl, view, up, nic, policy.egress, policy.ingress,
                              rules.get(nic.tap), rules_error) for nic in group]
    return out


def _rules(taps: Mapping[str, Nic], timeout: float) -> tuple[dict[str, TapMark], str | None]:
    """tap -> its mark (the mark names the tap's uplink class)."""
    if not taps:
        return {}, None
    try:
        with nft.Nft(timeout=max(0.5, timeout)) as n:
            marks = observe_marks(n)
    except OSError as err:
        return {}, f"cannot read hookpack's nf_tables netdev table: {err}"
    found: dict[str, TapMark] = {}
    for tap, mark in marks.taps.items():
        nic = taps.get(tap)
        if nic and nic.instance == mark.instance and nic.index == mark.nic:
            found[tap] = mark
    return found, None


def _tap(nl: tc.Netlink, view: View, up: int | None, nic: Nic, egress: int, ingress: int,
         rule: TapMark | None, rules_error: str | None) -> TapView:
    tv = TapView(nic.instance, nic.index, nic.tap)
    index = tc.ifindex(nic.tap)
    if index is None:
        tv.error = f"{nic.tap} does not exist (vanished tap?)"
    eg = ClassView(EGRESS, egress, device=view.uplink)
    if rules_error:
        eg.error = rules_error
    elif refused_mode(nic.tap):
        eg.error = f"{nic.tap}: {refused_mode(nic.tap)}: egress not classified, not shaped"
    elif rule is None or not rule.value:
        eg.error = (f"no hookpack mark for {nic.tap}: egress not classified, not shaped "
                    "(run `hookpack shaping apply`)")
    elif not rule.hooked:
        eg.error = (f"hookpack's chain for {nic.tap} is not on the tap's ingress: egress "
                    "not classified (run `hookpack shaping apply`)")
    elif up is None:
        eg.error = f"uplink {view.uplink} does not exist"
    else:
        minor = rule.value
        eg.handle = f"{view.major:x}:{minor:x}"
        _read(nl, eg, tc.get_class(up, view.major, minor, f"class {eg.handle}"))
    tv.classes.append(eg)
    ing = ClassView(INGRESS, ingress if view.ingress else None, device=nic.tap,
                    handle=f"{view.major:x}:{TAP_MINOR:x}")
    if index is None:
        ing.error = tv.error
    else:
        _read(nl, ing, tc.get_class(index, view.major, TAP_MINOR, f"class on {nic.tap}"))
        if ing.error and ing.want_rate is None:
            ing.error = None  # not shaped, not wanted: nothing to say
    tv.classes.append(ing)
    return tv


def _read(nl: tc.Netlink, cv: ClassView, request: tc.Request) -> None:
    try:
        (reply,) = nl.transact([request])
    except OSError as err:
        cv.error = f"netlink: {err}"
        return
    if reply.error in (errno.ENOENT, errno.EINVAL) or (not reply.error and not reply.objects):
        cv.error = f"no class {cv.handle} on {cv.device}"
        return
    if reply.error:
        cv.error = str(tc.NetlinkError(reply.error, reply.extack, request.what))
        return
    obj = reply.objects[0]
    params = obj.htb_class()
    if params is None:
        cv.error = f"{cv.handle} on {cv.device} is not an HTB class ({obj.kind})"
        return
    cv.rate, cv.ceil = params.rate, params.ceil
    cv.counters = counters(obj)


def describe(cv: ClassView) -> str:
    """One direction in a line: `egress 10mbit (kernel 10mbit/10mbit 4850:10) 1.2 MB ...`."""
    want = format_rate(cv.want_rate) if cv.want_rate else "unshaped"
    if cv.error:
        return f"{cv.direction} {want}: {cv.error}"
    assert cv.rate is not None and cv.ceil is not None
    mark = "" if cv.match in (True, None) else " MISMATCH"
    c = cv.counters or Counters()
    return (f"{cv.direction} {want} (kernel {format_rate(cv.rate)}/{format_rate(cv.ceil)} "
            f"{cv.handle}{mark}) {c.bytes} B {c.packets} pkts {c.drops} drops "
            f"{c.overlimits} overlimits")
