"""Bad input: hypothesis against every parser that reads what Ganeti, an operator or a
tag writer hands hookpack, and hostile instance names/tags end to end.

Contract: a parser either returns or raises one of hookpack's own HookpackError
subclasses (a clean one-line error); anything else (ValueError, KeyError, TypeError,
RecursionError...) is a bug. The environment parser is stricter: it never raises.

The full runs (FULL = 3,000 examples per parser) are marked `slow`; the same
properties run unmarked with FAST examples so the fast subset still covers them.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from hookpack import registry, validate
from hookpack.actions.pinning.topology import parse_cpulist
from hookpack.actions.shaping.model import parse_rate
from hookpack.actions.shaping.policy import Defaults, PolicyStore, from_tags
from hookpack.config import CORE_SCHEMA, load_config
from hookpack.emulator import run_hooks
from hookpack.env import parse_env
from hookpack.errors import HookpackError
from hookpack.roles import resolve_roles
from tests.conftest import load_sample, sample_files

REPO = Path(__file__).resolve().parents[2]
FULL = 3_000  # 10,000 when the bugs in docs/reliability.md were found; CI time
FAST = 300


def fuzz(examples: int):
    """Hypothesis settings: no deadline (a shared 2-core machine), no example database,
    no shrinking (a failure prints its falsifying example all the same)."""
    return settings(max_examples=examples, deadline=None, database=None,
                    phases=(Phase.generate,),
                    suppress_health_check=list(HealthCheck))


def both(prop, *args, **kwargs):
    """The property twice: FULL examples marked slow, FAST examples unmarked."""
    slow = pytest.mark.slow(fuzz(FULL)(given(*args, **kwargs)(prop)))
    return slow, fuzz(FAST)(given(*args, **kwargs)(prop))


# -- strategies --------------------------------------------------------------------

SAMPLE_KEYS = sorted({k for path in sample_files() for k in load_sample(path)[0]})
SAMPLE_ENVS = [load_sample(path)[0] for path in sample_files()]

# Hostile text: traversal, shell metacharacters, control characters, RTL/homoglyphs,
# combining marks, odd unicode digits, NUL.
HOSTILE = ["../", "/", "..", "\x00", "\n", "\r", "\t", ";", "|", "&", "$(", "`", "'", '"',
           " ", "*", "?", "~", "\u202e", "\u200f", "\u0430", "\u0435", "\u0301", "\ufeff",
           "\u2028", "\x85", "\x1b[31m", "²", "\u0661", "\u0663", "-", "=", ":", "%s", "{}", "\\"]
hostile_text = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=8)),
                        max_size=8).map("".join)
numberish = st.one_of(st.integers(-10**20, 10**20).map(str),
                      st.sampled_from(["", "None", "True", "False", " 1 ", "1e3", "0x10",
                                       "1_000", "\u0663", "²", "-0", "9" * 5000, "nan"]))
value_text = st.one_of(st.text(max_size=40), hostile_text, numberish)


@st.composite
def environments(draw):
    """A real sample's keys with random values, plus random GANETI_* and other keys."""
    base = dict(draw(st.sampled_from(SAMPLE_ENVS)))
    for key in draw(st.lists(st.sampled_from(SAMPLE_KEYS), max_size=25)):
        base[key] = draw(value_text)
    for _ in range(draw(st.integers(0, 4))):
        prefix = draw(st.sampled_from(["GANETI_", "GANETI_POST_", "GANETI_INSTANCE_NIC",
                                       "GANETI_INSTANCE_DISK", ""]))
        base[prefix + draw(st.text(max_size=12))] = draw(value_text)
    if draw(st.booleans()):
        base["GANETI_INSTANCE_NIC_COUNT"] = draw(numberish)
        base["GANETI_INSTANCE_DISK_COUNT"] = draw(numberish)
    return base


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(value)


def dump_toml(data: dict) -> str:
    """A minimal TOML writer (no tomli_w here): tables of key = value."""
    lines = []
    for section, body in data.items():
        if isinstance(body, dict):
            lines.append(f"[{_toml_value(section)}]")
            lines += [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in body.items()]
        else:
            lines.insert(0, f"{_toml_value(section)} = {_toml_value(body)}")
    return "\n".join(lines) + "\n"


