"""Per-tap classification rules in hookpack's own mangle chain, written like the host does.

One chain, ``HOOKPACK-SHAPE`` in the mangle table, entered from FORWARD by one jump rule
hookpack owns (FORWARD sees bridged traffic through br_netfilter and routed traffic
alike, and CLASSIFY is not allowed in PREROUTING). Per tap one rule::

    -A HOOKPACK-SHAPE -m physdev --physdev-in tap3 -m comment --comment "hookpack:web1:0"
       -j CLASSIFY --set-class 4850:0010        (or -j MARK --set-xmark 0x10/0xffff)

Why the iptables-restore tools and not python-iptables: python-iptables drives only the
legacy xtables through libiptc; Debian 11+ runs ``iptables`` on the nf_tables backend, so
its rules would be invisible to the host's ``iptables`` (and the other way round); it
takes no xtables lock, so it races with every other firewall tool; and it commits whole
tables, rewriting rules it did not create. ``iptables-restore --noflush`` from the
backend the host's ``iptables`` uses changes only the lines given, atomically per table,
and ``-w`` makes it wait for the xtables lock (the legacy backend's; nf_tables has its
own transactions).

Note: a chain declaration (``:CHAIN``) in a ``--noflush`` restore flushes that chain, so
the chain is declared only when it does not exist yet.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hookpack.errors import ActionError

CHAIN = "HOOKPACK-SHAPE"
HOOK_CHAIN = "FORWARD"
JUMP = f"-m comment --comment hookpack-shape -j {CHAIN}"
_RULE = re.compile(
    rf"-A {CHAIN} -m physdev --physdev-in (?P<tap>\S+) -m comment --comment "
    r'"?hookpack:(?P<inst>[^:" ]+):(?P<nic>\d+)"? -j '
    r"(?:CLASSIFY --set-class (?P<cmaj>[0-9a-f]+):(?P<cmin>[0-9a-f]+)"
    r"|MARK --set-xmark 0x(?P<mark>[0-9a-f]+)/0x(?P<mask>[0-9a-f]+))$")


@dataclass(frozen=True)
class Rule:
    tap: str
    instance: str
    nic: int
    mode: str  # "classify" | "mark"
    value: int  # classify: class minor; mark: the mark
    major: int = 0  # classify: the qdisc major
    mask: int = 0  # mark: the mask

    def spec(self) -> str:
        if self.mode == "classify":
            target = f"CLASSIFY --set-class {self.major:x}:{self.value:04x}"
        else:
            target = f"MARK --set-xmark 0x{self.value:x}/0x{self.mask:x}"
        return (f"{CHAIN} -m physdev --physdev-in {self.tap} -m comment --comment "
                f'"hookpack:{self.instance}:{self.nic}" -j {target}')


def parse_rule(line: str) -> Rule | None:
    match = _RULE.fullmatch(line.strip())
    if not match:
        return None
    if match["cmaj"]:
        return Rule(match["tap"], match["inst"], int(match["nic"]), "classify",
                    int(match["cmin"], 16), major=int(match["cmaj"], 16))
    return Rule(match["tap"], match["inst"], int(match["nic"]), "mark", int(match["mark"], 16),
                mask=int(match["mask"], 16))


@dataclass
class Observed:
    """One family's (IPv4 or IPv6) view of hookpack's mangle rules."""

    chain: bool = False
    jumps: int = 0
    rules: list[Rule] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # other lines in our chain: kept


@dataclass(frozen=True)
class Tools:
    """The save/restore commands of the backend the host's ``iptables`` uses."""

    backend: str  # "nf_tables" | "legacy"
    save: tuple[str, str]  # IPv4, IPv6
    restore: tuple[str, str]


