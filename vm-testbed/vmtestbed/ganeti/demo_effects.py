"""What the demo measures of hookpack's work, each read back from where it lands.

- Shaping: the guest's upload (iperf3 in the guest, through its real tap, bridge and
  the node's uplink) to an ``iperf3 -s`` in the master node's network namespace, as
  wire rate against the HTB class the kernel holds for its tap (read with ``hookpack
  status --json``, which asks the kernel over rtnetlink).
- Pinning: the vCPU threads from QEMU's QMP ``query-cpus-fast``, their affinities from
  ``/proc/<pid>/task/<tid>/status`` and each CPU's NUMA node from sysfs.
- Announce: a webhook receiver (vmtestbed.receivers: checks the HMAC signature) on the
  master's cluster address, inside its namespace; the demo reads what it received.
- DNS: a real PowerDNS (Debian's pdns-server, vmtestbed.pdns) on the master's cluster
  address, inside its namespace, queried over its HTTP API for the instance's A and PTR
  records.

The sinks are started before the rollout: their addresses and keys go into the config
the Ansible role writes (:meth:`Sinks.config`, :meth:`Sinks.secrets`).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmtestbed import pdns, receivers
from vmtestbed.ganeti.ansible_rollout import LAB_PATHS, lab_config
from vmtestbed.ganeti.errors import LabError
from vmtestbed.qmp import QMPClient
from vmtestbed.shapemeter import IperfServers, Measurement, measure_shell_until_within

if TYPE_CHECKING:
    from vmtestbed.ganeti.lab import Lab
    from vmtestbed.ganeti.node import Node

HOOKPACK = LAB_PATHS["hookpack_bin_link"]
CONFIG_DIR = LAB_PATHS["hookpack_config_dir"]
CONFIG = f"{CONFIG_DIR}/hookpack.toml"
SECRETS = f"{CONFIG_DIR}/secrets"  # the role's hookpack_secrets land here
ZONE, REVZONE = "example.test.", "100.51.198.in-addr.arpa."
EGRESS_MBIT = 10  # the config's egress_rate
TAG_MBIT = 5  # the rate of the tag the demo adds
IPERF_PORT = 5341
PDNS_API_PORT, PDNS_DNS_PORT = 8081, 5300  # in the master's own network namespace
KVM_RUN = "run/ganeti/kvm-hypervisor"


@dataclass
class Sinks:
    """The webhook receiver and PowerDNS the rolled-out config points at."""

    server: pdns.Pdns
    wrap: list[str]  # runs a command in the master's namespaces
    receiver_url: str
    journal: Path
    master_ip: str
    workdir: Path

    def config(self) -> dict[str, Any]:
        """hookpack_config: the lab's record/policy plus the actions the demo shows."""
        return {
            **lab_config(),
            "shaping": {"enabled": True, "uplink": "eth1", "classifier": "auto",
                        "egress_rate": f"{EGRESS_MBIT}mbit", "ingress_rate": "40mbit"},
            "pinning": {"enabled": True},
            "announce": {"enabled": True,
                         "webhook_url_file": f"{SECRETS}/webhook-url",
                         "webhook_hmac_key_file": f"{SECRETS}/webhook-hmac",
                         "allow_insecure_hosts": [self.master_ip]},
            "dns": {"enabled": True, "api_url": self.server.url,
                    "api_key_file": f"{SECRETS}/powerdns-api-key",
                    "forward_zones": [ZONE.rstrip(".")], "reverse_zones": [REVZONE],
                    "timeout": 2.0},
        }

    def secrets(self) -> dict[str, str]:
        return {"webhook-url": self.receiver_url, "webhook-hmac": receivers.HMAC_KEY,
                "powerdns-api-key": self.server.api_key}

    def webhooks(self) -> list[dict[str, Any]]:
        """Every signed webhook request received so far (the receiver drops bad ones)."""
        lines = self.journal.read_text().splitlines() if self.journal.exists() else []
        return [json.loads(x) for x in lines if x.strip()]

    def records(self, name: str, ip: str) -> dict[str, set[str]]:
        """The instance's A and PTR records as PowerDNS has them."""
        ptr = ".".join(reversed(ip.split("."))) + ".in-addr.arpa."
        got = pdns.rrsets(self.server, ZONE, name + ".", wrap=self.wrap)
        got |= pdns.rrsets(self.server, REVZONE, ptr, wrap=self.wrap)
        return {k: v for k, v in got.items() if k in ("A", "PTR")}


@contextlib.contextmanager
def running_sinks(lab: Lab) -> Iterator[Sinks]:
    """PowerDNS (with the two zones) and the webhook receiver in the master's namespaces;
    both stopped by pid at the end."""
    master = lab.master
    wrap = master.in_netns([])
    workdir = Path(tempfile.mkdtemp(prefix="hookpack-demo-"))
    journal = workdir / "webhook.jsonl"
    journal.touch()
    try:
        # on the master's cluster address: doctor asks for the zones from every node
        with pdns.running_pdns(workdir / "pdns", address=master.spec.ip, wrap=wrap,
                               api_port=PDNS_API_PORT, dns_port=PDNS_DNS_PORT) as server:
            for zone in (ZONE, REVZONE):
                pdns.api(server, "POST", "/api/v1/servers/localhost/zones",
                         {"name": zone, "kind": "Native", "nameservers": [f"ns1.{ZONE}"]},
                         wrap=wrap)
            with _receiver(master, journal) as url:
                yield Sinks(server, wrap, url, journal, master.spec.ip, workdir)
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


