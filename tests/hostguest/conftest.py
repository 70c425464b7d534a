"""The stock-kernel guest that runs this machine's userspace (vmtestbed.hostguest)."""

from vmtestbed.hostguest_plugin import host_guest_image, run_in_host_guest

__all__ = ["host_guest_image", "run_in_host_guest"]
