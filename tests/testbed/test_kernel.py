"""vmtestbed.kernel (the guests' kernel unpacked from its .deb) and the hostguest's
/tmp handling."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from vmtestbed.hostguest import kept_under_tmp
from vmtestbed.kernel import StockKernel, cached_kernels, stock_kernel


def test_kept_under_tmp_names_top_directories_under_tmp_only(tmp_path):
    clone = Path("/tmp/clone-x")
    assert kept_under_tmp([clone / "sub", clone, Path("/work/main"), Path("/var/tmp/a")]) \
        == ["/tmp/clone-x"]
    assert kept_under_tmp([Path("/tmp")]) == []  # /tmp itself: nothing to keep


def test_cached_kernels_skips_incomplete_trees(tmp_path):
    good = StockKernel("6.1.0-9-cloud-amd64", tmp_path / "6.1.0-9-cloud-amd64")
    good.vmlinuz.parent.mkdir(parents=True)
    good.vmlinuz.write_text("k")
    good.modules_dir.mkdir(parents=True)
    (good.modules_dir / "modules.dep").write_text("")
    newer = StockKernel("6.1.0-10-cloud-amd64", tmp_path / "6.1.0-10-cloud-amd64")
    newer.vmlinuz.parent.mkdir(parents=True)
    newer.vmlinuz.write_text("k")  # no modules.dep: a fetch that did not finish
    (tmp_path / ".fetch-1-abc").mkdir()
    assert cached_kernels(tmp_path) == [good]


@pytest.mark.slow
def test_stock_kernel_is_unpacked_not_installed():
    kernel = stock_kernel()
    assert kernel.version.endswith("-cloud-amd64")
    assert kernel.vmlinuz.is_file() and not str(kernel.vmlinuz).startswith("/boot/")
    assert (kernel.modules_dir / "modules.dep").stat().st_size > 0
    assert (kernel.modules_dir / "kernel/net/sched/cls_fw.ko").is_file()
    # modprobe resolves against the unpacked tree (what the hostguest's stage 2 does)
    out = subprocess.run(["modprobe", "-d", str(kernel.root), "-S", kernel.version,
                          "--show-depends", "br_netfilter"], capture_output=True, text=True,
                         check=True).stdout
    assert str(kernel.modules_dir) in out and "bridge.ko" in out
