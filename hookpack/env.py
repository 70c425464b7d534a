"""The environment Ganeti hands a hook, parsed once into typed objects.

Facts (shared/reference/ganeti-hooks.md, Ganeti's lib/hooksmaster.py): every variable
carries the GANETI_ prefix; values are Python str() of the value (True/False, "None",
sizes in MiB); post hooks get the pre-operation values as GANETI_* and the values
recomputed after the operation as GANETI_POST_*. Parsing never raises: a garbled value
becomes None and a warning, so a hook can always say what it saw.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType

from hookpack.record import field, fields, record
from hookpack.roles import normalize_host, relocation_nodes

PREFIX = "GANETI_"
POST_PREFIX = "GANETI_POST_"
SUPPORTED_VERSIONS = frozenset({1, 2})

# More NICs or disks than this is not an instance, it is garbage (Ganeti's own
# maximums are 8 NICs and 16 disks); never loop to a count read from the environment.
MAX_DEVICES = 64

_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0", "none", ""}


class Phase(StrEnum):
    PRE = "pre"
    POST = "post"


@record(frozen=True)
class Nic:
    index: int
    uuid: str
    name: str
    ip: str | None
    mac: str
    mode: str
    link: str
    vlan: str
    bridge: str
    network: Mapping[str, str]


@record(frozen=True)
class Disk:
    index: int
    uuid: str
    name: str
    size_mib: int | None
    mode: str
    dev_type: str
    logical_id: str
    extra: Mapping[str, str]

    @property
    def qemu_id(self) -> str | None:
        """Ganeti's QEMU id for this disk: ``disk-`` + the first three UUID groups."""
        return qemu_disk_id(self.uuid)


@record(frozen=True)
class Instance:
    name: str
    primary: str
    secondaries: tuple[str, ...]
    os_type: str
    status: str
    minmem: int | None
    maxmem: int | None
    memory: int | None
    vcpus: int | None
    disk_template: str
    hypervisor: str
    tags: tuple[str, ...]
    nics: tuple[Nic, ...]
    disks: tuple[Disk, ...]
    be: Mapping[str, str]
    hv: Mapping[str, str]


@record(frozen=True)
class Snapshot:
    """One set of values: the GANETI_* (pre) or the GANETI_POST_* ones, prefix removed."""

    values: Mapping[str, str]
    instance: Instance | None

    def get(self, key: str) -> str | None:
        return self.values.get(key)


@record(frozen=True)
class DiskGrow:
    disk: int | None
    amount_mib: int | None
    absolute: bool


@record(frozen=True)
class Relocation:
    """Where a migrate, failover or move takes the instance."""

    kind: str  # "migrate", "failover" or "move"
    source: str
    target: str
    live: bool | None
    cleanup: bool


@record(frozen=True)
class HookEnv:
    version: int | None
    phase: Phase | None
    hpath: str
    opcode: str
    object_type: str
    cluster: str
    master: str
    data_dir: str
    op_target: str
    pre: Snapshot
    post: Snapshot | None
    warnings: tuple[str, ...] = field(default=())

    @property
    def instance(self) -> Instance | None:
        """The instance as it was before the operation (what Ganeti gives both phases)."""
        return self.pre.instance

    @property
    def instance_after(self) -> Instance | None:
        """The instance as recomputed after the operation (post phase), else as before."""
        if self.post is not None and self.post.instance is not None:
            return self.post.instance
        return self.pre.instance

    @property
    def supported(self) -> bool:
        return self.version in SUPPORTED_VERSIONS and self.phase is not None

    @property
    def disk_grow(self) -> DiskGrow | None:
        if self.hpath != "disk-grow":
            return None
        values = self.pre.values
        return DiskGrow(
            disk=_int(values.get("DISK"), "DISK", []),
            amount_mib=_int(values.get("AMOUNT"), "AMOUNT", []),
            absolute=_bool(values.get("ABSOLUTE")) is True,
        )

    @property
    def relocation(self) -> Relocation | None:
        """Source and target of a migrate/failover/move, from the pre values.

        In a migrate post hook GANETI_POST_INSTANCE_PRIMARY is already the new node
        and GANETI_POST_OLD_PRIMARY is recomputed too, so only the non-POST
        OLD_PRIMARY/NEW_PRIMARY are trusted here.
        """
        values = self.pre.values
        moved = relocation_nodes(values, self.hpath)
        if moved is None:
            return None
        kind, source, target = moved
        cleanup_key = {"migrate": "MIGRATE_CLEANUP", "failover": "FAILOVER_CLEANUP"}.get(kind, "")
        return Relocation(
            kind=kind,
            source=source,
            target=target,
            live=_bool(values.get("MIGRATE_LIVE")) if kind == "migrate" else False,
            cleanup=_bool(values.get(cleanup_key)) is True,
        )

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view for `hookpack env` and the record action."""
        return {
            "hooks_version": self.version,
            "phase": self.phase.value if self.phase else None,
            "hpath": self.hpath,
            "opcode": self.opcode,
            "object_type": self.object_type,
            "cluster": self.cluster,
            "master": self.master,
            "data_dir": self.data_dir,
            "op_target": self.op_target,
            "instance": _instance_dict(self.pre.instance),
            "instance_after": _instance_dict(self.post.instance) if self.post else None,
            "disk_grow": _plain(self.disk_grow),
            "relocation": _plain(self.relocation),
            "operation": {k: v for k, v in self.pre.values.items() if not _is_common_key(k)},
            "warnings": list(self.warnings),
        }


_UUID3 = re.compile(r"^([0-9a-fA-F]{8})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-[0-9a-fA-F-]+$")


def qemu_disk_id(uuid: str) -> str | None:
    """``disk-`` + first three groups of a disk UUID, as Ganeti's KVM code names it."""
    match = _UUID3.match(uuid or "")
    if not match:
        return None
    return "disk-" + "-".join(match.groups()).lower()


