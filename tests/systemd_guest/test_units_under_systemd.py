"""hookpack's systemd units on a real Debian 12 system with systemd as PID 1.

One TCG guest per module (vmtestbed.systemd_guest: a bookworm rootfs from mmdebstrap,
the Debian cloud kernel, virtio disk and net, sshd) in a network namespace of its own.
hookpack is installed into it by the project's playbook (ansible/site.yml) over SSH,
driven by Debian 12's own ansible-core (/usr/bin/ansible-playbook, 2.14), with the role's
default install method: the .deb, built on the controller by scripts/build-deb and
installed on the guest's system Python. Nothing here is mocked; what the guest lacks of
a Ganeti node is made by hand and says so:

- A package mirror: the guest reaches none, so what apt would fetch for the .deb
  (python3-pynetbox) and what Ansible's apt module needs (python3-apt) are in its image.

- Ganeti's files: ssconf_master_node, ssconf_master_candidates and ssconf_node_list
  naming this guest, an empty job queue, and for one instance ``inst1.example.test`` the
  runtime file ``<kvm_dir>/nic/inst1.example.test/0`` naming its tap; all under configured paths
  (``/srv/gnt/...``), not Ganeti's defaults, to show the units use the config's paths.
- The instance's network: a bridge, a veth uplink and a tap, re-made at every boot by
  a unit of this test (``hp-fake-instance.service``) as QEMU makes a tap when Ganeti
  starts an instance.

nftables.service is enabled in the guest: it flushes the whole ruleset at boot.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmtestbed import host
from vmtestbed.systemd_guest import FQDN, SystemdGuest, build_systemd_image

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
DEBIAN_ANSIBLE = Path("/usr/bin/ansible-playbook")  # Debian 12's ansible-core 2.14
INSTANCE = "inst1.example.test"
TAP = "hptap1"
UPLINK = "upl0"
GNT = "/srv/gnt"
KVM_DIR = f"{GNT}/run/kvm-hypervisor"
DATA_DIR = f"{GNT}/lib"
CONFIG = "/etc/hookpack/hookpack.toml"
# Each run of the reconcile timer is a Python process in a TCG guest: every 30 s, not 10,
# so the guest leaves the CPU to the tests beside it (scripts/test).
RECONCILE_S = 30
OUTBOX_S = 5
HANDLE = "4850:"
UNITS = ("hookpack-shaping.service", "hookpack-shaping-reconcile.timer",
         "hookpack-outbox-flush.timer", "hookpack-jobwatch.service",
         "hookpack-hook-server.service")

FAKE_INSTANCE = f"""#!/bin/sh
# test stand-in for a Ganeti instance start: bridge, uplink, the instance's tap
set -e
ip link add br0 type bridge 2>/dev/null || true
ip link set br0 up
ip link add {UPLINK} type veth peer name {UPLINK}p 2>/dev/null || true
ip link set {UPLINK} master br0 up
ip link set {UPLINK}p up
ip tuntap add {TAP} mode tap 2>/dev/null || true
ip link set {TAP} master br0 up
mkdir -p {KVM_DIR}/nic/{INSTANCE}
echo {TAP} > {KVM_DIR}/nic/{INSTANCE}/0
"""
FAKE_INSTANCE_UNIT = """[Unit]
Description=test: the tap of a running instance, as QEMU makes it
Before=hookpack-shaping.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh /usr/local/sbin/hp-fake-instance

