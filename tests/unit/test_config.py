from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookpack.config import Field, load_config, read_secret, validate_section
from hookpack.errors import ConfigError, HookpackError


def test_missing_default_file_means_defaults(tmp_path):
    cfg = load_config(tmp_path / "absent.toml")
    assert cfg.path is None and cfg.deadline == 15.0
    assert str(cfg.path_of("kvm_dir")) == "/var/run/ganeti/kvm-hypervisor"


def test_missing_named_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="absent.toml: file not found"):
        load_config(tmp_path / "absent.toml", required=True)


def test_errors_name_file_key_and_what_is_allowed(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[hook]\ndeadlin = 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: hook: unknown key(s) deadlin; allowed: deadline, "
                              "post_failure_exit_code, pre_fail_closed")


@pytest.mark.parametrize(("text", "message"), [
    ("[hook]\ndeadline = 'x'", "hook.deadline: must be a number, not str"),
    ("[hook]\ndeadline = 0.1", "hook.deadline: 0.1 is below the minimum 0.5"),
    ("[hook]\ndeadline = true", "hook.deadline: must be a number, not a boolean"),
    ("[log]\nsyslog_facility = 'kern'", "log.syslog_facility: 'kern' is not one of"),
    ("hook = 3", "hook: must be a table"),
])
def test_type_and_range_errors(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(path)


def test_integer_accepted_for_float(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[hook]\ndeadline = 3\n")
    assert load_config(path).deadline == 3.0


def test_secret_in_a_readable_file_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[x]\ntoken = 'hunter2hunter2'\n")
    path.chmod(0o644)
    schema = {"token": Field(str, "", "a token", secret=True)}
    with pytest.raises(ConfigError, match="holds secrets but group or others can read it"):
        load_config(path).section("x", schema)
    path.chmod(0o600)
    assert load_config(path).section("x", schema)["token"] == "hunter2hunter2"


def test_read_secret_checks_mode(tmp_path):
    secret = tmp_path / "s"
    secret.write_text("abc\n")
    secret.chmod(0o640)
    with pytest.raises(ConfigError, match="accessible by group or others"):
        read_secret(secret)
    secret.chmod(0o600)
    assert read_secret(secret) == "abc"


def test_unreadable_config_is_a_clear_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xff\xfe[hook]")
    with pytest.raises(ConfigError, match="not valid TOML|cannot read"):
        load_config(path)


_TOML_VALUES = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
                         st.booleans(), st.lists(st.integers(), max_size=3))


@settings(max_examples=1000, deadline=None)
@given(st.dictionaries(st.sampled_from(["deadline", "post_failure_exit_code",
                                        "pre_fail_closed", "x"]), _TOML_VALUES))
def test_validation_raises_only_config_errors(raw):
    from hookpack.config import CORE_SCHEMA
    with contextlib.suppress(HookpackError):
        validate_section("hook", raw, CORE_SCHEMA["hook"], "f")