SECTIONS = [*CORE_SCHEMA, *(spec.section for spec in registry.ACTIONS)]
KEYS = sorted({k for schema in CORE_SCHEMA.values() for k in schema}
              | {"enabled", "uplink", "egress_rate", "max_egress_rate", "reserved_cpus",
                 "name_pattern", "api_key_file", "token_file", "qmp_timeout", "mtu"})
scalars = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(),
                    value_text)
toml_values = st.one_of(scalars, st.lists(scalars, max_size=4),
                        st.dictionaries(st.text(max_size=5), scalars, max_size=3))
config_dicts = st.dictionaries(
    st.one_of(st.sampled_from(SECTIONS), st.text(max_size=10)),
    st.one_of(st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)),
                              toml_values, max_size=6), scalars),
    max_size=5)
toml_text = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(["[hook]", "[paths]", "[shaping]", "[pinning]", "deadline = ",
                              "enabled = true", "= ", '"', "'''", "[[x]]", "\n", "0.5",
                              "-inf", "nan", "1979-05-27", "{a = 1}", "[1, 'a']", "\x00",
                              "[hook.deadline]", "a.b.c = 1"]), max_size=30).map("".join))


def _load_everything(path: Path) -> None:
    """Load the file and validate every action's section, as the dispatcher would."""
    import importlib

    cfg = load_config(path, required=True)
    assert 0.5 <= cfg.deadline <= 600
    for spec in registry.ACTIONS:
        module = importlib.import_module(spec.module)
        cfg.section_enabled(spec.section, spec.enabled_by_default)
        values = cfg.section(spec.section, getattr(module, "SETTINGS", {}))
        if spec.section == "shaping":
            Defaults.from_settings(values)
        if spec.section == "pinning":
            from hookpack.actions.pinning.action import policy_from

            policy_from(values)


# -- environment parser ------------------------------------------------------------

def _env_property(environ):
    env = parse_env(environ)  # must never raise, not even a HookpackError
    json.dumps(env.to_dict())
    _ = env.relocation, env.disk_grow, env.instance_after, env.supported
    for node in ("node1.example.test", "", "\x00"):
        resolve_roles(env, node)
    for warning in env.warnings:
        assert "\n" not in warning and "\x00" not in warning


test_env_parser_full, test_env_parser_fast = both(_env_property, environments())


# -- config parser -----------------------------------------------------------------

