"""Decide in a few milliseconds whether a hook run has anything to do.

Most hook runs on a node have nothing to do (a disabled action, or an action for
another node role); Ganeti waits for each of them while holding the job's locks. This
gate uses only the registry, the raw TOML and the raw environment; whenever it is
unsure (unreadable config, odd values) it says "yes" and lets the dispatcher, which
reports problems properly, decide.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping

from hookpack.registry import ActionSpec

DEFAULT_CONFIG = "/etc/hookpack/hookpack.toml"


def anything_to_do(specs: list[ActionSpec], environ: Mapping[str, str],
                   config: str | None) -> bool:
    raw = _raw_config(config or environ.get("HOOKPACK_CONFIG") or DEFAULT_CONFIG,
                      required=bool(config or environ.get("HOOKPACK_CONFIG")))
    if raw is None:
        return True
    enabled = [s for s in specs if _enabled(raw, s)]
    if not enabled:
        return False
    if any(not s.roles for s in enabled):
        return True
    from hookpack.roles import roles_from_environ, system_fqdn

    node = raw.get("node", {})
    fqdn = node.get("fqdn") if isinstance(node, dict) else None
    roles = {r.value for r in roles_from_environ(
        environ, fqdn if isinstance(fqdn, str) and fqdn else system_fqdn())}
    return any(roles.intersection(s.roles) for s in enabled)


def _raw_config(path: str, required: bool) -> dict[str, object] | None:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return None if required else {}
    except (OSError, ValueError):
        return None


def _enabled(raw: Mapping[str, object], spec: ActionSpec) -> bool:
    section = raw.get(spec.section, {})
    value = section.get("enabled", spec.enabled_by_default) if isinstance(section, dict) \
        else spec.enabled_by_default
    return value if isinstance(value, bool) else True
