"""Removing the iptables objects of hookpack's earlier classifier, and nothing else.

Before the netdev marks (hookpack.actions.shaping.nft), shaping classified in the mangle table:
chain ``HOOKPACK-SHAPE`` entered from FORWARD by one jump commented ``hookpack-shape``,
one ``-m physdev --physdev-in <tap>`` rule per tap commented ``hookpack:<inst>:<nic>``
setting CLASSIFY or MARK. Left in place those rules would still put IP packets into
classes by the old numbering (CLASSIFY sets ``skb->priority``, which HTB reads before
any filter). Once per boot a reconcile reads the mangle table of each family with the
host's own tools and deletes exactly those lines: its rules, then the jump and the
chain when no line hookpack did not write is left in it. A node upgraded without a
reboot is migrated by its first reconcile; after a reboot there is nothing to find
and the check costs one save per family, once.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from hookpack.errors import ActionError
from hookpack.locks import held_lock_fds
from hookpack.record import field, record

CHAIN = "HOOKPACK-SHAPE"
HOOK_CHAIN = "FORWARD"
JUMP = f"-m comment --comment hookpack-shape -j {CHAIN}"
_RULE = re.compile(
    rf"-A {CHAIN} -m physdev --physdev-in \S+ -m comment --comment "
    r'"?hookpack:[^:" ]+:\d+"? -j '
    r"(?:CLASSIFY --set-class [0-9a-f]+:[0-9a-f]+|MARK --set-xmark 0x[0-9a-f]+/0x[0-9a-f]+)$")
_MARKER = "shaping-legacy.json"


@record(frozen=True)
class Tools:
    """The save/restore commands of the backend the host's ``iptables`` uses."""

    backend: str  # "nf_tables" | "legacy"
    save: tuple[str, str]  # IPv4, IPv6
    restore: tuple[str, str]


def detect(preferred: str = "auto") -> Tools | None:
    """The host's iptables backend (None: no iptables installed, nothing to clean)."""
    import shutil  # off the hook's hot path: only when legacy rules are looked for

    found = shutil.which("iptables")
    if found is None and preferred == "auto":
        return None
    backend = preferred
    if preferred == "auto":
        real = os.path.basename(os.path.realpath(found or ""))
        backend = "legacy" if "legacy" in real else "nf_tables"
    suffix = "nft" if backend in ("nf_tables", "nft") else "legacy"

    def tool(name: str) -> str:
        specific = name.replace("-", f"-{suffix}-", 1)  # iptables-nft-save
        return specific if shutil.which(specific) else name
    return Tools("nf_tables" if suffix == "nft" else "legacy",
                 (tool("iptables-save"), tool("ip6tables-save")),
                 (tool("iptables-restore"), tool("ip6tables-restore")))


@record
class Found:
    """hookpack's old objects in one family's mangle table."""

    chain: bool = False
    jumps: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    foreign: int = 0  # lines in the chain hookpack did not write

    def lines(self) -> list[str]:
        out = [f"-D {line[3:]}" for line in self.rules]
        if self.chain and not self.foreign:
            out += [f"-D {line[3:]}" for line in self.jumps]
            out.append(f"-X {CHAIN}")
        return out


def parse(text: str) -> Found:
    found = Found()
    for line in text.splitlines():
        if line.startswith(f":{CHAIN} "):
            found.chain = True
        elif line.startswith(f"-A {CHAIN} "):
            if _RULE.fullmatch(line.strip()):
                found.rules.append(line.strip())
            else:
                found.foreign += 1
        elif line.strip() == f"-A {HOOK_CHAIN} {JUMP}":
            found.jumps.append(line.strip())
    return found


def _run(argv: list[str], text: str | None, timeout: float) -> tuple[int, str, str]:
    import subprocess  # off the hook's hot path (as above)

    try:
        proc = subprocess.run(argv, input=text, capture_output=True, text=True,
                              timeout=timeout, check=False, pass_fds=held_lock_fds())
    except (OSError, subprocess.TimeoutExpired) as err:
        return 127, "", str(err)
    return proc.returncode, proc.stdout, proc.stderr


def cleanup(tools: Tools | None, timeout: float = 10.0) -> tuple[list[str], list[str]]:
    """Delete hookpack's old mangle objects in both families: (changes, notes)."""
    import shutil  # off the hook's hot path (as above)

    changes: list[str] = []
    notes: list[str] = []
    if tools is None:
        return changes, notes
    for index, family in enumerate((4, 6)):
        save = tools.save[index]
        if not shutil.which(save):
            continue
        code, out, err = _run([save, "-t", "mangle"], None, timeout)
        if code:
            notes.append(f"old IPv{family} rules not checked: {save}: {_tail(err)}")
            continue
        found = parse(out)
        lines = found.lines()
        if found.foreign:
            notes.append(f"IPv{family} chain {CHAIN} keeps {found.foreign} rule(s) hookpack "
                         "did not write: the chain and its jump are left")
        if not lines:
            continue
        body = "*mangle\n" + "\n".join(lines) + "\nCOMMIT\n"
        code, _out, err = _run([tools.restore[index], "--noflush", "-w",
                                str(max(1, int(timeout)))], body, timeout + 2)
        if code:
            raise ActionError(f"cannot remove hookpack's old IPv{family} {CHAIN} rules: "
                              f"{tools.restore[index]}: {_tail(err)}")
        changes.append(f"old IPv{family} iptables classifier removed ({len(found.rules)} "
                       f"rule(s){', chain and jump' if found.chain and not found.foreign else ''})")
    return changes, notes


def done_this_boot(run_dir: Path, kernel_key: str) -> bool:
    """Whether ``cleanup_once`` ran since this boot (its marker)."""
    try:
        return bool(json.loads((run_dir / _MARKER).read_text()).get("kernel") == kernel_key)
    except (OSError, ValueError, AttributeError):
        return False


def cleanup_once(run_dir: Path, backend: str, kernel_key: str,
                 timeout: float = 10.0) -> tuple[list[str], list[str]]:
    """``cleanup`` once per boot (a marker in the run dir, keyed by the boot)."""
    marker = run_dir / _MARKER
    if done_this_boot(run_dir, kernel_key):
        return [], []
    changes, notes = cleanup(detect(backend), timeout)
    try:
        run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = marker.with_name(f".{_MARKER}.{os.getpid()}")
        tmp.write_text(json.dumps({"kernel": kernel_key}) + "\n")
        os.replace(tmp, marker)
    except OSError:
        pass
    return changes, notes


def bridge_nf_call(family: int, proc_root: str = "/proc") -> bool | None:
    """Whether bridged traffic goes through ip(6)tables (no longer needed by shaping)."""
    name = "bridge-nf-call-iptables" if family == 4 else "bridge-nf-call-ip6tables"
    try:
        with open(f"{proc_root}/sys/net/bridge/{name}") as handle:
            return handle.read().strip() == "1"
    except OSError:
        return None


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no message"
