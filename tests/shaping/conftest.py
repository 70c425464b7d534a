"""Fixtures for the shaping tests: a netns node and the hookpack CLI/hook run inside it."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.shaping.topo import Node, sh

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def _can_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not shutil.which("ip") or not shutil.which("iptables-save"):
        return "needs iproute2 and iptables"
    return None


_READ_CLASSES = """
import json, sys
from pyroute2 import IPRoute
out = {}
with IPRoute() as ipr:
    idx = ipr.link_lookup(ifname=sys.argv[1])[0]
    for c in ipr.get_classes(idx):
        h = c.get("handle")
        if c.get_attr("TCA_KIND") != "htb":
            continue  # a tbf leaf's own class
        p = c.get_nested("TCA_OPTIONS", "TCA_HTB_PARMS") or {}
        st = c.get_nested("TCA_STATS2", "TCA_STATS_BASIC") or {}
        qs = c.get_nested("TCA_STATS2", "TCA_STATS_QUEUE") or {}
        rate, ceil = p.get("rate", 0), p.get("ceil", 0)
        # above 2^32 bytes/s the kernel sends TCA_HTB_RATE64/CEIL64 (the 32-bit field
        # then holds 2^32-1)
        rate = c.get_nested("TCA_OPTIONS", "TCA_HTB_RATE64") or rate
        ceil = c.get_nested("TCA_OPTIONS", "TCA_HTB_CEIL64") or ceil
        out[f"{h >> 16:x}:{h & 0xffff:x}"] = {
            "kind": c.get_attr("TCA_KIND"), "rate": rate, "ceil": ceil,
            "burst": round(p.get("buffer", 0) * 64 * rate / 1e9),
            "cburst": round(p.get("cbuffer", 0) * 64 * ceil / 1e9),
            "quantum": p.get("quantum"), "bytes": st.get("bytes", 0),
            "packets": st.get("packets", 0), "drops": qs.get("drops", 0),
            "parent": f"{c['parent'] >> 16:x}:{c['parent'] & 0xffff:x}"}
print(json.dumps(out))
"""


_READ_LEAVES = """
import json, sys
from pyroute2 import IPRoute
out = {}
with IPRoute() as ipr:
    idx = ipr.link_lookup(ifname=sys.argv[1])[0]
    for q in ipr.get_qdiscs(idx):
        p = q.get("parent")
        if p == 0xFFFFFFFF or p >> 16 != 0x4850:
            continue  # roots, and a tbf leaf's own fifo
        kind = q.get_attr("TCA_KIND")
        opts = q.get_attr("TCA_OPTIONS")
        row = {"kind": kind, "handle": q.get("handle")}
        if kind == "tbf":
            parms = q.get_nested("TCA_OPTIONS", "TCA_TBF_PARMS") or {}
            # pyroute2 leaves TCA_TBF_RATE64 undecoded: the rate is read with tc -j
            row["limit"] = parms.get("limit")
        elif kind in ("bfifo", "pfifo"):
            row["limit"] = opts.get("limit") if isinstance(opts, dict) else None
        out[f"{p >> 16:x}:{p & 0xffff:x}"] = row
print(json.dumps(out))
"""


def parse_nft(text: str) -> dict[str, dict]:
    """``nft list table netdev hookpack`` as tap -> device (of its base chain), mark,
    comment and rules (of its record chain ``mark/<tap>``), jump (the base chain's jump
    target). A base chain's own mark rule (the layout before record chains) counts as
    its tap's mark."""
    import re

    chains: dict[str, dict] = {}
    chain = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("chain "):
            chain = line.split()[1].strip('"')
            chains[chain] = {"device": None, "mark": None, "comment": None, "rules": 0,
                             "jump": None}
        elif chain and line.startswith("type filter hook ingress"):
            dev = re.search(r'device "?([^" ]+)"?', line)
            chains[chain]["device"] = dev.group(1) if dev else None
        elif chain and line.startswith("jump "):
            chains[chain]["jump"] = line.split()[1].strip('"')
        elif chain and line.startswith("meta mark set"):
            chains[chain]["rules"] += 1
            m = re.search(r"\| (0x[0-9a-f]+)", line)
            c = re.search(r'comment "([^"]*)"', line)
            chains[chain]["mark"] = int(m.group(1), 16) if m else None
            chains[chain]["comment"] = c.group(1) if c else None
    out: dict[str, dict] = {}
    for name in chains:
        tap = name.removeprefix("mark/")
        base = chains.get(tap, {})
        record = chains.get(f"mark/{tap}", base)
        out[tap] = {"device": base.get("device"), "jump": base.get("jump"),
                    **{k: record.get(k) for k in ("mark", "comment", "rules")}}
    return out