def detect(preferred: str = "auto") -> Tools:
    """The host's iptables backend: ``iptables -V`` prints "(nf_tables)" or "(legacy)"."""
    backend = preferred
    if preferred == "auto":
        try:
            out = subprocess.run(["iptables", "-V"], capture_output=True, text=True,
                                 timeout=5, check=False).stdout
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ActionError(f"cannot run iptables -V: {err}") from None
        backend = "nf_tables" if "nf_tables" in out else "legacy"
    suffix = "nft" if backend in ("nf_tables", "nft") else "legacy"
    backend = "nf_tables" if suffix == "nft" else "legacy"

    def tool(name: str) -> str:
        specific = f"{name.replace('-', f'-{suffix}-', 1)}"  # iptables-nft-save
        return specific if shutil.which(specific) else name
    return Tools(backend, (tool("iptables-save"), tool("ip6tables-save")),
                 (tool("iptables-restore"), tool("ip6tables-restore")))


class Netfilter:
    """Reads and writes hookpack's rules; counts restore calls (kernel writes)."""

    def __init__(self, tools: Tools, families: Sequence[int] = (4, 6),
                 timeout: float = 10.0) -> None:
        self.tools = tools
        self.families = tuple(families)
        self.timeout = timeout
        self.writes = 0

    def _idx(self, family: int) -> int:
        return 0 if family == 4 else 1

    def observe(self, family: int) -> Observed:
        cmd = [self.tools.save[self._idx(family)], "-t", "mangle"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=max(1.0, self.timeout), check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ActionError(f"{cmd[0]}: {err}") from None
        if proc.returncode:
            raise ActionError(f"{cmd[0]} failed: {_tail(proc.stderr)}")
        seen = Observed()
        for line in proc.stdout.splitlines():
            if line.startswith(f":{CHAIN} "):
                seen.chain = True
            elif line.startswith(f"-A {HOOK_CHAIN} ") and line.endswith(f"-j {CHAIN}"):
                seen.jumps += 1
            elif line.startswith(f"-A {CHAIN} "):
                rule = parse_rule(line)
                if rule is None:
                    seen.foreign.append(line)
                else:
                    seen.rules.append(rule)
        return seen

    def restore(self, family: int, lines: Iterable[str]) -> None:
        """One ``--noflush`` transaction on the mangle table; nothing when no lines."""
        body = list(lines)
        if not body:
            return
        text = "*mangle\n" + "\n".join(body) + "\nCOMMIT\n"
        wait = str(max(1, int(self.timeout)))
        cmd = [self.tools.restore[self._idx(family)], "--noflush", "-w", wait]
        self.writes += 1
        try:
            proc = subprocess.run(cmd, input=text, capture_output=True, text=True,
                                  timeout=self.timeout + 2, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ActionError(f"{cmd[0]}: {err}") from None
        if proc.returncode:
            raise ActionError(f"{cmd[0]} refused the change: {_tail(proc.stderr)}")


def changes(seen: Observed, add: Iterable[Rule], delete: Iterable[Rule], *,
            want_chain: bool) -> list[str]:
    """restore lines: create chain/jump if missing, add and delete rules; or remove all."""
    lines: list[str] = []
    if want_chain:
        if not seen.chain:
            lines.append(f":{CHAIN} - [0:0]")
        if seen.jumps == 0:
            lines.append(f"-I {HOOK_CHAIN} 1 {JUMP}")
        lines += [f"-A {r.spec()}" for r in add]
        lines += [f"-D {r.spec()}" for r in delete]
        return lines
    # tear down: our rules, the jump(s), and the chain if nothing foreign is left in it
    lines += [f"-D {r.spec()}" for r in delete]
    if not seen.foreign and seen.chain:
        lines += [f"-D {HOOK_CHAIN} {JUMP}"] * seen.jumps
        lines.append(f"-X {CHAIN}")
    return lines


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no message"


def bridge_nf_call(family: int, proc_root: str = "/proc") -> bool | None:
    """Whether bridged traffic goes through ip(6)tables (needed for physdev matches)."""
    name = "bridge-nf-call-iptables" if family == 4 else "bridge-nf-call-ip6tables"
    try:
        with open(f"{proc_root}/sys/net/bridge/{name}") as handle:
            return handle.read().strip() == "1"
    except OSError:
        return None
