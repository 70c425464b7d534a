"""Hook environments for instance operations, derived from a recorded real one.

The base is the instance-add post dump recorded on a real Ganeti 3.0.2 master
(shared/reference/ganeti-env-samples); only the keys an operation changes are
rewritten: the path, the phase, the name, the NIC addresses/MACs and, for a rename,
INSTANCE_NEW_NAME.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tests.conftest import SAMPLES, load_sample

OPCODES = {"instance-add": "OP_INSTANCE_CREATE", "instance-modify": "OP_INSTANCE_SET_PARAMS",
           "instance-rename": "OP_INSTANCE_RENAME", "instance-remove": "OP_INSTANCE_REMOVE"}


def _instance_keys(base: dict[str, str], prefix: str, name: str,
                   ips: Sequence[str]) -> dict[str, str]:
    """The INSTANCE_* keys of ``base`` under ``prefix``, with name and NICs replaced."""
    keys = {k[len(prefix):]: v for k, v in base.items()
            if k.startswith(prefix) and not re.match(r"INSTANCE_NIC\d", k[len(prefix):])
            and k[len(prefix):].startswith("INSTANCE_")}
    nic0 = {k[len(prefix) + len("INSTANCE_NIC0_"):]: v for k, v in base.items()
            if k.startswith(prefix + "INSTANCE_NIC0_")}
    keys["INSTANCE_NAME"] = name
    keys["INSTANCE_NIC_COUNT"] = str(len(ips))
    for index, ip in enumerate(ips):
        for field, value in nic0.items():
            keys[f"INSTANCE_NIC{index}_{field}"] = value
        keys[f"INSTANCE_NIC{index}_IP"] = ip or ""
        keys[f"INSTANCE_NIC{index}_MAC"] = f"aa:00:00:00:00:{index + 0x10:02x}"
        keys[f"INSTANCE_NIC{index}_UUID"] = f"00000000-0000-0000-0000-{index:012d}"
    return {prefix + k: v for k, v in keys.items()}


def instance_env(hpath: str, phase: str, name: str, ips: Sequence[str], *,
                 after_name: str | None = None, after_ips: Sequence[str] | None = None,
                 master: str = "node1.example.test") -> dict[str, str]:
    base, _ = load_sample(SAMPLES / "instance-add-post-node1.env")
    common = {k: v for k, v in base.items()
              if not k.startswith(("GANETI_INSTANCE_", "GANETI_POST_", "GANETI_ADD_",
                                   "GANETI_OP_"))}
    env = {**common, "GANETI_HOOKS_PATH": hpath, "GANETI_HOOKS_PHASE": phase,
           "GANETI_MASTER": master, "GANETI_OP_CODE": OPCODES.get(hpath, "OP_X"),
           "GANETI_OP_TARGET": name}
    env.update(_instance_keys(base, "GANETI_", name, ips))
    if hpath == "instance-add":
        env["GANETI_ADD_MODE"] = "create"
    if hpath == "instance-rename":
        env["GANETI_INSTANCE_NEW_NAME"] = after_name or name
    if phase == "post":
        post = _instance_keys(base, "GANETI_POST_", after_name or name,
                              ips if after_ips is None else after_ips)
        env.update(post)
        env["GANETI_POST_OP_TARGET"] = after_name or name
    return env
