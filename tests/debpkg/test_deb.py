"""The Debian package: built by scripts/build-deb, installed with apt on a fresh Debian 12.

Everything is real: Debian's build tools and lintian on this machine, then a fresh
bookworm root filesystem (mmdebstrap minbase, vmtestbed.rootfs, copied per module) in
which apt resolves the package's dependencies from the Debian mirror, the package's
maintainer scripts run, and the installed hookpack (system Python, no checkout on its
path) runs Ganeti's hooks through hookpack's emulator. Each chroot command runs in its
own private mount namespace (`unshare -m`) with /proc, /sys and /dev mounted there: the
mounts die with the command, nothing is left behind.

One thing stands in for a real node: the rootfs has no Ganeti cluster, so
/var/lib/ganeti/ssconf_release_version is written as `gnt-cluster init` writes it
(doctor's "ganeti" check reads it; a node outside a cluster fails that check by design).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from vmtestbed.rootfs import build_rootfs

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "fixtures" / "ganeti-env-samples"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
NEWER = f"{VERSION}+b2"
APT_TIMEOUT = 900

pytestmark = pytest.mark.slow

# The operator's own hooks tree before hookpack: it must be exactly this again after purge.
OPERATOR_HOOK = "#!/bin/sh\n# the site's own hook: hookpack must not touch it\nexit 0\n"
# The node's configuration for the hook runs (an edited conffile, as an operator would).
NODE_CONFIG = """\
[node]
fqdn = "pkgtest.example.test"

[hook]
post_failure_exit_code = 1

[log]
syslog = false
file = "/var/log/hookpack/hookpack.log"

