"""hookpack.confd's wire format against Ganeti's own code (the installed package's
lib/serializer.py and lib/confd, run by the system python), both directions."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from hookpack import confd

GANETI = "/usr/share/ganeti/3.0"
KEY = b"0123456789abcdef0123456789abcdef\n"  # as Ganeti writes hmac.key: newline kept

_GANETI_SIDE = r"""
import json, sys
sys.path.insert(0, %(lib)r)
from ganeti import confd, objects, serializer
key = %(key)r
packet = sys.stdin.buffer.read()
req, salt = serializer.LoadSignedJson(confd.UnpackMagic(packet), key)
request = objects.ConfdRequest.FromDict(req)
reply = objects.ConfdReply(protocol=1, status=0, answer=["hookpack:egress:5mbit"], serial=7)
out = confd.PackMagic(serializer.DumpSignedJson(reply.ToDict(), key, request.rsalt))
print(json.dumps({"type": request.type, "query": request.query, "salt": salt,
                  "reply": out.decode()}))
"""


def test_request_verifies_with_ganetis_code_and_its_reply_with_ours():
    packet = confd.pack("/instances/abc/tags", KEY, "salt-1", time.time())
    proc = subprocess.run(["/usr/bin/python3", "-c",
                           _GANETI_SIDE % {"lib": GANETI, "key": KEY.decode()}],
                          input=packet, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    seen = json.loads(proc.stdout)
    assert seen["type"] == confd.REQ_CONFIG_QUERY and seen["query"] == "/instances/abc/tags"
    reply = confd.unpack(seen["reply"].encode(), KEY, "salt-1")
    assert reply == {"protocol": 1, "status": 0, "answer": ["hookpack:egress:5mbit"],
                     "serial": 7}
    # a reply signed with another key, or answering another request, is not taken
    assert confd.unpack(seen["reply"].encode(), b"other\n", "salt-1") is None
    assert confd.unpack(seen["reply"].encode(), KEY, "salt-2") is None


def test_instance_uuid_comes_from_the_kvm_runtime_file(tmp_path: Path):
    (tmp_path / "conf").mkdir()
    runtime = [["/usr/bin/kvm", "-name", "web1", "-uuid", "4f1c-uuid", "-m", "512"],
               [], {}, []]
    (tmp_path / "conf" / "web1.example.test.runtime").write_text(json.dumps(runtime))
    assert confd.instance_uuid(tmp_path, "web1.example.test") == "4f1c-uuid"
    assert confd.instance_uuid(tmp_path, "other.example.test") is None
    (tmp_path / "conf" / "bad.runtime").write_text("[[\"kvm\"]]")
    assert confd.instance_uuid(tmp_path, "bad") is None


def test_no_candidate_answering_is_a_clear_error(tmp_path: Path):
    (tmp_path / "hmac.key").write_bytes(KEY)
    (tmp_path / "ssconf_master_candidates_ips").write_text("127.0.0.1\n")
    try:
        confd.query("/cluster/tags", tmp_path, timeout=0.2)  # nothing listens here
    except confd.ConfdError as err:
        assert "confd query /cluster/tags" in str(err)
    else:
        raise AssertionError("no confd on 127.0.0.1:1814 here, yet an answer")
