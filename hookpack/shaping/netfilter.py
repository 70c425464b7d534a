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

import contextlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hookpack.errors import ActionError
from hookpack.locks import held_lock_fds

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
    rules: list[Rule] = field(default_factory=list)  # ours, in the reconcile's scope
    foreign: list[str] = field(default_factory=list)  # other lines in our chain: kept
    other_minors: set[int] = field(default_factory=set)  # of our rules outside the scope


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
        # Debian's alternatives point iptables at xtables-nft-multi or
        # xtables-legacy-multi: reading the link costs nothing, a process ~10 ms.
        found = shutil.which("iptables")
        real = os.path.basename(os.path.realpath(found)) if found else ""
        if "nft" in real:
            backend = "nf_tables"
        elif "legacy" in real:
            backend = "legacy"
    if backend == "auto":
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


def rules_by_backend(timeout: float = 5.0) -> dict[str, int | None]:
    """How many rules (``-A`` lines, IPv4 and IPv6) each iptables backend holds in this
    network namespace; None: that backend's tools are missing or failed. Both backends
    apply at once in the kernel, but each backend's tools see only their own rules."""
    counts: dict[str, int | None] = {}
    for backend, suffix in (("nf_tables", "nft"), ("legacy", "legacy")):
        total: int | None = 0
        for tool in (f"iptables-{suffix}-save", f"ip6tables-{suffix}-save"):
            total = _add(total, _count_rules(tool, timeout))
        counts[backend] = total
    return counts


def _add(total: int | None, more: int | None) -> int | None:
    return None if total is None or more is None else total + more


