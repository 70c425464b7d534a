"""dns action's pure parts: zones, reverse names, NIC addresses."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from hookpack.actions.dns.action import fqdn, instance_ips, ptr_name, zone_for
from hookpack.env import parse_env
from tests.helpers.ganeti_env import instance_env

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


def test_longest_zone_wins_and_case_and_dots_do_not_matter():
    zones = ["example.test", "Sub.Example.Test.", "test"]
    assert zone_for("WEB1.sub.example.test", zones) == "sub.example.test."
    assert zone_for("web1.example.test.", zones) == "example.test."
    assert zone_for("web1.notexample.org", zones) is None
    assert zone_for("web1.badexample.test", ["example.test"]) is None  # label boundary
    assert zone_for("example.test", ["example.test"]) == "example.test."


@given(st.lists(LABEL, min_size=1, max_size=4), st.lists(LABEL, min_size=1, max_size=3))
def test_a_name_is_in_a_zone_exactly_when_it_ends_with_its_labels(host, zone_labels):
    name, zone = ".".join(host + zone_labels), ".".join(zone_labels)
    assert zone_for(name, [zone]) == fqdn(zone)
    other = "x" + zone_labels[-1]
    assert zone_for(name, [other]) is None


def test_reverse_names():
    assert ptr_name("198.51.100.21") == "21.100.51.198.in-addr.arpa."
    name = ptr_name("2001:db8::1")
    assert name.endswith(".8.b.d.0.1.0.0.2.ip6.arpa.") and name.count(".") == 34
    assert zone_for(name, ["8.b.d.0.1.0.0.2.ip6.arpa"]) == "8.b.d.0.1.0.0.2.ip6.arpa."


@given(st.ip_addresses())
def test_every_address_has_a_reverse_name_that_maps_back(ip):
    name = ptr_name(str(ip))
    if ip.version == 4:
        assert ipaddress.ip_address(".".join(reversed(name.split(".")[:4]))) == ip
    else:
        nibbles = "".join(reversed(name.split(".")[:32]))
        assert ipaddress.IPv6Address(int(nibbles, 16)) == ip


def test_instance_ips_normalized_invalid_left_out_and_deduplicated():
    env = parse_env(instance_env("instance-add", "post", "inst1.example.test",
                                 ["198.51.100.21", "pool", "", "2001:DB8:0::5",
                                  "198.51.100.21", "None"]))
    assert instance_ips(env.instance_after) == ["198.51.100.21", "2001:db8::5"]
    assert instance_ips(None) == []
