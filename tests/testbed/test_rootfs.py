"""vmtestbed.rootfs: cache key, atomic commit under concurrent builders, real builds.

The fast tests put a FAKE ``mmdebstrap`` first on PATH (a shell script that writes a
small tree slowly, file by file): they test the cache and commit logic, not Debian's
tool. The slow test runs the real mmdebstrap against the Debian mirror.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from pathlib import Path

import pytest
from vmtestbed import rootfs

FAKE_MMDEBSTRAP = r"""#!/bin/sh
# FAKE mmdebstrap for tests: records its call, writes a tree slowly, honours FAKE_FAIL.
for last; do :; done            # mirror is the last argument, target the one before
target=$(eval echo \${$(($# - 1))})
echo "$*" >> "$FAKE_LOG"
[ -n "$FAKE_FAIL" ] && { echo "E: fake failure: $FAKE_FAIL" >&2; exit 1; }
mkdir -p "$target/etc" "$target/usr/bin"
for i in 1 2 3 4 5; do echo "part $i" > "$target/usr/bin/part$i"; sleep 0.2; done
echo 'ID=debian' > "$target/etc/os-release"
echo "$$" > "$target/builder-pid"
"""


@pytest.fixture
def fake_tool(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "mmdebstrap"
    tool.write_text(FAKE_MMDEBSTRAP)
    tool.chmod(0o755)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    return log


def test_key_ignores_package_order_and_duplicates():
    assert (rootfs.rootfs_key("bookworm", ["b", "a", "a"])
            == rootfs.rootfs_key("bookworm", ["a", "b"]))


@pytest.mark.parametrize("change", [
    {"suite": "trixie"}, {"packages": ["python3"]}, {"variant": "apt"},
    {"files": {"/etc/x": "1"}}, {"hooks": ["true"]},
])
def test_key_changes_with_every_input(change):
    base = {"suite": "bookworm", "packages": [], "variant": "minbase"}
    assert rootfs.rootfs_key(**{**base, **change}) != rootfs.rootfs_key(**base)


def test_key_changes_with_builder_version(monkeypatch):
    before = rootfs.rootfs_key("bookworm")
    monkeypatch.setattr(rootfs, "BUILDER_VERSION", "test-next")
    assert rootfs.rootfs_key("bookworm") != before


def test_second_build_is_served_from_the_cache(tmp_path, fake_tool):
    first = rootfs.build_rootfs("bookworm", ["python3"], cache_dir=tmp_path / "c")
    again = rootfs.build_rootfs("bookworm", ["python3"], cache_dir=tmp_path / "c")
    assert again == first
    assert len(fake_tool.read_text().splitlines()) == 1
    assert "--include=python3" in fake_tool.read_text()
    assert first.parent == tmp_path / "c" / "rootfs"
    assert first.name == rootfs.rootfs_key("bookworm", ["python3"])


def _build_in_child(cache: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(str(rootfs.build_rootfs("bookworm", cache_dir=Path(cache))))


def test_concurrent_builders_build_once_and_share_one_complete_tree(tmp_path, fake_tool):
    cache = tmp_path / "c"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(cache), queue)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results = {queue.get(timeout=5) for _ in procs}
    assert len(results) == 1
    out = Path(results.pop())
    # one builder built (the fake takes 1 s); the others waited for its lock, found the
    # tree and used it
    assert len(fake_tool.read_text().splitlines()) == 1
    assert sorted(p.name for p in (out / "usr/bin").iterdir()) == [f"part{i}" for i in range(1, 6)]
    assert (out / "etc/os-release").exists()
    # no build directory left: the committed tree and its lock file
    assert sorted(p.name for p in out.parent.iterdir()) == [f".lock-{out.name}", out.name]


def test_failed_build_leaves_nothing_and_says_why(tmp_path, fake_tool, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "no package named nosuchpkg")
    with pytest.raises(rootfs.RootfsBuildError, match="nosuchpkg") as err:
        rootfs.build_rootfs("bookworm", ["nosuchpkg"], cache_dir=tmp_path / "c")
    assert "mmdebstrap bookworm" in str(err.value)
    left = [p.name for p in (tmp_path / "c" / "rootfs").iterdir()]
    assert left == [f".lock-{rootfs.rootfs_key('bookworm', ['nosuchpkg'])}"]


def test_unknown_suite_is_refused(tmp_path):
    with pytest.raises(rootfs.RootfsBuildError, match="supported are bookworm, trixie"):
        rootfs.build_rootfs("sid", cache_dir=tmp_path)


def test_files_are_uploaded_by_hooks(tmp_path, fake_tool):
    rootfs.build_rootfs("bookworm", files={"/etc/hp/x.conf": "x=1\n"}, cache_dir=tmp_path)
    call = fake_tool.read_text()
    assert "upload " in call and " /etc/hp/x.conf" in call


def test_ext4_image_holds_the_tree_without_mounting(tmp_path, fake_tool):
    tree = rootfs.build_rootfs("bookworm", cache_dir=tmp_path)
    image = rootfs.build_ext4_image(tree, free_mib=16, cache_dir=tmp_path)
    assert rootfs.build_ext4_image(tree, free_mib=16, cache_dir=tmp_path) == image
    subprocess.run(["e2fsck", "-fn", str(image)], check=True, capture_output=True)
    listing = subprocess.run(["debugfs", "-R", "cat /usr/bin/part3", str(image)],
                             check=True, capture_output=True, text=True).stdout
    assert listing == "part 3\n"
    stat = subprocess.run(["debugfs", "-R", "stat /usr/bin/part3", str(image)],
                          check=True, capture_output=True, text=True).stdout
    assert "User:     0   Group:     0" in stat


@pytest.mark.slow
def test_real_bookworm_rootfs_and_image():
    """The real thing (mmdebstrap from the Debian mirror), the same spec the systemd guest
    boots, so CI builds it once: a Debian 12 tree with the packages asked for, its kernel
    and initrd, and an ext4 image e2fsck finds clean and debugfs reads without a mount."""
    from vmtestbed.systemd_guest import build_systemd_image

    image = build_systemd_image()
    tree = image.rootfs
    assert 'VERSION_ID="12"' in (tree / "etc/os-release").read_text()
    status = (tree / "var/lib/dpkg/status").read_text()
    for pkg in ("systemd-sysv", "openssh-server", "python3", "nftables"):
        assert f"Package: {pkg}\nStatus: install ok installed" in status, pkg
    assert image.boot.kernel.name.endswith("-cloud-amd64")
    assert image.boot.initrd.stat().st_size > 1_000_000
    assert (tree / "etc/systemd/system/multi-user.target.wants/hp-guest-setup.service").is_symlink()
    subprocess.run(["e2fsck", "-fn", str(image.disk)], check=True, capture_output=True)
    inside = subprocess.run(["debugfs", "-R", "cat /usr/lib/os-release", str(image.disk)],
                            check=True, capture_output=True, text=True).stdout
    assert 'VERSION_ID="12"' in inside
