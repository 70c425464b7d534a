"""What this kernel offers shaping's classifier, probed: marks and mark -> class.

Frames are marked at each tap's ingress by an nf_tables ``netdev`` chain
(hookpack.actions.shaping.nft); on the uplink's HTB one filter maps the mark to the class:
``bpf`` (cls_bpf running a classic BPF program: one program for every tap, O(1) per
packet) or ``fw`` (cls_fw: one element per mark, hashed in 256 buckets). ``auto``
takes bpf where the kernel has it, else fw.

The probe runs in a throwaway network namespace (a forked child that unshares its
network namespace, so no device of the host is touched): it puts an HTB qdisc on that
namespace's loopback, adds a cls_bpf and an ``fw`` filter and reads them back, and
makes an nf_tables netdev table with an ingress chain on the loopback and reads it
back. The same child also checks the u32 mark trap: a ``u32 match mark`` filter that a
kernel without CONFIG_CLS_U32_MARK accepts but stores without its mark match (it would
classify every packet). shaping never uses u32; the result is shown by ``hookpack
shaping doctor``.

The result is cached in ``<run_dir>/shaping-classifier.json`` keyed by the kernel
release and boot id (modules can appear after a reboot or a kernel upgrade).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

CLONE_NEWNET = 0x40000000
_CACHE = "shaping-classifier.json"
_VERSION = 2  # what the probe checks; an older cache is probed again


def kernel_key(proc_root: str = "/proc") -> str:
    try:
        boot = Path(f"{proc_root}/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "?"
    return f"{os.uname().release} {boot}"


def probe_in_child(probe_here: Any = None) -> dict[str, Any]:
    """Fork, unshare the network namespace in the child, probe (``probe_here``, default
    this module's), report over a pipe."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            os.close(read_fd)
            result = (probe_here or _probe_here)()
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
    import ctypes  # the probe runs in a child, rarely: kept off the hook's hot path

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        return {"error": f"unshare(CLONE_NEWNET): {os.strerror(err)}"}
    result = _probe_tc()
    result.update(_probe_nft())
    return result


def _probe_nft() -> dict[str, Any]:
    """An nf_tables netdev table with an ingress chain and a mark rule on lo, read back."""
    from hookpack.actions.shaping import nft

    try:
        with nft.Nft(timeout=5.0) as n:
            done = n.batch(nft.tap_batch([("lo", 0x10, 0xFFFF, "hookpack:probe:0",
                                           nft.TapChains())], [], table=True))
            if not done.ok:
                _msg, code, text = done.errors[0]
                return {"nft_netdev": False,
                        "nft_detail": f"{os.strerror(code)}{f' ({text})' if text else ''}"}
            rules = n.marks()
            marks = rules.get(nft.record_name("lo"), [])
            jumps = rules.get("lo", [])
            chain = n.chains().get("lo")
            good = (chain is not None and chain.hooked_on("lo") and len(marks) == 1
                    and (marks[0].value, marks[0].mask) == (0x10, 0xFFFF)
                    and [j.jump for j in jumps] == [nft.record_name("lo")])
            return {"nft_netdev": good,
                    "nft_detail": "" if good else "accepted but not read back as written"}
    except OSError as err:
        return {"nft_netdev": False, "nft_detail": f"nf_tables netlink: {err}"}


def _probe_tc() -> dict[str, Any]:
    from hookpack.actions.shaping import tc

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
        ops = tc.mark_program(major, 0xFFFF)
        (bpf,) = nl.transact([tc.set_bpf_filter(lo, major, 3, ops, False, "probe bpf")])
        bpf_ok = False
        bpf_detail = ""
        if bpf.error:
            bpf_detail = f"cls_bpf: {os.strerror(bpf.error)}" + (
                f" ({bpf.extack})" if bpf.extack else "")
        else:
            found_bpf = [f.bpf() for f in nl.dump(tc.RTM_GETTFILTER, lo, tc.handle(major, 0))
                         if f.kind == "bpf" and f.prio == 3 and f.handle == tc.BPF_HANDLE]
            bpf_ok = found_bpf == [ops]
            if not bpf_ok:
                bpf_detail = "cls_bpf: accepted but not read back as written"
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
    return {"htb": True, "fw": fw_ok, "bpf": bpf_ok, "u32_mark": u32_state,
            "detail": detail, "bpf_detail": bpf_detail}


def probe(run_dir: Path, *, refresh: bool = False) -> dict[str, Any]:
    """The cached probe result for this boot of this kernel (probing when needed)."""
    key = kernel_key()
    path = run_dir / _CACHE
    if not refresh:
        try:
            cached = json.loads(path.read_text())
            if cached.get("kernel") == key and cached.get("version") == _VERSION:
                return dict(cached)
        except (OSError, ValueError, AttributeError):
            pass
    result = probe_in_child()
    result["kernel"] = key
    result["version"] = _VERSION
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
    """("bpf" | "fw", why): the mark -> class filter. ``setting`` "bpf"/"fw" forces;
    "auto" (and "classify", the retired iptables CLASSIFY mode) probes."""
    if setting in ("bpf", "fw"):
        return setting, "forced by shaping.classifier"
    result = probe(run_dir)
    if result.get("bpf"):
        return "bpf", "cls_bpf present (probed): one classic BPF program, O(1) per packet"
    if result.get("fw"):
        return "fw", (f"no usable cls_bpf ({result.get('bpf_detail') or 'missing'}); "
                      "cls_fw present (probed)")
    return "bpf", ("neither cls_bpf nor cls_fw usable "
                   f"({result.get('bpf_detail') or result.get('error') or '?'}; "
                   f"{result.get('detail') or ''}): shaping will fail")


def describe(mode: str, why: str, result: dict[str, Any]) -> str:
    """One line for doctor / show / the CLI: how frames find their class."""
    marks = ("nf_tables netdev ingress chain per tap" if result.get("nft_netdev", True)
             else f"nf_tables netdev MISSING ({result.get('nft_detail')})")
    return f"marks: {marks}; mark -> class: {'cls_bpf' if mode == 'bpf' else 'cls_fw'} ({why})"