def parse_env(environ: Mapping[str, str]) -> HookEnv:
    """Parse a hook environment (e.g. os.environ, or a recorded dump). Never raises."""
    warnings: list[str] = []
    pre_raw: dict[str, str] = {}
    post_raw: dict[str, str] = {}
    for key, value in environ.items():
        if not isinstance(key, str) or not isinstance(value, str):
            continue
        if key.startswith(POST_PREFIX):
            post_raw[key[len(POST_PREFIX):]] = value
        elif key.startswith(PREFIX):
            pre_raw[key[len(PREFIX):]] = value

    version = _int(pre_raw.get("HOOKS_VERSION"), "HOOKS_VERSION", warnings)
    if version is not None and version not in SUPPORTED_VERSIONS:
        warnings.append(f"unknown hooks version {version} (this hookpack knows 1 and 2)")
    phase = _phase(pre_raw.get("HOOKS_PHASE"), warnings)

    pre = Snapshot(MappingProxyType(pre_raw), _instance(pre_raw, "", warnings))
    post = None
    if post_raw:
        post = Snapshot(MappingProxyType(post_raw), _instance(post_raw, "POST_", warnings))

    return HookEnv(
        version=version,
        phase=phase,
        hpath=pre_raw.get("HOOKS_PATH", ""),
        opcode=pre_raw.get("OP_CODE", ""),
        object_type=pre_raw.get("OBJECT_TYPE", ""),
        cluster=pre_raw.get("CLUSTER", ""),
        master=normalize_host(pre_raw.get("MASTER", "")),
        data_dir=pre_raw.get("DATA_DIR", ""),
        op_target=pre_raw.get("OP_TARGET", ""),
        pre=pre,
        post=post,
        warnings=tuple(warnings),
    )


def read_env_dump(text: str) -> dict[str, str]:
    """Read a ``KEY=VALUE`` dump (``#`` comments and blank lines ignored)."""
    environ: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        environ[key.strip()] = value
    return environ


def _phase(value: str | None, warnings: list[str]) -> Phase | None:
    if value is None:
        warnings.append("GANETI_HOOKS_PHASE is missing")
        return None
    try:
        return Phase(value.strip().lower())
    except ValueError:
        warnings.append(f"GANETI_HOOKS_PHASE {_show(value)} is neither pre nor post")
        return None