def _config_text_property(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "hookpack.toml"
    path.write_text(text)
    path.chmod(0o600)
    with contextlib.suppress(HookpackError):
        _load_everything(path)


def _config_dict_property(tmp_path_factory, data):
    text = dump_toml(data)
    assert tomllib.loads(text) is not None  # our writer writes valid TOML
    _config_text_property(tmp_path_factory, text)


test_config_text_full, test_config_text_fast = both(_config_text_property,
                                                      text=toml_text)
test_config_dict_full, test_config_dict_fast = both(_config_dict_property,
                                                      data=config_dicts)


# -- tag parsers -------------------------------------------------------------------

DEFAULTS = Defaults(egress=parse_rate("100mbit"), ingress=parse_rate("100mbit"),
                    max_egress=parse_rate("200mbit"), max_ingress=parse_rate("100mbit"))
rate_text = st.one_of(
    hostile_text,
    st.builds(lambda n, u: f"{n}{u}", st.one_of(st.integers(-5, 10**9).map(str),
                                                 st.floats().map(repr), hostile_text),
              st.sampled_from(["bit", "kbit", "mbit", "gbit", "tbit", "bps", "kbps", "mbps",
                               "gbps", "tbps", "MBIT", "mbit ", "xbit", ""])))
tag = st.one_of(
    st.builds(lambda d, sep, r: f"hookpack:{d}{sep}{r}",
              st.sampled_from(["egress", "ingress", "Egress", "egres", ""]),
              st.sampled_from([":", "=", "::", ""]), rate_text),
    hostile_text, st.text(max_size=30))
cpulist = st.one_of(
    hostile_text,
    st.lists(st.one_of(st.integers(-3, 70000).map(str),
                       st.builds(lambda a, b: f"{a}-{b}", st.integers(-3, 70000),
                                 st.integers(-3, 70000)),
                       st.builds(lambda a, b, s: f"{a}-{b}:{s}", st.integers(0, 300),
                                 st.integers(0, 300), st.one_of(st.integers(-1, 9).map(str),
                                                                hostile_text))),
             max_size=6).map(",".join))


def _tags_property(tags, rate, cpus):
    policy = from_tags(tags, DEFAULTS)
    # a tag can lower a rate, never raise it above the cap
    assert policy.egress <= DEFAULTS.max_egress and policy.ingress <= DEFAULTS.max_ingress
    for note in policy.notes:  # one printable line: hostile tag text comes back escaped
        assert note.isprintable(), repr(note)
    try:
        parsed = parse_rate(rate)
        assert 1000 <= parsed <= 10**12 // 8
    except HookpackError:
        pass
    with contextlib.suppress(HookpackError):
        assert all(0 <= c < 1 << 16 for c in parse_cpulist(cpus))


test_tag_parsers_full, test_tag_parsers_fast = both(
    _tags_property, tags=st.lists(tag, max_size=6), rate=rate_text, cpus=cpulist)


def _validate_property(text):
    for check in (validate.instance_name, validate.interface_name, validate.device_index):
        try:
            value = check(text)
        except HookpackError:
            continue
        if check is validate.device_index:
            assert 0 <= value <= 63
        else:  # what passes is plain ASCII, no separators or control characters
            assert value.isascii() and value.isprintable()
            assert "/" not in value and value not in (".", "..") and " " not in value


test_validators_full, test_validators_fast = both(
    _validate_property, st.one_of(hostile_text, st.text()))


# -- hostile names and tags, unit level --------------------------------------------

HOSTILE_NAMES = [
    "../../../etc/passwd", "/etc/passwd", "inst1/../../x", "inst1\x00.example.test",
    "inst1\n", "inst1.example.test\n", "a;rm -rf /", "$(touch /tmp/pwned)", "`id`",
    "inst1 example", "-name", "--help", "inst1.example.test\r", "\u202einst1",
    "inst1.ex\u0430mple.test", "inst\u0301.example", "inst\x1b[31m", "..", ".", "",
    "a" * 65536, ("a" * 63 + ".") * 5, "inst|x", "inst&x", "inst>x", "inst*", "~root",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_instance_names_are_rejected_by_validate(name):
    with pytest.raises(HookpackError):
        validate.instance_name(name)
    with pytest.raises(HookpackError):
        PolicyStore(Path("/nonexistent")).path(name)


@pytest.mark.parametrize("value", ["²", "\u0661", "0\n", "-1", "64", "1e1", " 1", "00001"])
def test_odd_device_indexes_are_a_clean_error(value):
    with pytest.raises(HookpackError):
        validate.device_index(value)


@pytest.mark.parametrize("tap", ["tap0\n", "tap0/x", "..", "tap 0", "tap0\x00", "t" * 16])
def test_hostile_interface_names_are_rejected(tap):
    with pytest.raises(HookpackError):
        validate.interface_name(tap)


def test_unicode_superscript_stride_is_a_clean_cpulist_error():
    with pytest.raises(HookpackError):
        parse_cpulist("0-7:²")


# -- hostile names end to end: the real entries, the real filesystem ---------------

# (No NUL here: execve cannot pass one in an environment value; the unit tests above
# cover NUL in names that come from elsewhere.)
E2E_NAMES = ["../../escape", "/abs/escape", "inst1.example.test\n", "a;touch pwn",
             "$(touch pwn)", "\u202eescape", "inst1.ex\u0430mple.test", "a" * 65536]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _lines_by_action(output: str) -> dict[str, str]:
    """The entry's output, one line per action: {action: line}; every line is one."""
    out: dict[str, str] = {}
    for line in output.splitlines():
        assert line.startswith("hookpack ") and ": " in line, line
        action = line.split(":", 1)[0].removeprefix("hookpack ")
        assert action not in out, output
        out[action] = line
    return out


REFUSED = "is not a valid host name; refusing to use it"


@pytest.mark.parametrize("name", E2E_NAMES, ids=range(len(E2E_NAMES)))
def test_hostile_names_never_reach_a_path_or_a_command(name, hooks, sample, tmp_path):
    """disk-grow (pid file, instance-disks link, QMP socket path) and record, both enabled
    under their real section names, run by the real entries with a hostile
    GANETI_INSTANCE_NAME: disk-grow refuses the name with one clean line, record keeps it
    as data (JSON) in its own file; nothing else is created, nothing from the name, and
    no process runs a command built from it."""
    environ, node = sample("disk-grow-post-node1")
    environ = {k: v.replace("inst1.example.test", name) for k, v in environ.items()}
    (tmp_path / "kvm_dir" / "pid").mkdir(parents=True)
    (tmp_path / "kvm_dir" / "ctrl").mkdir(parents=True)
    spool = tmp_path / "spool_dir"
    record = tmp_path / "record.jsonl"
    root = hooks(f'[node]\nfqdn = "{node}"\n[disk_grow]\nenabled = true\n'
                 f'[record]\nenabled = true\npath = "{record}"\n')
    before = _tree(tmp_path)
    [result] = [r for r in run_hooks(root, "disk-grow", "post", environ)
                if r.name.endswith("50-hookpack")]
    assert result.exit_code == 0
    assert "Traceback" not in result.output
    lines = _lines_by_action(result.output)
    # both actions ran (a config the loader refused would give one "no action ran" line)
    assert set(lines) == {"disk-grow", "record"}, result.output
    assert ": failed: instance name " in lines["disk-grow"] and REFUSED in lines["disk-grow"]
    assert ": changed: recorded to " in lines["record"], lines["record"]
    [entry] = [json.loads(line) for line in record.read_text().splitlines()]
    assert entry["instance"] == name  # kept as data, byte for byte
    created = _tree(tmp_path) - before
    assert all(c.startswith(("state_dir", "run_dir")) or c == "record.jsonl"
               for c in created), created
    assert not any("escape" in c or "pwn" in c or "\n" in c for c in _tree(tmp_path))
    assert not spool.exists() or not any(spool.iterdir())
    assert not Path("pwn").exists() and not Path("/pwn").exists()


_EMULATE_IN_OWN_NETNS = """
import json, sys
from pathlib import Path
from hookpack.emulator import run_hooks
root, hpath, environ = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
print(json.dumps([[r.name, r.exit_code, r.output] for r in
                  run_hooks(Path(root), hpath, "post", environ)]))
"""


@pytest.mark.netns
@pytest.mark.parametrize(("hpath", "actions"), [("instance-start", {"pinning", "shaping"}),
                                                ("instance-migrate", {"announce", "shaping"})])
@pytest.mark.parametrize("name", ["../../escape", "a;touch pwn", "\u202eescape"])
def test_hostile_names_in_shaping_pinning_announce_are_refused(name, hpath, actions, hooks,
                                                               sample, tmp_path):
    """The entries run in a network namespace of their own (``unshare -n``) whose uplink
    exists (its loopback), so shaping gets past its node checks to the instance: every
    action that runs there reaches the hostile name and refuses it, nothing is created
    from it."""
    environ, node = sample(f"{hpath}-post-node1")
    old = environ["GANETI_INSTANCE_NAME"]
    environ = {k: v.replace(old, name) for k, v in environ.items()}
    url = tmp_path / "webhook.url"
    url.write_text("http://127.0.0.1:9/fuzz-webhook-secret-0001\n")
    url.chmod(0o600)
    root = hooks(
        f'[node]\nfqdn = "{node}"\n[pinning]\nenabled = true\n'
        '[shaping]\nenabled = true\nuplink = "lo"\n'
        f'[announce]\nenabled = true\nwebhook_url_file = "{url}"\n'
        'allow_insecure_hosts = ["127.0.0.1"]\n')
    before = _tree(tmp_path)
    run = subprocess.run(["unshare", "-n", sys.executable, "-c", _EMULATE_IN_OWN_NETNS,
                          str(root), hpath, json.dumps(environ)], capture_output=True,
                         text=True, timeout=60, check=False, cwd=REPO)
    assert run.returncode == 0, run.stderr
    [(_, code, output)] = [r for r in json.loads(run.stdout) if r[0].endswith("50-hookpack")]
    assert "Traceback" not in output and code == 0, output
    lines = _lines_by_action(output)
    assert set(lines) == actions, output
    for line in lines.values():
        assert REFUSED in line, line
    assert not any("escape" in c or "pwn" in c for c in _tree(tmp_path) - before)


def test_roles_with_an_empty_node_name_in_a_migrate_post_hook(sample):
    """Found by test_env_parser: roles_from_values read `target` before assignment when
    the node name was empty in a migrate/failover post hook (UnboundLocalError)."""
    environ, _ = sample("instance-migrate-post-node1")
    assert resolve_roles(parse_env(environ), "") == frozenset({"other"})
