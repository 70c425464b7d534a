"""A resolver that never answers cannot stretch a request past its limit.

getaddrinfo has no timeout (glibc retries its name servers for 5 s x attempts). A
fresh network namespace whose resolv.conf (``ip netns exec`` binds
/etc/netns/<name>/resolv.conf) names 127.0.0.1, where the probe itself holds UDP port
53 open and never answers: the query never leaves the namespace's loopback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                 reason="needs root and iproute2")]

PROBE = """
import sys, time
sys.path.insert(0, {repo!r})
import socket
from hookpack.adapters.http import HttpError, post
silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
silent.bind(("127.0.0.1", 53))  # takes the queries, answers none
start = time.monotonic()
try:
    post("https://announce-dns-probe.example.org/api/annotations", b"{{}}", {{}},
         timeout=0.5)
    print("answered")
except HttpError as err:
    print(f"{{time.monotonic() - start:.3f}} {{err}}")
"""


@pytest.fixture
def silent_resolver_netns():
    name = f"hpann-{uuid.uuid4().hex[:8]}"
    etc = Path("/etc/netns") / name
    made_parent = not etc.parent.exists()
    try:
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True)
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:5 attempts:2\n")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(etc, ignore_errors=True)
        if made_parent:
            with contextlib.suppress(OSError):  # someone else may use it by now
                etc.parent.rmdir()


def test_a_resolver_that_never_answers_is_abandoned_at_the_limit(silent_resolver_netns):
    result = subprocess.run(["ip", "netns", "exec", silent_resolver_netns, sys.executable,
                             "-c", PROBE.format(repo=str(REPO))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seconds, _, message = result.stdout.strip().partition(" ")
    assert message == ("https://announce-dns-probe.example.org:443: resolving "
                       "announce-dns-probe.example.org took too long")
    assert float(seconds) < 0.5 + 0.5  # glibc alone would take 10 s; loose bound