class Shaper:
    """One node plus a hookpack config pointing at its KVM dir."""

    def __init__(self, base: Path, name: str = "node1.example.test", extra: str = "") -> None:
        self.base = base
        self.node = Node(base)
        self.fqdn = name
        self.config = base / "hookpack.toml"
        self.write_config(extra)

    def write_config(self, extra: str = "", **shaping: object) -> None:
        settings = {"enabled": True, "uplink": "up0", "classifier": "classify",
                    "egress_rate": "10mbit", "ingress_rate": "20mbit", **shaping}
        body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
        self.config.write_text(
            f'[log]\nsyslog = false\n\n[node]\nfqdn = "{self.fqdn}"\n\n[paths]\n'
            f'kvm_dir = "{self.node.kvm_dir}"\nstate_dir = "{self.base / "state"}"\n'
            f'run_dir = "{self.base / "run"}"\nhooks_dir = "{self.base / "hooks"}"\n\n'
            f"[shaping]\n{body}\n{extra}\n")
        self.config.chmod(0o600)

    def cli(self, *args: str, check: bool = True) -> dict:
        out = self.node.run(PYTHON, "-m", "hookpack", "shaping", *args, "--json",
                            "--config", str(self.config), check=check)
        return json.loads(out) if out.strip() else {}

    def cli_raw(self, *args: str) -> tuple[int, str, str]:
        import subprocess

        proc = subprocess.run(["ip", "netns", "exec", self.node.ns, PYTHON, "-m", "hookpack",
                               "shaping", *args, "--config", str(self.config)],
                              capture_output=True, text=True, timeout=120, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def hook(self, environ: dict[str, str]) -> tuple[int, str]:
        import subprocess

        env = {k: v for k, v in environ.items() if k.startswith("GANETI_")}
        env["PATH"] = "/sbin:/bin:/usr/sbin:/usr/bin"
        proc = subprocess.run(["ip", "netns", "exec", self.node.ns, PYTHON, "-m", "hookpack",
                               "hook", "--config", str(self.config)], env=env, cwd="/",
                              capture_output=True, text=True, timeout=60, check=False)
        return proc.returncode, proc.stderr

    def classes(self, dev: str = "up0") -> dict[str, dict]:
        """The device's classes read back with pyroute2 (iproute2 6.1's ``tc -j`` prints
        HTB classes as text): handle -> rate, ceil, burst, cburst, quantum, bytes, packets."""
        return json.loads(self.node.run(PYTHON, "-c", _READ_CLASSES, dev))

    def leaves(self, dev: str = "up0") -> dict[str, dict]:
        """Leaf qdiscs of the device read back with pyroute2: parent class -> kind, handle,
        limit (bytes) and, for tbf, rate. HTB's default pfifo is not listed."""
        return json.loads(self.node.run(PYTHON, "-c", _READ_LEAVES, dev))

    def rules(self, family: int = 4) -> list[str]:
        """Lines of the old iptables classifier (none are ever written now)."""
        return [line for line in self.node.iptables_save(family).splitlines()
                if "HOOKPACK-SHAPE" in line and line.startswith("-A")]

    def marks(self) -> dict[str, dict]:
        """hookpack's netdev table read back with the nft tool: chain -> device, mark,
        comment (mark from ``meta mark set meta mark & M | V``)."""
        text = self.node.run("nft", "list", "table", "netdev", "hookpack", check=False)
        return parse_nft(text)

    def filters(self, dev: str = "up0") -> list[str]:
        return [line for line in self.node.run("tc", "filter", "show", "dev", dev).splitlines()
                if "handle" in line]

    def close(self) -> None:
        self.node.close()


@pytest.fixture
def shaper(tmp_path):
    why = _can_netns()
    if why:
        pytest.skip(why)
    made: list[Shaper] = []

    def make(name: str = "node1.example.test", sub: str = "a") -> Shaper:
        base = tmp_path / sub
        base.mkdir()
        s = Shaper(base, name)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


__all__ = ["ROOT", "Shaper", "sh"]
