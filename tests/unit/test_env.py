"""Golden tests on real Ganeti 3.0.2 and 3.1 environment dumps, and a fuzzed parser."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookpack.env import Phase, parse_env, qemu_disk_id, read_env_dump
from hookpack.roles import Role, resolve_roles
from tests.conftest import SAMPLES, SAMPLES_3_1, load_sample, sample_files

M, P, S, SRC, T, H = (Role.MASTER, Role.PRIMARY, Role.SECONDARY, Role.SOURCE, Role.TARGET,
                      Role.HOST)

# What each recorded node is in each recorded hook (node1 is the master; inst1 and
# inst3 live on node1/node2 as their dumps say; inst2 migrates node1 -> node2).
EXPECTED_ROLES = {
    "disk-grow-post-node1": {M, P, H},
    "disk-grow-post-node2": {P, H},
    "disk-grow-pre-node1": {M, P, H},
    "disk-grow-pre-node2": {P, H},
    "instance-add-post-node1": {M, P, H},
    "instance-add-post-node2": {P, H},
    "instance-migrate-post-node1": {M, P, SRC},
    "instance-migrate-post-node2": {T, H},
    "instance-migrate-pre-node1": {M, P, SRC, H},
    "instance-migrate-pre-node2": {T},
    "instance-start-post-node1": {M, P, H},
    "instance-start-post-node2": {P, H},
    "instance-start-pre-node1": {M, P, H},
    "instance-start-pre-node2": {P, H},
    "instance-stop-post-node1": {M, P, H},
    "instance-stop-post-node2": {P, H},
}


@pytest.mark.parametrize("directory", [SAMPLES, SAMPLES_3_1], ids=["3.0", "3.1"])
def test_every_sample_has_an_expectation(directory):
    assert {p.stem for p in sample_files(directory)} == set(EXPECTED_ROLES)


@pytest.mark.parametrize("path", sample_files() + sample_files(SAMPLES_3_1),
                         ids=lambda p: ("3.1-" if p.parent == SAMPLES_3_1 else "3.0-") + p.stem)
def test_sample_common_fields_and_roles(path):
    environ, node = load_sample(path)
    env = parse_env(environ)
    hpath, phase = path.stem.rsplit("-", 2)[0], path.stem.rsplit("-", 2)[1]
    assert env.warnings == ()
    assert env.version == 2 and env.supported
    assert env.hpath == hpath
    assert env.phase is Phase(phase)
    assert env.cluster == "cluster1.example.test"
    assert env.master == "node1.example.test"
    assert env.data_dir == "/var/lib/ganeti"
    assert (env.post is not None) == (phase == "post")
    assert env.instance is not None and env.instance.name == env.op_target
    assert resolve_roles(env, node) == EXPECTED_ROLES[path.stem]
    json.dumps(env.to_dict())


def test_disk_grow_fields(sample):
    env = parse_env(sample("disk-grow-post-node1")[0])
    assert env.disk_grow is not None
    assert (env.disk_grow.disk, env.disk_grow.amount_mib, env.disk_grow.absolute) == (0, 64, False)
    disk = env.instance.disks[0]
    assert disk.size_mib == 64 and env.instance_after.disks[0].size_mib == 128
    assert disk.uuid == "403d6c96-7c55-47ab-8e70-fb9c2cc6de95"
    assert disk.qemu_id == "disk-403d6c96-7c55-47ab"
    assert disk.dev_type == "file" and disk.extra["DRIVER"] == "loop"
    assert disk.logical_id.endswith(".file.disk0")


def test_instance_fields(sample):
    inst = parse_env(sample("instance-start-post-node2")[0]).instance
    assert inst.primary == "node2.example.test" and inst.secondaries == ()
    assert (inst.memory, inst.maxmem, inst.vcpus) == (160, 160, 1)
    assert inst.status == "down" and inst.disk_template == "sharedfile"
    assert inst.hv["cpu_mask"] == "all" and inst.be["vcpus"] == "1"
    nic = inst.nics[0]
    assert (nic.index, nic.ip, nic.mac, nic.mode, nic.link, nic.bridge) == (
        0, "198.51.100.22", "aa:00:00:20:4f:55", "bridged", "br0", "br0")
    assert inst.tags == ()


def test_nic_without_ip_is_none(sample):
    assert parse_env(sample("instance-add-post-node2")[0]).instance.nics[0].ip is None


def test_migrate_post_uses_old_and_new_primary_not_post_values(sample):
    environ, _ = sample("instance-migrate-post-node2")
    # Ganeti recomputes POST_OLD_PRIMARY after the move: it is the new node there.
    assert environ["GANETI_POST_OLD_PRIMARY"] == "node2.example.test"
    reloc = parse_env(environ).relocation
    assert (reloc.kind, reloc.source, reloc.target, reloc.live) == (
        "migrate", "node1.example.test", "node2.example.test", True)


def test_stop_timeout_is_an_operation_field(sample):
    env = parse_env(sample("instance-stop-post-node2")[0])
    assert env.to_dict()["operation"] == {"TIMEOUT": "120"}


def test_version_1_and_upper_case_phase_are_accepted():
    env = parse_env({"GANETI_HOOKS_VERSION": "1", "GANETI_HOOKS_PHASE": "POST",
                     "GANETI_HOOKS_PATH": "instance-start"})
    assert env.supported and env.phase is Phase.POST


def test_unknown_version_is_not_supported_and_warns():
    env = parse_env({"GANETI_HOOKS_VERSION": "7", "GANETI_HOOKS_PHASE": "post"})
    assert not env.supported
    assert any("unknown hooks version 7" in w for w in env.warnings)


def test_garbled_numbers_become_none_with_a_warning():
    env = parse_env({"GANETI_HOOKS_VERSION": "2", "GANETI_HOOKS_PHASE": "post",
                     "GANETI_INSTANCE_NAME": "a", "GANETI_INSTANCE_VCPUS": "two",
                     "GANETI_INSTANCE_DISK_COUNT": "99999999999"})
    assert env.instance.vcpus is None
    assert len(env.instance.disks) == 64
    assert any("INSTANCE_VCPUS" in w for w in env.warnings)


@pytest.mark.parametrize(("uuid", "qid"), [
    ("932df160-7a22-4067-9b2a-1d2c3e4f5a6b", "disk-932df160-7a22-4067"),
    ("", None), ("not-a-uuid", None), ("../../etc-passwd-x", None)])
def test_qemu_disk_id(uuid, qid):
    assert qemu_disk_id(uuid) == qid


def test_read_env_dump_ignores_comments_and_keeps_equals_in_values():
    assert read_env_dump("# c\n\nA=1\nB=x=y\nbad line\n") == {"A": "1", "B": "x=y"}


_KEYS = st.sampled_from([
    "GANETI_HOOKS_VERSION", "GANETI_HOOKS_PHASE", "GANETI_HOOKS_PATH", "GANETI_INSTANCE_NAME",
    "GANETI_INSTANCE_NIC_COUNT", "GANETI_INSTANCE_DISK_COUNT", "GANETI_INSTANCE_DISK0_SIZE",
    "GANETI_INSTANCE_DISK0_UUID", "GANETI_INSTANCE_NIC0_IP", "GANETI_POST_INSTANCE_NAME",
    "GANETI_POST_INSTANCE_DISK_COUNT", "GANETI_INSTANCE_SECONDARIES", "GANETI_INSTANCE_TAGS",
    "GANETI_DISK", "GANETI_AMOUNT", "GANETI_OLD_PRIMARY", "GANETI_MASTER", "GANETI_TARGET_NODE",
    "GANETI_MIGRATE_LIVE", "GANETI_INSTANCE_VCPUS", "GANETI_INSTANCE_HV_cpu_mask",
])
_VALUES = st.one_of(st.text(), st.text(alphabet="0123456789-"), st.sampled_from(
    ["2", "1", "pre", "post", "POST", "None", "True", "", "instance-migrate", "disk-grow",
     "-1", "999999999999999999999", "\x00", "\udcff"]),
    st.binary(max_size=64).map(lambda b: b.decode("utf-8", "surrogateescape")))


@settings(max_examples=2000, deadline=None)
@given(st.dictionaries(st.one_of(_KEYS, st.text(max_size=30)), _VALUES, max_size=25),
       st.text(max_size=40))
def test_parser_never_raises(environ, fqdn):
    env = parse_env(environ)
    resolve_roles(env, fqdn)
    json.dumps(env.to_dict())
    env.disk_grow  # noqa: B018 - properties must not raise either
    env.relocation  # noqa: B018