[record]
enabled = true
path = "/var/log/hookpack/record.jsonl"
"""


def build_deb(out: Path, *args: str) -> str:
    proc = subprocess.run([str(REPO / "scripts" / "build-deb"), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    out = tmp_path_factory.mktemp("debs")
    lintian = build_deb(out)
    build_deb(out, "--version", NEWER, "--no-lintian")
    old, new = out / f"hookpack_{VERSION}_all.deb", out / f"hookpack_{NEWER}_all.deb"
    assert old.is_file() and new.is_file(), sorted(p.name for p in out.iterdir())
    return {"old": old, "new": new, "lintian": lintian}


class Chroot:
    def __init__(self, root: Path) -> None:
        self.root = root

    def argv(self, command: str) -> list[str]:
        r = str(self.root)
        mounts = (f"mount -t proc proc {r}/proc && mount -t sysfs sysfs {r}/sys && "
                  f"mount --bind /dev {r}/dev")
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                f'{mounts} && exec chroot {r} /bin/sh -c "$0"', command]

    def run(self, command: str, check: bool = True,
            timeout: float = APT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
               "LC_ALL": "C.UTF-8", "HOME": "/root"}
        proc = subprocess.run(self.argv(command), capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)
        if check:
            assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n" \
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")


@pytest.fixture(scope="module")
def chroot(tmp_path_factory):
    cached = build_rootfs(suite="bookworm", packages=(), variant="minbase")
    root = tmp_path_factory.mktemp("rootfs") / "root"
    subprocess.run(["cp", "-a", str(cached), str(root)], check=True)
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    try:
        yield Chroot(root)
    finally:
        mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text()
                   .splitlines() if line.split()[4].startswith(str(root))]
        assert not mounted, f"mounts left behind: {mounted}"
        shutil.rmtree(root)


def tree(root: Path) -> dict[str, str]:
    """Path -> mode and content hash of everything under ``root`` (absent: {})."""
    if not root.exists():
        return {}
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        mode = oct(path.lstat().st_mode)
        out[rel] = mode if path.is_dir() else \
            f"{mode} {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    return out


def installed_version(ch: Chroot) -> str:
    return ch.run("dpkg-query -W -f='${Version}' hookpack").stdout


def hook_runs(ch: Chroot, name: str) -> list[dict]:
    path = ch.path(f"/root/{name}")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_build_is_lintian_clean_with_documented_warnings(debs):
    tags = re.findall(r"^\s*([EW]): hookpack: (\S+)", debs["lintian"], re.MULTILINE)
    assert not [t for level, t in tags if level == "E"], debs["lintian"]
    documented = (REPO / "docs" / "packaging.md").read_text()
    undocumented = [t for level, t in tags if level == "W" and f"`{t}`" not in documented]
    assert not undocumented, f"lintian warnings not explained in docs/packaging.md: " \
        f"{undocumented}"


def test_units_come_from_the_role_templates(debs, tmp_path):
    subprocess.run(["dpkg-deb", "-x", str(debs["old"]), str(tmp_path)], check=True)
    units = tmp_path / "lib" / "systemd" / "system"
    templates = REPO / "ansible" / "roles" / "hookpack" / "templates" / "systemd"
    assert sorted(p.name for p in units.iterdir()) == \
        sorted(p.stem for p in templates.glob("*.j2"))
    for unit in units.iterdir():
        text = unit.read_text()
        assert "{{" not in text and "{%" not in text, unit
        for line in text.splitlines():
            if line.startswith(("ExecStart=", "ExecStop=", "ExecReload=")):
                assert line.split("=", 1)[1].startswith("/usr/bin/hookpack "), line
    shaping = (units / "hookpack-shaping.service").read_text()
    assert "ExecStop=/usr/bin/hookpack shaping clear --all --yes " in shaping
    assert "ExecReload=/usr/bin/hookpack shaping apply --all " in shaping
    assert "After=network-online.target ganeti.target nftables.service " \
        "netfilter-persistent.service" in shaping
    assert (tmp_path / "etc/hookpack/hookpack.toml").is_file()
    assert (tmp_path / "etc/logrotate.d/hookpack").is_file()
    assert (tmp_path / "usr/share/doc/hookpack/docs/operator-guide.md.gz").is_file()
    compiled = list((tmp_path / "usr/lib/python3/dist-packages/hookpack").rglob("*.pyc"))
    assert not compiled, "byte-code belongs to py3compile on the node, not in the .deb"


def test_apt_install_doctor_hooks_upgrade_remove_purge(debs, chroot):
    ch = chroot
    # The node before hookpack: a cluster member with the site's own hook.
    ch.path("/var/lib/ganeti").mkdir(parents=True)
    ch.path("/var/lib/ganeti/ssconf_release_version").write_text("3.0.2\n")
    site = ch.path("/etc/ganeti/hooks/instance-start-post.d")
    site.mkdir(parents=True)
    (site / "10-site").write_text(OPERATOR_HOOK)
    (site / "10-site").chmod(0o755)
    ch.path("/etc/ganeti/hooks/instance-add-pre.d").mkdir()
    before = tree(ch.path("/etc/ganeti"))
    shutil.copytree(SAMPLES, ch.path("/root/samples"))
    shutil.copy(Path(__file__).with_name("hookloop.py"), ch.path("/root/hookloop.py"))
    for deb in (debs["old"], debs["new"]):
        shutil.copy(deb, ch.path(f"/root/{deb.name}"))

    # Install: apt resolves python3 and python3-pynetbox from the mirror.
    ch.run("apt-get update -q")
    assert ch.run("command -v python3", check=False).returncode != 0, "rootfs not fresh"
    ch.run(f"cd /root && apt-get install -y -q ./hookpack_{VERSION}_all.deb")
    assert installed_version(ch) == VERSION
    assert ch.run("hookpack --version").stdout.strip() == f"hookpack {VERSION}"
    assert ch.run("python3 -c 'import pynetbox'", check=False).returncode == 0
    assert (site / "10-site").read_text() == OPERATOR_HOOK
    assert ch.path("/etc/ganeti/hooks/instance-start-post.d/50-hookpack").is_file()
    enabled = [str(p) for p in ch.path("/etc/systemd/system").rglob("hookpack*")]
    assert not enabled, f"units enabled before the node is configured: {enabled}"
    assert ch.path("/lib/systemd/system/hookpack-shaping.service").is_file()

    # The stand-in cluster lists this node (doctor checks hookpack's name for it is one).
    name = ch.run("python3 -c 'import socket; print(socket.getfqdn())'").stdout.strip()
    ch.path("/var/lib/ganeti/ssconf_node_list").write_text(f"{name}\n")
    doctor = ch.run("hookpack doctor --json", check=False)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    checks = {c["name"]: c["status"] for c in json.loads(doctor.stdout)}
    assert checks["hooks"] == "pass" and checks["ganeti"] == "pass", checks

    # The hook emulator runs Ganeti's hooks with the installed package.
    ch.path("/etc/hookpack/hookpack.toml").write_text(NODE_CONFIG)
    ch.run("python3 -I /root/hookloop.py /root/samples /root/once.jsonl --once")
    once = hook_runs(ch, "once.jsonl")
    assert once and all(r["status"] == "success" for r in once), \
        [r for r in once if r["status"] != "success"][:3]
    records = ch.path("/var/log/hookpack/record.jsonl").read_text().splitlines()
    assert len(records) == sum(r["entry"].endswith("/50-hookpack") for r in once)

    # Upgrade to a newer build while hooks run in a loop: no run may fail.
    loop = subprocess.Popen(ch.argv("python3 -I /root/hookloop.py /root/samples "
                                    "/root/loop.jsonl --until /root/stop"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not hook_runs(ch, "loop.jsonl") and time.monotonic() < deadline:
            time.sleep(0.2)
        started = time.time()
        ch.run(f"cd /root && apt-get install -y -q ./hookpack_{NEWER}_all.deb")
        finished = time.time()
        ch.path("/root/stop").touch()
        loop.wait(timeout=120)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    runs = hook_runs(ch, "loop.jsonl")
    during = [r for r in runs if r["end"] >= started and r["start"] <= finished]
    failed = [r for r in runs if r["status"] != "success"]
    print(f"upgrade: {finished - started:.1f} s, {len(runs)} entry runs in the loop, "
          f"{len(during)} overlapping the upgrade, {len(failed)} failed")
    assert loop.returncode == 0, loop.stdout.read() if loop.stdout else ""
    assert during, "no hook ran while apt upgraded the package"
    assert not failed, failed[:3]
    # Every run of a sample ran every entry the first run did (none missing mid-upgrade).
    want = {}
    for r in once:
        want.setdefault(r["sample"], set()).add(r["entry"])
    got: dict[tuple[str, float], set[str]] = {}
    for r in runs:
        got.setdefault((r["sample"], r["start"]), set()).add(r["entry"])
    short = [(key, want[key[0]] - entries) for key, entries in got.items()
             if entries != want[key[0]]]
    assert not short, f"entries missing from hook runs: {short[:3]}"
    assert installed_version(ch) == NEWER
    assert ch.run("hookpack --version").stdout.strip() == f"hookpack {NEWER}"
    assert ch.path("/etc/hookpack/hookpack.toml").read_text() == NODE_CONFIG  # conffile kept

    # Remove: the entries go, the site's tree is as it was; config and state stay.
    ch.run("apt-get remove -y -q hookpack")
    assert tree(ch.path("/etc/ganeti")) == before
    assert ch.path("/etc/hookpack/hookpack.toml").exists()
    assert ch.path("/var/lib/hookpack").exists()
    # Purge: state, logs and config go too.
    ch.run("apt-get purge -y -q hookpack")
    assert tree(ch.path("/etc/ganeti")) == before
    for gone in ("/etc/hookpack", "/var/lib/hookpack", "/var/log/hookpack",
                 "/var/spool/hookpack"):
        assert not ch.path(gone).exists(), gone

    # A node without a hooks directory: purge takes away what the package created.
    shutil.rmtree(ch.path("/etc/ganeti"))
    ch.run(f"cd /root && apt-get install -y -q ./hookpack_{VERSION}_all.deb")
    assert ch.path("/etc/ganeti/hooks/instance-start-post.d/50-hookpack").is_file()
    ch.run("apt-get purge -y -q hookpack")
    assert not ch.path("/etc/ganeti").exists()