def _instance(values: Mapping[str, str], label: str, warnings: list[str]) -> Instance | None:
    name = values.get("INSTANCE_NAME")
    if name is None:
        return None

    def number(key: str) -> int | None:
        return _int(values.get(key), label + key, warnings)

    return Instance(
        name=name,
        primary=normalize_host(values.get("INSTANCE_PRIMARY", "")),
        secondaries=tuple(normalize_host(s) for s in _words(values.get("INSTANCE_SECONDARIES"))),
        os_type=values.get("INSTANCE_OS_TYPE", ""),
        status=values.get("INSTANCE_STATUS", ""),
        minmem=number("INSTANCE_MINMEM"),
        maxmem=number("INSTANCE_MAXMEM"),
        memory=number("INSTANCE_MEMORY"),
        vcpus=number("INSTANCE_VCPUS"),
        disk_template=values.get("INSTANCE_DISK_TEMPLATE", ""),
        hypervisor=values.get("INSTANCE_HYPERVISOR", ""),
        tags=tuple(_words(values.get("INSTANCE_TAGS"))),
        nics=tuple(_nics(values, label, warnings)),
        disks=tuple(_disks(values, label, warnings)),
        be=_params(values, "INSTANCE_BE_"),
        hv=_params(values, "INSTANCE_HV_"),
    )


def _count(values: Mapping[str, str], key: str, label: str, warnings: list[str]) -> int:
    count = _int(values.get(key), label + key, warnings)
    if count is None or count < 0:
        return 0
    if count > MAX_DEVICES:
        warnings.append(f"{label}{key}={count} is beyond {MAX_DEVICES}; reading {MAX_DEVICES}")
        return MAX_DEVICES
    return count


def _nics(values: Mapping[str, str], label: str, warnings: list[str]) -> Iterable[Nic]:
    for index in range(_count(values, "INSTANCE_NIC_COUNT", label, warnings)):
        prefix = f"INSTANCE_NIC{index}_"
        ip = values.get(prefix + "IP", "")
        yield Nic(
            index=index,
            uuid=values.get(prefix + "UUID", ""),
            name=values.get(prefix + "NAME", ""),
            ip=ip if ip and ip != "None" else None,
            mac=values.get(prefix + "MAC", ""),
            mode=values.get(prefix + "MODE", ""),
            link=values.get(prefix + "LINK", ""),
            vlan=values.get(prefix + "VLAN", ""),
            bridge=values.get(prefix + "BRIDGE", ""),
            network=_params(values, prefix + "NETWORK_"),
        )


_DISK_FIELDS = {"UUID", "NAME", "SIZE", "MODE", "DEV_TYPE", "ID"}


def _disks(values: Mapping[str, str], label: str, warnings: list[str]) -> Iterable[Disk]:
    for index in range(_count(values, "INSTANCE_DISK_COUNT", label, warnings)):
        prefix = f"INSTANCE_DISK{index}_"
        extra = {
            key[len(prefix):]: value
            for key, value in values.items()
            if key.startswith(prefix) and key[len(prefix):] not in _DISK_FIELDS
        }
        yield Disk(
            index=index,
            uuid=values.get(prefix + "UUID", ""),
            name=values.get(prefix + "NAME", ""),
            size_mib=_int(values.get(prefix + "SIZE"), label + prefix + "SIZE", warnings),
            mode=values.get(prefix + "MODE", ""),
            dev_type=values.get(prefix + "DEV_TYPE", ""),
            logical_id=values.get(prefix + "ID", ""),
            extra=MappingProxyType(extra),
        )


def _params(values: Mapping[str, str], prefix: str) -> Mapping[str, str]:
    return MappingProxyType(
        {key[len(prefix):]: value for key, value in values.items() if key.startswith(prefix)}
    )


def _words(value: str | None) -> list[str]:
    if not value or value == "None":
        return []
    return value.split()


def _int(value: str | None, key: str, warnings: list[str]) -> int | None:
    if value is None or value in ("", "None"):
        return None
    try:
        return int(value.strip())
    except ValueError:
        warnings.append(f"GANETI_{key} {_show(value)} is not a number")
        return None


def _bool(value: str | None) -> bool | None:
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


def _show(value: str, limit: int = 40) -> str:
    """A value safe to put in a log line: repr'd (control characters escaped), cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "...'"


_COMMON = {"HOOKS_VERSION", "HOOKS_PHASE", "HOOKS_PATH", "OP_CODE", "OBJECT_TYPE",
           "CLUSTER", "MASTER", "DATA_DIR", "OP_TARGET"}


def _is_common_key(key: str) -> bool:
    return key in _COMMON or key.startswith("INSTANCE_")


def _instance_dict(instance: Instance | None) -> dict[str, object] | None:
    if instance is None:
        return None
    data = _plain(instance)
    assert isinstance(data, dict)
    return data


def _plain(value: object) -> object:
    """Records, mappings and tuples to JSON-ready plain values."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if hasattr(value, "__record_specs__"):
        return {name: _plain(getattr(value, name)) for name in fields(value)}
    return str(value)
