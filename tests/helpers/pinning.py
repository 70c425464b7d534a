"""Hook environments and configs for pinning tests."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import SAMPLES, load_sample

NODE = "node1.example.test"
# tests/conftest.py looks next to the repository; worktrees sit one level deeper.
_SAMPLES = next((p for p in (SAMPLES, Path("/work/shared/reference/ganeti-env-samples"))
                 if p.is_dir()), SAMPLES)


def start_env(name: str, node: str = NODE, cpu_mask: str = "all",
              hpath: str = "instance-start") -> dict[str, str]:
    """A recorded instance-start post environment (or migrate, target side) for
    instance ``name`` now running on ``node``."""
    if hpath == "instance-migrate":
        environ, _ = load_sample(_SAMPLES / "instance-migrate-post-node2.env")
        old = environ["GANETI_INSTANCE_NAME"]
        environ = {k: v.replace("node2.example.test", node) if "PRIMARY" in k else v
                   for k, v in environ.items()}
    else:
        environ, _ = load_sample(_SAMPLES / "instance-start-post-node1.env")
        old = environ["GANETI_INSTANCE_NAME"]
        environ = {k: v.replace("node1.example.test", node) for k, v in environ.items()}
    environ = {k: v.replace(old, name) for k, v in environ.items()}
    for key in ("GANETI_INSTANCE_HV_cpu_mask", "GANETI_POST_INSTANCE_HV_cpu_mask"):
        environ[key] = cpu_mask
    return environ


def write_config(path: Path, kvm_dir: Path, run_dir: Path, pinning: str = "",
                 sysfs_root: str = "/sys", proc_root: str = "/proc",
                 enabled: bool = True) -> Path:
    path.write_text(
        f'[log]\nsyslog = false\n\n[node]\nfqdn = "{NODE}"\n\n'
        f'[paths]\nkvm_dir = "{kvm_dir}"\nrun_dir = "{run_dir}"\n'
        f'sysfs_root = "{sysfs_root}"\nproc_root = "{proc_root}"\n'
        f'state_dir = "{run_dir}/state"\nspool_dir = "{run_dir}/spool"\n\n'
        f"[pinning]\nenabled = {str(enabled).lower()}\n{pinning}\n")
    path.chmod(0o600)
    return path
