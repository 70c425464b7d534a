"""Per-instance rates: config defaults, lowered (never raised) by instance tags, persisted.

Tags: ``hookpack:egress:50mbit`` and ``hookpack:ingress:20mbit`` (Ganeti refuses "=" in
tags; ``hookpack:egress=50mbit`` is read too). Users who can set tags
must not be able to raise their own limit, so a tag is capped by ``max_egress_rate`` /
``max_ingress_rate``. A malformed tag is ignored (noted), never an error: the instance
keeps the default. Other ``hookpack:`` tags belong to other actions and are left alone.

``hookpack:egress-scope:instance`` puts all NICs of the instance under one egress limit
(a parent class per instance) instead of one limit per NIC. Like a rate, the tag can
only narrow: with ``egress_scope = "instance"`` in the config, ``...:nic`` (which would
give the instance one limit per NIC) is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from hookpack import validate
from hookpack.actions.shaping.model import parse_rate
from hookpack.errors import BadInput, ConfigError
from hookpack.record import field, record

# Ganeti accepts only [\w.+*/:@-] in tags (objects.TaggableObject.VALID_TAG_RE): no "=".
# So the working form is hookpack:egress:50mbit; hookpack:egress=50mbit (the issue's
# spelling, which gnt-instance add-tags refuses) is read too.
_TAG = re.compile(r"hookpack:(egress|ingress)[=:](.*)")
_SCOPE_TAG = re.compile(r"hookpack:egress-scope[=:](.*)")
SCOPES = ("nic", "instance")


def _ours(tag: str) -> bool:
    return bool(_TAG.fullmatch(tag) or _SCOPE_TAG.fullmatch(tag))


@record(frozen=True)
class Defaults:
    egress: int
    ingress: int
    max_egress: int
    max_ingress: int
    scope: str = "nic"  # egress limit per "nic" or per "instance"

    @classmethod
    def from_settings(cls, settings: Mapping[str, object]) -> Defaults:
        def rate(key: str, fallback: str = "") -> int:
            text = str(settings.get(key) or settings.get(fallback) or "")
            try:
                return parse_rate(text)
            except BadInput as err:
                raise ConfigError(str(err), key=f"shaping.{key}") from None
        scope = str(settings.get("egress_scope") or "nic")
        if scope not in SCOPES:
            raise ConfigError(f"egress_scope {scope!r} is not one of {', '.join(SCOPES)}",
                              key="shaping.egress_scope")
        return cls(rate("egress_rate"), rate("ingress_rate"),
                   rate("max_egress_rate", "egress_rate"),
                   rate("max_ingress_rate", "ingress_rate"), scope)


@record(frozen=True)
class Policy:
    egress: int
    ingress: int
    notes: tuple[str, ...] = field(default=(), compare=False)
    scope: str = "nic"

    def to_json(self) -> dict[str, int | str]:
        return {"egress": self.egress, "ingress": self.ingress, "egress_scope": self.scope}


def from_tags(tags: Iterable[str], defaults: Defaults) -> Policy:
    """The instance's policy: defaults, each lowered by its tag, capped by the maximum."""
    wanted: dict[str, int] = {}
    notes: list[str] = []
    scope = defaults.scope
    for tag in tags:
        scoped = _SCOPE_TAG.fullmatch(tag)
        if scoped:
            if scoped[1] == "instance":
                scope = "instance"
            elif scoped[1] != "nic":
                notes.append(f"tag ignored: egress-scope {scoped[1]!r} is not nic or instance")
            elif defaults.scope == "instance":
                notes.append("tag ignored: egress-scope nic cannot widen the configured "
                             "per-instance limit")
            continue
        match = _TAG.fullmatch(tag)
        if not match:
            continue
        direction, value = match.groups()
        try:
            rate = parse_rate(value)
        except BadInput as err:
            notes.append(f"tag ignored: {err}")
            continue
        wanted[direction] = min(rate, wanted.get(direction, rate))
    egress = min(wanted.get("egress", defaults.egress), defaults.max_egress)
    ingress = min(wanted.get("ingress", defaults.ingress), defaults.max_ingress)
    for direction, asked, cap in (("egress", wanted.get("egress"), defaults.max_egress),
                                  ("ingress", wanted.get("ingress"), defaults.max_ingress)):
        if asked is not None and asked > cap:
            notes.append(f"{direction} tag capped at the maximum")
    return Policy(egress, ingress, tuple(notes), scope)


class PolicyStore:
    """Last known tags per instance, so a reconcile with no hook environment knows them."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "shaping" / "tags"
        self._swept = False

    def path(self, instance: str) -> Path:
        return self.dir / validate.instance_name(instance)

    def save(self, instance: str, tags: Iterable[str]) -> bool:
        """Store ``tags`` (only ours); True when the file changed."""
        ours = sorted(t for t in tags if _ours(t))
        path = self.path(instance)
        text = json.dumps(ours) + "\n"
        self._sweep()
        try:
            if path.read_text() == text:
                return False
        except OSError:
            pass
        self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        # a short temporary name: an instance name may take 253 of the 255 bytes
        import tempfile  # only when tags change: kept off the hook's hot path

        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tags.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return True

    def _sweep(self) -> None:
        """Remove the temporary files of a save killed between its write and its rename
        (kill -9). Saves run under the node's shaping lock: any temporary file found here
        is a dead writer's. Once per run: a whole-node run saves every instance's tags,
        and a listing per save would read the directory once per instance."""
        if self._swept:
            return
        self._swept = True
        with contextlib.suppress(OSError):
            for stale in self.dir.glob(".tags.*"):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def load(self, instance: str) -> list[str]:
        try:
            data = json.loads(self.path(instance).read_text())
        except (OSError, ValueError):
            return []
        return [t for t in data if isinstance(t, str)] if isinstance(data, list) else []

    def forget(self, instance: str) -> None:
        with contextlib.suppress(OSError):
            self.path(instance).unlink()
