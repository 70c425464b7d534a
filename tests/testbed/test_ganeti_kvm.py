"""The QEMU arguments and runtime file, compared with what Ganeti 3.0.2 / 3.1.1 produce."""

import json
from pathlib import Path

import pytest
from vmtestbed import ganeti_kvm
from vmtestbed.disks import DiskSpec, FileDisk, LoopDisk
from vmtestbed.ganeti_kvm import NicSpec, RuntimeLayout

UUID = "932df160-7a22-4067-a566-7e0ca8386133"


def test_device_ids_are_ganetis():
    # the example from hv_kvm._GenerateDeviceKVMId's docstring
    assert DiskSpec(FileDisk(), uuid=UUID).kvm_id == "disk-932df160-7a22-4067"
    assert NicSpec(uuid=UUID).kvm_id == "nic-932df160-7a22-4067"


def test_pci_slots_disks_first_then_nics():
    disks, nics = [DiskSpec(), DiskSpec()], [NicSpec()]
    disk_info, nic_info = ganeti_kvm.assign_hvinfo(disks, nics)
    assert [d["addr"] for d in disk_info] == ["0xc", "0xd"]
    assert nic_info == [{"driver": "virtio-net-pci", "id": nics[0].kvm_id, "bus": "pci.0",
                         "addr": "0xe"}]


@pytest.mark.parametrize(("variant", "backend", "expected"), [
    ("3.0", FileDisk(), [
        "-device", "virtio-blk-pci,id=disk-932df160-7a22-4067,bus=pci.0,addr=0xc,"
                   "drive=disk-932df160-7a22-4067",
        "-drive", "file=/r/instance-disks/i:0,format=raw,if=none,aio=threads,"
                  "id=disk-932df160-7a22-4067,auto-read-only=off"]),
    ("3.1", LoopDisk(), [
        "-device", "virtio-blk-pci,id=disk-932df160-7a22-4067,bus=pci.0,addr=0xc,"
                   "drive=disk-932df160-7a22-4067,write-cache=on",
        "-blockdev", "driver=raw,node-name=disk-932df160-7a22-4067,discard=ignore,"
                     "cache.direct=off,cache.no-flush=off,file.driver=host_device,"
                     "file.filename=/r/instance-disks/i:0,file.aio=threads,auto-read-only=off"]),
])
def test_disk_arguments(variant, backend, expected):
    disk = DiskSpec(backend, uuid=UUID)
    (hvinfo,), _ = ganeti_kvm.assign_hvinfo([disk], [])
    layout = RuntimeLayout(Path("/r"))
    assert ganeti_kvm.disk_args(variant, disk, hvinfo, layout.disk_link("i", 0)) == expected


def test_runtime_file_has_the_ids_hooks_look_up():
    layout = RuntimeLayout(Path("/r"))
    disk, nic = DiskSpec(FileDisk(size_mib=64), uuid=UUID), NicSpec(ip="192.0.2.10/24")
    disk_info, nic_info = ganeti_kvm.assign_hvinfo([disk], [nic])
    cmd = ["qemu-system-x86_64", "-name", "i"]
    text = ganeti_kvm.runtime_json(layout, "i", cmd, [disk], disk_info, [nic], nic_info,
                                   {"cpu_mask": "all"})
    assert text.endswith("\n")
    kvm_cmd, nics, hvparams, disks = json.loads(text)
    assert kvm_cmd == cmd and hvparams == {"cpu_mask": "all"}
    assert nics[0]["hvinfo"]["id"] == nic.kvm_id and nics[0]["ip"] == "192.0.2.10"
    assert nics[0]["nicparams"] == {"mode": "bridged", "link": "br0", "vlan": ""}
    (disk_dict, link, uri), = disks
    assert (disk_dict["hvinfo"]["id"], disk_dict["size"], link, uri) == (
        "disk-932df160-7a22-4067", 64, "/r/instance-disks/i:0", None)


def test_kernel_command_line():
    nics = [NicSpec(ip="192.0.2.10/24"), NicSpec(ip=None)]
    assert ganeti_kvm.kernel_append("web1.example.test", nics, "hp.gw=192.0.2.1") == (
        "root=/dev/vda1 ro quiet cryptomgr.notests hp.hostname=web1 hp.ip=192.0.2.10/24,- "
        "hp.gw=192.0.2.1 console=ttyS0,38400")