def _count_rules(tool: str, timeout: float) -> int | None:
    if not shutil.which(tool):
        return None
    try:
        proc = subprocess.run([tool], capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return sum(1 for line in proc.stdout.splitlines() if line.startswith("-A "))


def nft_genid() -> int | None:
    """nf_tables' ruleset generation in this network namespace (NFT_MSG_GETGEN): every
    committed transaction, by any tool, increments it by one."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           12) as sock:  # NETLINK_NETFILTER
            sock.settimeout(2.0)
            sock.bind((0, 0))
            body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
            sock.send(struct.pack("=IHHII", 16 + len(body), (10 << 8) | 16, 1, 1, 0) + body)
            data = sock.recv(65536)
    except OSError:
        return None
    length, mtype = struct.unpack_from("=IH", data)
    if mtype != (10 << 8) | 15 or length > len(data):  # NFT_MSG_NEWGEN
        return None
    pos = 20
    while pos + 4 <= length:
        alen, atype = struct.unpack_from("=HH", data, pos)
        if alen < 4:
            break
        if atype & 0x3FFF == 1 and alen >= 8:  # NFTA_GEN_ID, big endian
            return int(struct.unpack_from(">I", data, pos + 4)[0])
        pos += (alen + 3) & ~3
    return None


class SaveCache:
    """The last ``iptables-save -t mangle`` text per family, valid while nf_tables'
    generation id is unchanged: a hook then reads hookpack's rules without two
    iptables-save processes. Only with the nf_tables backend (legacy has no generation);
    kept in the run dir (tmpfs: gone at boot, like the rules), keyed by network
    namespace. After hookpack's own restores the saved text is updated with the lines
    it wrote, and kept only if the generation moved by exactly its own transactions
    (nobody else committed in between)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.netns = os.stat("/proc/self/ns/net").st_ino
        except OSError:
            self.netns = 0

    def load(self, genid: int | None) -> dict[int, str] | None:
        if genid is None:
            return None
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if data.get("genid") != genid or data.get("netns") != self.netns:
            return None
        return {int(k): v for k, v in data.get("saves", {}).items()}

    def store(self, genid: int | None, saves: Mapping[int, str]) -> None:
        if genid is None:
            self.drop()
            return
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"genid": genid, "netns": self.netns,
                                       "saves": {str(k): v for k, v in saves.items()}}))
            os.replace(tmp, self.path)
        except OSError:
            self.drop()

    def drop(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


def apply_lines(save: str, lines: Iterable[str]) -> str | None:
    """The save text after a restore of ``lines`` (None: cannot tell; drop the cache)."""
    out = save.splitlines()
    try:
        commit = len(out) - 1 - out[::-1].index("COMMIT")
    except ValueError:
        return None
    for line in lines:
        if line.startswith(":"):
            out.insert(commit, line)
            commit += 1
        elif line.startswith(("-A ", "-I ")):
            words = line.split(" ")
            text = ("-A " + " ".join(words[1:2] + words[3:])) if line.startswith("-I ") \
                else line
            out.insert(commit, text)
            commit += 1
        elif line.startswith("-D "):
            target = "-A " + line[3:]
            if target not in out:
                return None
            index = out.index(target)
            del out[index]
            commit -= 1
        elif line.startswith("-X "):
            decl = [i for i, text in enumerate(out) if text.startswith(f":{line[3:]} ")]
            if not decl:
                return None
            del out[decl[0]]
            commit -= 1
        else:
            return None
    return "\n".join(out) + "\n"


class Netfilter:
    """Reads and writes hookpack's rules; counts restore calls (kernel writes)."""

    def __init__(self, tools: Tools, families: Sequence[int] = (4, 6),
                 timeout: float = 10.0, cache: SaveCache | None = None) -> None:
        self.tools = tools
        self.families = tuple(families)
        self.timeout = timeout
        self.writes = 0
        self.cache = cache if tools.backend == "nf_tables" else None
        self.saves: dict[int, str] = {}  # the texts the last observe read
        self.save_runs = 0  # iptables-save processes run (0: the cache answered)
        self.genid: int | None = None

    def _idx(self, family: int) -> int:
        return 0 if family == 4 else 1

    def observe(self, family: int) -> Observed:
        return self.observe_all((family,))[family]

    def observe_all(self, families: Sequence[int] | None = None,
                    scope: Scope | None = None) -> dict[int, Observed]:
        """Save the mangle table of each family, the saves running side by side."""
        families = self.families if families is None else families
        self.genid = nft_genid() if self.cache else None
        cached = self.cache.load(self.genid) if self.cache else None
        if cached is not None and all(f in cached for f in families):
            self.saves = {f: cached[f] for f in families}
            return {f: parse_save(self.saves[f], scope) for f in families}
        cmds = {f: [self.tools.save[self._idx(f)], "-t", "mangle"] for f in families}
        self.save_runs += len(cmds)
        results = _run_all(cmds, {}, self.timeout)
        out: dict[int, Observed] = {}
        self.saves = {}
        for family, (code, stdout, stderr) in results.items():
            if code:
                raise ActionError(f"{cmds[family][0]} failed: {_tail(stderr)}")
            out[family] = parse_save(stdout, scope)
            self.saves[family] = stdout
        if self.cache is not None:
            after = nft_genid()
            if after is not None and after == self.genid:
                self.cache.store(after, self.saves)
            else:
                self.cache.drop()
        return out

    def restore(self, family: int, lines: Iterable[str]) -> None:
        self.restore_all({family: lines})

    def restore_all(self, changes: Mapping[int, Iterable[str]]) -> list[str]:
        """One ``--noflush`` transaction on the mangle table per family (side by side);
        nothing for a family without lines. Returns the failures."""
        return self.restore_finish(self.restore_start(changes))

    def restore_start(self, changes: Mapping[int, Iterable[str]]
                      ) -> tuple[_Procs, dict[int, list[str]]]:
        """Start the restores; the caller does other work, then ``restore_finish``."""
        wait = str(max(1, int(self.timeout)))
        cmds: dict[int, list[str]] = {}
        inputs: dict[int, str] = {}
        bodies: dict[int, list[str]] = {}
        for family, lines in changes.items():
            body = list(lines)
            if body:
                cmds[family] = [self.tools.restore[self._idx(family)], "--noflush", "-w", wait]
                inputs[family] = "*mangle\n" + "\n".join(body) + "\nCOMMIT\n"
                bodies[family] = body
        self.writes += len(cmds)
        procs = _Procs(cmds, inputs)
        procs.lines = bodies
        return procs, cmds

    def restore_finish(self, started: tuple[_Procs, dict[int, list[str]]]) -> list[str]:
        procs, cmds = started
        failures = []
        for family, (code, _out, stderr) in procs.finish(self.timeout + 2).items():
            if code:
                failures.append(f"IPv{family} rules: {cmds[family][0]} refused the change: "
                                f"{_tail(stderr)}")
        self._after_write(procs.lines if not failures else None, len(cmds))
        return failures

    def _after_write(self, lines: Mapping[int, list[str]] | None, commits: int) -> None:
        """Keep the save cache right after our own restores, or drop it."""
        if self.cache is None or not commits:
            return
        after = nft_genid()
        if (lines is None or self.genid is None or after != self.genid + commits
                or set(lines) - set(self.saves)):
            self.cache.drop()
            return
        saves = dict(self.saves)
        for family, body in lines.items():
            text = apply_lines(saves[family], body)
            if text is None:
                self.cache.drop()
                return
            saves[family] = text
        self.saves = saves
        self.genid = after
        self.cache.store(after, saves)


@dataclass(frozen=True)
class Scope:
    """Rules a reconcile looks at in detail: its instances' and its taps'."""

    instances: frozenset[str]
    taps: frozenset[str]

    def covers(self, line: str) -> bool:
        return (any(f'"hookpack:{name}:' in line for name in self.instances)
                or any(f"--physdev-in {tap} " in line for tap in self.taps))


def parse_save(text: str, scope: Scope | None = None) -> Observed:
    """Our chain's rules; with a scope, rules outside it only give their class minor
    (a string split, not a regex: a hook with 1000 taps shaped reads 1000 lines)."""
    seen = Observed()
    prefix = f"-A {CHAIN} "
    for line in text.splitlines():
        if line.startswith(prefix):
            if scope is not None and not scope.covers(line):
                minor = _minor_of(line)
                if minor is not None:
                    seen.other_minors.add(minor)
                    continue
            rule = parse_rule(line)
            if rule is None:
                seen.foreign.append(line)
            else:
                seen.rules.append(rule)
        elif line.startswith(f":{CHAIN} "):
            seen.chain = True
        elif line.startswith(f"-A {HOOK_CHAIN} ") and line.endswith(f"-j {CHAIN}"):
            seen.jumps += 1
    return seen


def _minor_of(line: str) -> int | None:
    """The class minor (CLASSIFY 4850:0010) or mark (MARK 0x10/0xffff) a rule sets."""
    if "hookpack:" not in line:
        return None
    last = line.rsplit(" ", 1)[-1]
    try:
        if "/" in last:
            return int(last.split("/", 1)[0], 16)
        if ":" in last:
            return int(last.split(":", 1)[1], 16)
    except ValueError:
        return None
    return None


class _Procs:
    """Commands running side by side: started (inputs written), finished later."""

    def __init__(self, cmds: dict[int, list[str]], inputs: dict[int, str]) -> None:
        self.lines: dict[int, list[str]] = {}
        self.procs: dict[int, subprocess.Popen[str]] = {}
        self.results: dict[int, tuple[int, str, str]] = {}
        try:
            for key, cmd in cmds.items():
                try:
                    self.procs[key] = subprocess.Popen(
                        cmd, stdin=subprocess.PIPE if key in inputs else subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        pass_fds=held_lock_fds())
                except OSError as err:
                    self.results[key] = (127, "", str(err))
            # the tools read all their input before they write (little) output
            for key, proc in self.procs.items():
                if key in inputs and proc.stdin:
                    proc.stdin.write(inputs[key])
                    proc.stdin.close()
                    proc.stdin = None
        except BaseException:
            self.kill()
            raise

    def finish(self, timeout: float) -> dict[int, tuple[int, str, str]]:
        try:
            for key, proc in self.procs.items():
                out, errs = proc.communicate(timeout=timeout)
                self.results[key] = (proc.returncode, out, errs)
        except subprocess.TimeoutExpired as err:
            raise ActionError(f"{err.cmd[0]} did not finish in {timeout:.0f} s") from None
        finally:
            self.kill()
        return self.results

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _run_all(cmds: dict[int, list[str]], inputs: dict[int, str], timeout: float
             ) -> dict[int, tuple[int, str, str]]:
    """Run the commands concurrently; (exit code, stdout, stderr) per key."""
    return _Procs(cmds, inputs).finish(timeout)


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
