"""A tenant's flood, measured where it leaves the node: raw frames from a fake VM.

``FLOOD`` runs in the VM's netns with the system python: an AF_PACKET socket on the
VM's eth0 sends frames as fast as it can for ``seconds``: ``raw`` (ethertype 0x88b5,
the IEEE local experimental type: no IP at all), ``vlan`` (802.1Q tag, VID 100, around
an IPv4/UDP packet), ``qinq`` (802.1ad outer tag 0x88a8 + 802.1Q inner) or ``udp``
(plain IPv4/UDP through a datagram socket). The rate is read where the frames leave
the node: the world side of the uplink's veth counts every byte that came through the
uplink's qdisc (``rx_bytes`` of ``wo0``), sampled from a settling second after the
sender says it sends (Python starts in seconds in a TCG guest).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

FLOOD = r"""
import socket, struct, sys, time
kind, seconds, dst_mac, dst_ip = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
dst = bytes.fromhex(dst_mac.replace(":", ""))
payload = b"x" * 1000
def ip_udp(src, dst_ip):
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst_ip))
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:] + udp
sent = 0
def go():
    global end
    print("go", flush=True)  # the parent's measurement window starts after this
    end = time.monotonic() + seconds
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    go()
    while time.monotonic() < end:
        for _ in range(200):
            try:
                s.sendto(payload, (dst_ip, 9))
                sent += 1
            except OSError:
                pass
else:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("eth0", 0))
    src = open("/sys/class/net/eth0/address").read().strip()
    head = dst + bytes.fromhex(src.replace(":", ""))
    if kind == "raw":
        frame = head + b"\x88\xb5" + payload
    elif kind == "vlan":
        frame = (head + b"\x81\x00" + struct.pack("!H", 100) + b"\x08\x00"
                 + ip_udp("192.0.2.200", dst_ip))
    elif kind == "qinq":
        frame = (head + b"\x88\xa8" + struct.pack("!H", 200) + b"\x81\x00"
                 + struct.pack("!H", 100) + b"\x08\x00" + ip_udp("192.0.2.200", dst_ip))
    else:
        raise SystemExit(f"unknown kind {kind}")
    go()
    while time.monotonic() < end:
        for _ in range(200):
            try:
                s.send(frame)
                sent += 1
            except OSError:
                pass
print(sent)
"""


def rx_bytes(ns: str, dev: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-j", "-s", "link", "show", dev], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])


def mac(ns: str, dev: str) -> str:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", dev], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return str(json.loads(out)[0]["address"])


def sample(ns: str, dev: str) -> tuple[float, int]:
    """(time, rx bytes): the time is the middle of the read (an ``ip`` process that a
    loaded machine delays by 100s of ms would otherwise skew a 3 s window)."""
    start = time.monotonic()
    value = rx_bytes(ns, dev)
    return (start + time.monotonic()) / 2, value


def flood_rate(vm_ns: str, world_ns: str, kind: str, *, seconds: float = 3.0,
               settle: float = 1.0, dst_ip: str = "192.0.2.1") -> float:
    """Mbit/s (Ethernet frames, as HTB counts them) that left the node's uplink while the
    VM flooded; measured over ``seconds - settle`` after the first ``settle`` seconds."""
    proc = subprocess.Popen(["ip", "netns", "exec", vm_ns, sys.executable, "-c", FLOOD, kind,
                             str(seconds + settle + 0.5), mac(world_ns, "wo0"), dst_ip],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "go":
            why = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"flood {kind} did not start: {why}")
        time.sleep(settle)
        t0, b0 = sample(world_ns, "wo0")
        time.sleep(seconds)
        t1, b1 = sample(world_ns, "wo0")
    finally:
        _out, err = proc.communicate(timeout=60)
    if proc.returncode:
        raise RuntimeError(f"flood {kind} failed: {err.strip()}")
    return (b1 - b0) * 8 / (t1 - t0) / 1e6