@contextlib.contextmanager
def _receiver(master: Node, journal: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        master.in_netns(["python3", receivers.__file__, master.spec.ip, str(journal),
                        "webhook"]),
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        if not first:
            raise LabError(f"the webhook receiver did not start (exit {proc.wait(10)})")
        yield str(json.loads(first)["webhook"])
    finally:
        proc.kill()  # nsenter without --fork execs: this pid is the receiver's
        proc.wait(10)


# -- shaping ---------------------------------------------------------------------------

def egress_class_mbit(lab: Lab, node: Node, instance: str) -> float:
    """The limit (ceil) of the instance's egress class, as the kernel holds it."""
    r = lab.run_on(node, [HOOKPACK, "status", "--json", "--config", CONFIG, instance],
                   timeout=60)
    try:
        (inst,) = json.loads(r.stdout)["instances"]
        (tap,) = inst["actions"]["shaping"]["taps"]
        (egress,) = [c for c in tap["classes"] if c["direction"] == "egress"]
        return float(egress["ceil"]) * 8 / 1e6
    except (ValueError, KeyError, TypeError) as err:
        raise LabError(f"hookpack status --json on {node.name} shows no egress class of "
                       f"{instance} ({err!r}): {r.stdout[-800:]} {r.stderr[-800:]}") from err


def measure_egress(lab: Lab, instance: str, target_mbit: float) -> list[Measurement]:
    """The guest's upload to an iperf3 server in the master's namespace (up to 3 runs
    until within 5 % of ``target_mbit``); every attempt is returned."""
    server = lab.master.spec
    with tempfile.TemporaryDirectory(prefix="hookpack-demo-iperf-") as logdir, \
            IperfServers(server.netns, server.ip, (IPERF_PORT,), Path(logdir)):
        return measure_shell_until_within(
            lambda command, timeout: lab.guest_run(instance, command, timeout=timeout),
            server.ip, IPERF_PORT, target_mbit, label="guest upload")


def apply_shaping(lab: Lab, node: Node) -> str:
    """``hookpack shaping apply --all`` (the reconcile timer's command) on ``node``."""
    r = lab.run_on(node, [HOOKPACK, "shaping", "apply", "--all", "--config", CONFIG],
                   timeout=120)
    if r.returncode:
        raise LabError(f"hookpack shaping apply --all on {node.name}: exit {r.returncode}: "
                       f"{(r.stdout + r.stderr)[-800:]}")
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""


# -- pinning ---------------------------------------------------------------------------

def cpu_list(text: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5]."""
    out: list[int] = []
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def numa_nodes() -> dict[int, int]:
    """CPU -> its NUMA node, from sysfs (every CPU on node 0 without NUMA)."""
    out: dict[int, int] = {}
    for d in Path("/sys/devices/system/node").glob("node[0-9]*"):
        for cpu in cpu_list((d / "cpulist").read_text()):
            out[cpu] = int(d.name[4:])
    return out


def _allowed(pid: int, tid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    m = re.search(r"^Cpus_allowed_list:\s*(\S+)", text, re.M)
    if not m:
        raise LabError(f"/proc/{pid}/task/{tid}/status has no Cpus_allowed_list")
    return cpu_list(m.group(1))


@dataclass
class Pins:
    vcpus: dict[int, tuple[int, list[int]]]  # vCPU index -> (thread id, allowed CPUs)
    others: list[int]  # CPUs QEMU's other threads may run on

    @property
    def one_to_one(self) -> bool:
        """Each vCPU thread on one CPU of its own, no other QEMU thread on those."""
        mine = [cpus for _, cpus in self.vcpus.values()]
        flat = [c for cpus in mine for c in cpus]
        return (all(len(c) == 1 for c in mine) and len(set(flat)) == len(flat)
                and not set(flat) & set(self.others))

    def describe(self) -> str:
        numa = numa_nodes()
        parts = [f"vCPU{i} (tid {tid}) -> CPU {','.join(map(str, cpus))} -> NUMA node "
                 f"{','.join(sorted({str(numa.get(c, 0)) for c in cpus}))}"
                 for i, (tid, cpus) in sorted(self.vcpus.items())]
        return "; ".join(parts) + f", emulator threads on CPU {_ranges(self.others)}"


def _ranges(cpus: list[int]) -> str:
    return ",".join(map(str, sorted(set(cpus)))) or "-"


def read_pins(lab: Lab, instance: str) -> Pins:
    """The instance's thread affinities as the kernel has them on its primary node."""
    node = lab.primary_of(instance)
    pid = lab.qemu_pid(instance, node)
    if pid is None:
        raise LabError(f"{instance}: no QEMU pid file on {node.name}")
    with QMPClient(lab.node_root(node) / f"{KVM_RUN}/ctrl/{instance}.qmp", 10) as qmp:
        cpus = qmp.execute("query-cpus-fast")
    vcpus = {int(c["cpu-index"]): (int(c["thread-id"]), _allowed(pid, int(c["thread-id"])))
             for c in cpus}
    tids = {t for t, _ in vcpus.values()}
    others: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        if int(task.name) not in tids:
            with contextlib.suppress(FileNotFoundError):  # a worker thread that just ended
                others |= set(_allowed(pid, int(task.name)))
    return Pins(vcpus, sorted(others))
