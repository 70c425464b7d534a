"""Pre-hook gate: veto instance-add/rename when the name breaks the site's rules."""

from __future__ import annotations

import re

from hookpack.action import ActionContext
from hookpack.config import Field
from hookpack.errors import ConfigError
from hookpack.result import Result

SETTINGS = {
    "name_pattern": Field(str, "", "Regular expression every instance name must match "
                          "(whole name). Empty: any name."),
}


def run(ctx: ActionContext) -> Result:
    name = _new_name(ctx)
    if not name:
        return Result.skipped("no instance name in the environment")
    pattern = ctx.settings["name_pattern"]
    if not pattern:
        return Result.nochange("no name rule configured")
    try:
        rule = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"not a valid regular expression: {err}", key="policy.name_pattern",
                          path=str(ctx.config.path)) from None
    if not rule.fullmatch(name):
        return Result.veto(f"instance name {name!r} does not match the site rule '{pattern}'")
    return Result.nochange(f"name {name!r} allowed")


def _new_name(ctx: ActionContext) -> str:
    if ctx.env.hpath == "instance-rename":
        return ctx.env.pre.get("INSTANCE_NEW_NAME") or ""
    return ctx.env.instance.name if ctx.env.instance else ""
