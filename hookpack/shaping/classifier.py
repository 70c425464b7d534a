"""Which classifier this kernel can be trusted with: ``fw`` (cls_fw) or CLASSIFY.

The probe runs in a throwaway network namespace (a forked child that unshares its
network namespace, so no device of the host is touched): it puts an HTB qdisc on that
namespace's loopback, adds an ``fw`` filter and reads it back. A kernel without cls_fw
refuses the filter. The same child also checks the u32 mark trap: a ``u32 match mark``
filter that a kernel without CONFIG_CLS_U32_MARK accepts but stores without its mark
match (it would classify every packet). shaping never uses u32; the result is shown
by ``hookpack shaping doctor``.

The result is cached in ``<run_dir>/shaping-classifier.json`` keyed by the kernel
release and boot id (modules can appear after a reboot or a kernel upgrade).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
from pathlib import Path
from typing import Any

CLONE_NEWNET = 0x40000000
_CACHE = "shaping-classifier.json"


def _kernel_key(proc_root: str = "/proc") -> str:
    try:
        boot = Path(f"{proc_root}/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "?"
    return f"{os.uname().release} {boot}"


def probe_in_child() -> dict[str, Any]:
    """Fork, unshare the network namespace in the child, probe, report over a pipe."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            os.close(read_fd)
            result = _probe_here()
            os.write(write_fd, json.dumps(result).encode())
        except BaseException as err:
            os.write(write_fd, json.dumps({"error": f"{type(err).__name__}: {err}"}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while True:
        data = os.read(read_fd, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(read_fd)
    os.waitpid(pid, 0)
    try:
        parsed: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        parsed = {"error": "probe child sent no result"}
    return parsed


def _probe_here() -> dict[str, Any]:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        return {"error": f"unshare(CLONE_NEWNET): {os.strerror(err)}"}
    from hookpack.shaping import tc

    lo = tc.ifindex("lo") or 1
    major = 0x10
    with tc.Netlink() as nl:
        (qd,) = nl.transact([tc.new_qdisc(lo, major, 10, 1, "probe qdisc")])
        if qd.error:
            return {"htb": False, "fw": False, "u32_mark": "unknown",
                    "detail": f"htb: {os.strerror(qd.error)} {qd.extack}".strip()}
        classid = tc.handle(major, 1)
        params = tc.HtbParams(125000, 125000, 1500, 1500, 1500)
        nl.transact([tc.set_class(lo, major, 1, params, "probe class")])
        (fw,) = nl.transact([tc.set_fw_filter(lo, major, 1, 7, classid, 0xFFFF, False,
                                              "probe fw")])
        fw_ok = False
        detail = ""
        if fw.error:
            detail = f"fw: {os.strerror(fw.error)}" + (f" ({fw.extack})" if fw.extack else "")
        else:
            found = [f for f in nl.dump(tc.RTM_GETTFILTER, lo, tc.handle(major, 0))
                     if f.kind == "fw" and f.handle == 7]
            fw_ok = bool(found) and found[0].fw() == (classid, 0xFFFF)
            if not fw_ok:
                detail = "fw: accepted but not read back as written"
        u32_req = tc.Request(tc.RTM_NEWTFILTER, tc.NLM_F_CREATE | tc.NLM_F_EXCL, lo, 0,
                             tc.handle(major, 0), tc.filter_info(2),
                             tc.u32_mark_options(classid, 7, 0xFFFF), "probe u32")
        (u32,) = nl.transact([u32_req])
        if u32.error:
            u32_state = f"refused ({os.strerror(u32.error)})"
        else:
            kept = any(f.kind == "u32" and tc.TCA_U32_MARK in f.options
                       for f in nl.dump(tc.RTM_GETTFILTER, lo, tc.handle(major, 0))
                       if f.prio == 2)
            u32_state = "kept" if kept else "dropped (trap: matches every packet)"
    return {"htb": True, "fw": fw_ok, "u32_mark": u32_state, "detail": detail}


def probe(run_dir: Path, *, refresh: bool = False) -> dict[str, Any]:
    """The cached probe result for this boot of this kernel (probing when needed)."""
    key = _kernel_key()
    path = run_dir / _CACHE
    if not refresh:
        try:
            cached = json.loads(path.read_text())
            if cached.get("kernel") == key:
                return dict(cached)
        except (OSError, ValueError, AttributeError):
            pass
    result = probe_in_child()
    result["kernel"] = key
    if "error" not in result:
        try:
            run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            tmp = path.with_name(f".{_CACHE}.{os.getpid()}")
            tmp.write_text(json.dumps(result) + "\n")
            os.replace(tmp, path)
        except OSError as err:
            if err.errno not in (errno.EROFS, errno.EACCES):
                raise
    return result


def choose(setting: str, run_dir: Path) -> tuple[str, str]:
    """("fw" | "classify", why). ``setting`` "fw"/"classify" forces; "auto" probes."""
    if setting in ("fw", "classify"):
        return setting, "forced by shaping.classifier"
    result = probe(run_dir)
    if result.get("fw"):
        return "fw", "cls_fw present (probed)"
    why = result.get("detail") or result.get("error") or "cls_fw missing"
    return "classify", f"no usable cls_fw ({why}): CLASSIFY --set-class"