[Install]
WantedBy=multi-user.target
"""


class Lab:
    def __init__(self, guest: SystemdGuest, work: Path, timings: dict[str, float]) -> None:
        self.guest = guest
        self.work = work
        self.timings = timings

    def sh(self, command: str, timeout: float = 120.0) -> str:
        return self.guest.out(command, timeout=timeout)

    def play(self, label: str, *extra: str) -> str:
        env = {"HOME": "/root", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8",
               "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_LOCAL_TEMP": str(self.work / "atmp"), "ANSIBLE_PIPELINING": "True",
               "ANSIBLE_TIMEOUT": "60",  # sshd under TCG on a loaded host is slow to greet
               "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.work / "cp"),
               # the ssh masters (ControlPersist) are ours: marked for the leak check
               host.OWNER_ENV: host.owner_tag()}
        argv = host.netns_argv(self.guest.netns, [
            "env", "-i", *(f"{k}={v}" for k, v in env.items()), str(DEBIAN_ANSIBLE),
            *(() if "-i" in extra else ("-i", str(self.work / "inventory.json"))),
            str(ANSIBLE / "site.yml"), *extra])
        t0 = time.monotonic()
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=2400,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode(errors="replace") if isinstance(
                exc.stdout, bytes) else (exc.stdout or "")
            alive = self.guest.ssh("uptime", check=False, timeout=30)
            raise AssertionError(
                f"ansible-playbook {label}: no result in 2400 s\n{out[-3000:]}\n"
                f"guest uptime: {alive.returncode} {alive.stdout}{alive.stderr}\n"
                f"console:\n{self.guest.console_log[-4000:]}") from None
        self.timings[f"ansible {label}"] = round(time.monotonic() - t0, 1)
        assert r.returncode == 0, f"{r.stdout[-6000:]}\n{r.stderr[-2000:]}"
        return r.stdout

    def close_ssh_masters(self) -> None:
        """End Ansible's persistent ssh connections (they would outlive the guest)."""
        for sock in (self.work / "cp").glob("*"):
            subprocess.run(host.netns_argv(self.guest.netns, [
                "ssh", "-O", "exit", "-o", f"ControlPath={sock}", "guest"]),
                capture_output=True, timeout=30, check=False)

    def prop(self, unit: str, name: str) -> str:
        return self.sh(f"systemctl show -P {name} {unit}").strip()

    def wait(self, what: str, check, timeout: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(1)
        raise AssertionError(f"not within {timeout:.0f} s: {what}")

    def tap_qdisc(self) -> list[dict]:  # type: ignore[type-arg]
        out = json.loads(self.sh(f"tc -j qdisc show dev {TAP} root") or "[]")
        return [q for q in out if q.get("handle") == HANDLE and q.get("kind") == "htb"]

    def tap_marked(self) -> bool:
        """The tap's frames get its NIC's mark: its netdev chain jumps to its record."""
        from tests.shaping.conftest import parse_nft

        mark = parse_nft(self.sh("nft list table netdev hookpack || true")).get(TAP, {})
        return (mark.get("device") == TAP and mark.get("jump") == f"mark/{TAP}"
                and mark.get("rules") == 1 and bool(mark.get("mark")))

    def tap_classes(self) -> list[dict[str, str]]:
        """hookpack's HTB classes on the tap (iproute2 6.1 prints no JSON for classes)."""
        out = self.sh(f"tc class show dev {TAP}")
        return [{"handle": m.group(1), "rate": m.group(2)} for m in re.finditer(
            rf"class htb ({HANDLE}\w+) .*?rate (\S+)", out)]


def write_inventory(lab: Lab) -> None:
    g = lab.guest
    pub = (g.image.rootfs / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2]
    (lab.work / "known_hosts").write_text(f"{FQDN},{g.ip} {' '.join(pub)}\n")
    for d in ("atmp", "cp"):
        (lab.work / d).mkdir()
    config = {
        "node": {"fqdn": FQDN},
        "paths": {"kvm_dir": KVM_DIR, "ganeti_data_dir": DATA_DIR,
                  "state_dir": "/srv/hp/state", "spool_dir": "/srv/hp/spool",
                  "run_dir": "/run/hp"},
        "shaping": {"enabled": True, "uplink": UPLINK, "egress_rate": "20mbit",
                    "ingress_rate": "30mbit"},
    }
    inventory = {"ganeti_nodes": {"hosts": {FQDN: {"ansible_host": g.ip}}, "vars": {
        "ansible_user": "root",
        "ansible_ssh_common_args": (f"-o UserKnownHostsFile={lab.work / 'known_hosts'} "
                                    f"-o IdentitiesOnly=yes -o IdentityFile={g.key} "
                                    "-o ServerAliveInterval=15 -o ServerAliveCountMax=8"),
        "hookpack_deb_build_dir": str(lab.work / "deb"),
        "hookpack_ganeti_data_dir": DATA_DIR,
        "hookpack_shaping_reconcile_interval": RECONCILE_S,
        "hookpack_outbox_flush_interval": OUTBOX_S,
        "hookpack_config": config,
    }}}
    (lab.work / "inventory.json").write_text(json.dumps(inventory, indent=2))


def make_ganeti_stand_ins(lab: Lab) -> None:
    g = lab.guest
    script = FAKE_INSTANCE.replace("'", "'\\''")
    unit = FAKE_INSTANCE_UNIT.replace("'", "'\\''")
    lab.sh(f"mkdir -p {DATA_DIR}/queue {KVM_DIR} /etc/ganeti/hooks && "
           f"echo {FQDN} > {DATA_DIR}/ssconf_master_node && "
           f"echo {FQDN} > {DATA_DIR}/ssconf_master_candidates && "
           f"echo {FQDN} > {DATA_DIR}/ssconf_node_list && "
           f"echo 3.0.2 > {DATA_DIR}/ssconf_release_version && "
           # what a Ganeti node with shaping is set up with (doctor checks it)
           "echo br_netfilter > /etc/modules-load.d/bridge.conf && modprobe br_netfilter && "
           "printf 'net.bridge.bridge-nf-call-iptables = 1\\nnet.bridge.bridge-nf-call-ip6tables"
           " = 1\\n' > /etc/sysctl.d/bridge.conf && sysctl -q -p /etc/sysctl.d/bridge.conf && "
           f"printf '%s' '{script}' > /usr/local/sbin/hp-fake-instance && "
           f"printf '%s' '{unit}' > /etc/systemd/system/hp-fake-instance.service && "
           "systemctl daemon-reload && systemctl enable --now hp-fake-instance.service")
    assert TAP in g.out(f"ip -br link show {TAP}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:  # type: ignore[no-untyped-def]
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    image = build_systemd_image()
    timings["image (rootfs + ext4, cached after the first)"] = round(time.monotonic() - t0, 1)
    work = tmp_path_factory.mktemp("sysd")
    with SystemdGuest(image) as guest:
        timings["boot"] = round(guest.boot_seconds or 0, 1)
        lab = Lab(guest, work, timings)
        try:
            make_ganeti_stand_ins(lab)
            write_inventory(lab)
            yield lab
        finally:
            lab.close_ssh_masters()
            print(f"\nsystemd guest timings (s): {json.dumps(timings)}")


def test_role_rolls_out_with_debian_ansible_core(lab):
    version = subprocess.run([str(DEBIAN_ANSIBLE), "--version"], capture_output=True,
                             text=True, check=True).stdout.splitlines()[0]
    assert re.search(r"core 2\.14\.", version), version
    out = lab.play("present")
    # hookpack doctor ran at the end and saw the units it expects here
    for unit in ("hookpack-shaping.service", "hookpack-shaping-reconcile.timer",
                 "hookpack-jobwatch.service", "hookpack-hook-server.service"):
        assert f"PASS unit {unit}: enabled, active" in out, re.findall(r"\w+ unit [^\"]*", out)
    for unit in UNITS:
        assert lab.sh(f"systemctl is-enabled {unit}").strip() == "enabled", unit
    # the default install method: the Debian package on the system Python
    assert lab.sh("dpkg-query -W -f '${Status}' hookpack").strip() == "install ok installed"
    assert lab.sh("readlink -f /usr/local/sbin/hookpack").strip() == "/usr/bin/hookpack"
    assert "/usr/lib/python3/dist-packages/hookpack/" in lab.sh(
        "python3 -I -c 'import hookpack; print(hookpack.__file__)'")
    assert lab.sh(f"grep reconcile_interval {CONFIG}").strip() == \
        f"reconcile_interval = {RECONCILE_S}"


def test_hook_runs_go_through_the_hook_server(lab):
    """A global post script writes its cgroup: a run the server took is in the server's
    unit's cgroup (its workers are its children), a run of the entry's own Python is not."""
    env = ("env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin GANETI_HOOKS_VERSION=2 "
           "GANETI_HOOKS_PHASE=post GANETI_HOOKS_PATH=instance-start "
           f"GANETI_OP_CODE=OP_INSTANCE_STARTUP GANETI_INSTANCE_NAME={INSTANCE} "
           f"GANETI_INSTANCE_PRIMARY={FQDN} GANETI_MASTER={FQDN} GANETI_DATA_DIR={DATA_DIR} ")
    entry = "/etc/ganeti/hooks/instance-start-post.d/99-hookpack-global"
    out = lab.sh("mkdir -p /etc/ganeti/hooks/global-post.d && printf '#!/bin/sh\\ncat "
                 "/proc/self/cgroup > /tmp/hook-cgroup\\n' > /etc/ganeti/hooks/global-post.d/"
                 f"10-cgroup && chmod 755 /etc/ganeti/hooks/global-post.d/10-cgroup && "
                 f"{env} {entry} && cat /tmp/hook-cgroup && systemctl stop "
                 f"hookpack-hook-server.service && {env} {entry} && cat /tmp/hook-cgroup; "
                 "systemctl start hookpack-hook-server.service; "
                 "rm -rf /etc/ganeti/hooks/global-post.d /tmp/hook-cgroup")
    served, own = out.strip().split("\n")
    assert "hookpack-hook-server.service" in served, out
    assert "hookpack-hook-server.service" not in own, out
    assert lab.sh("systemctl is-active hookpack-hook-server.service").strip() == "active"


def test_units_follow_the_firewall_and_the_configured_paths(lab):
    after = lab.prop("hookpack-shaping.service", "After").split()
    assert "nftables.service" in after and "netfilter-persistent.service" in after
    flush = lab.sh("systemctl cat hookpack-outbox-flush.service")
    assert "ConditionDirectoryNotEmpty=/srv/hp/spool/outbox" in flush
    assert "/var/spool/hookpack" not in flush
    assert f"--config {CONFIG}" in lab.sh("systemctl cat hookpack-jobwatch.service")


def test_jobwatch_runs_on_the_master_candidate_and_restarts_after_a_crash(lab):
    assert lab.sh("systemctl is-active hookpack-jobwatch.service").strip() == "active"
    pid = lab.prop("hookpack-jobwatch.service", "MainPID")
    assert pid != "0"
    lab.sh(f"kill -KILL {pid}")
    lab.wait("jobwatch restarted with a new pid",
             lambda: lab.prop("hookpack-jobwatch.service", "MainPID") not in ("0", pid)
             and lab.sh("systemctl is-active hookpack-jobwatch.service || true").strip()
             == "active", timeout=60)
    assert int(lab.prop("hookpack-jobwatch.service", "NRestarts")) >= 1


def test_doctor_fails_on_a_disabled_unit(lab):
    lab.sh("systemctl disable --now hookpack-shaping-reconcile.timer")
    try:
        r = lab.guest.ssh(f"hookpack doctor --config {CONFIG}", check=False, timeout=180)
        assert r.returncode == 1, r.stdout
        assert ("FAIL unit hookpack-shaping-reconcile.timer: disabled "
                f"(shaping.reconcile_interval = {RECONCILE_S})") in r.stdout, r.stdout
    finally:
        lab.sh("systemctl enable --now hookpack-shaping-reconcile.timer")


def test_outbox_flush_timer_fires(lab):
    first = lab.prop("hookpack-outbox-flush.timer", "LastTriggerUSecMonotonic")
    lab.wait("the outbox timer triggered again",
             lambda: lab.prop("hookpack-outbox-flush.timer", "LastTriggerUSecMonotonic")
             not in ("0", first), timeout=OUTBOX_S * 6)
    # the service was started by it (its condition was checked: the outbox is empty)
    assert int(lab.prop("hookpack-outbox-flush.service", "ConditionTimestampMonotonic")) > 0


def test_shaping_is_in_place_after_the_rollout(lab):
    assert lab.tap_qdisc(), lab.sh(f"tc qdisc show dev {TAP}")
    assert lab.tap_classes()
    assert lab.tap_marked(), lab.sh("nft list ruleset")


def test_periodic_shaping_timer_puts_back_what_was_removed(lab):
    # Removed between two runs of the timer's service, in one shell (the timer fires
    # every RECONCILE_S): a run still going when the qdisc goes could put it back
    # without a new run, so the removal waits until no run is going; the start time of
    # the last run is read before and after that check, and must be the same.
    svc = "hookpack-shaping-reconcile.service"
    shown = lab.sh(
        "while :; do "
        f"a=$(systemctl show -P ExecMainStartTimestampMonotonic {svc}); "
        f"state=$(systemctl show -P ActiveState {svc}); "
        f"b=$(systemctl show -P ExecMainStartTimestampMonotonic {svc}); "
        '[ "$state" = inactive ] && [ "$a" = "$b" ] && break; sleep 0.2; done; '
        f'echo "started=$a"; tc qdisc del dev {TAP} root && tc qdisc show dev {TAP} root')
    started = re.search(r"^started=(\d+)$", shown, re.MULTILINE).group(1)
    assert f"htb {HANDLE}" not in shown, shown
    lab.wait("the reconcile timer re-created the tap's qdisc", lambda: bool(lab.tap_qdisc()),
             timeout=RECONCILE_S * 6)
    assert lab.prop("hookpack-shaping-reconcile.service",
                    "ExecMainStartTimestampMonotonic") != started


def test_reload_reapplies_without_a_moment_unshaped(lab):
    (klass,) = [c for c in lab.tap_classes() if c["rate"] == "30Mbit"]  # ingress_rate
    classid, want_rate = klass["handle"], klass["rate"]
    # Sample the tap's classes as fast as the guest can while a reload runs; a changed
    # rate gives the reload something to put back.
    out = lab.sh(
        "rm -f /tmp/samples; "
        f"( while [ ! -e /tmp/stop ]; do tc class show dev {TAP} | grep -c 'htb {classid}' "
        ">> /tmp/samples; done ) & sampler=$!; sleep 1; "
        f"tc class change dev {TAP} classid {classid} htb rate 1mbit; "
        "systemctl reload hookpack-shaping.service; sleep 1; touch /tmp/stop; wait $sampler; "
        "rm -f /tmp/stop; cat /tmp/samples", timeout=180)
    samples = out.split()
    assert len(samples) >= 10, samples
    assert set(samples) == {"1"}, f"class {classid} missing in {samples.count('0')} samples"
    assert {"handle": classid, "rate": want_rate} in lab.tap_classes()
    assert lab.sh("systemctl is-active hookpack-shaping.service").strip() == "active"


def test_a_config_change_restarts_the_watcher_and_reapplies_shaping(lab):
    pid = lab.prop("hookpack-jobwatch.service", "MainPID")
    inventory = json.loads((lab.work / "inventory.json").read_text())
    inventory["ganeti_nodes"]["vars"]["hookpack_config"]["shaping"]["ingress_rate"] = "25mbit"
    changed = lab.work / "inventory-changed.json"
    changed.write_text(json.dumps(inventory))
    # the role's config-only push (`--tags hookpack_config`, fewer tasks than a whole
    # run; tests/ansible/test_role_local.py checks which run): the same handlers, and on
    # systemd they read the node's unit list, which the preflight works out
    out = lab.play("config change", "-i", str(changed), "--tags", "hookpack_config")
    assert "RUNNING HANDLER [hookpack : Re-apply shaping]" in out
    assert "RUNNING HANDLER [hookpack : Restart the job watcher]" in out
    assert lab.prop("hookpack-jobwatch.service", "MainPID") not in ("0", pid)
    classes = lab.tap_classes()
    assert any(c["rate"] == "25Mbit" for c in classes), classes


def test_boot_unit_restores_shaping_after_a_reboot(lab):
    t = lab.guest.reboot()
    lab.timings["reboot"] = round(t, 1)
    assert lab.tap_qdisc(), lab.sh(f"tc qdisc show dev {TAP}; journalctl -b -u 'hookpack*'")
    assert lab.tap_classes()
    assert lab.tap_marked(), lab.sh("nft list ruleset")
    # the firewall flushed the ruleset first, then hookpack shaped
    nft = int(lab.prop("nftables.service", "ActiveEnterTimestampMonotonic"))
    shaping = int(lab.prop("hookpack-shaping.service", "ExecMainStartTimestampMonotonic"))
    assert 0 < nft < shaping
    assert "changed" in lab.sh("journalctl -b -u hookpack-shaping.service -o cat")
    for unit in ("hookpack-jobwatch.service", "hookpack-hook-server.service"):
        assert lab.sh(f"systemctl is-active {unit}").strip() == "active", unit


def test_absent_stops_and_removes_everything(lab):
    lab.play("absent", "-e", "hookpack_state=absent")
    # A name systemd still knows only because the test's hp-fake-instance.service names
    # it (Before=) shows as "not-found inactive dead": no file, nothing running.
    listed = lab.sh("systemctl list-units --all --no-legend --plain 'hookpack*' | "
                    "grep -Ev ' not-found +inactive +dead ' || true; "
                    "systemctl list-unit-files --no-legend 'hookpack*'; "
                    "ls /etc/systemd/system | grep -c hookpack || true")
    assert listed.strip() == "0", listed
    assert not lab.tap_qdisc() and not lab.tap_classes()
    assert lab.sh(f"tc qdisc show dev {UPLINK} root | grep -c '{HANDLE}' || true").strip() == "0"
    mangle = lab.sh("iptables-save -t mangle; ip6tables-save -t mangle")
    assert "MARK" not in mangle and "hookpack" not in mangle, mangle
    assert "hookpack" not in lab.sh("nft list tables"), lab.sh("nft list ruleset")
    assert lab.sh("ls /opt/hookpack /etc/hookpack /var/cache/hookpack 2>&1 || true"
                  ).count("No such file") == 3
    assert lab.sh("dpkg-query -W -f '${Status}' hookpack 2>/dev/null || echo purged"
                  ).strip() == "purged"
    assert "hookpack" not in lab.sh("ls -R /etc/ganeti/hooks")
