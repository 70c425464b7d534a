"""The hook run: what the entry scripts (hooks.d/<hpath>-<phase>.d/50-hookpack) call.

Kept tiny: a hook run with nothing to do must cost a few milliseconds, so this
module decides that from the registry before importing anything else. The entry
(hookpack/entryscript.py) calls `entry`, which answers with the exit code, or with
"notrun <why>" when hookpack could not run at all (the entry reports that in one line
and applies hook.pre_fail_closed); `main` is the same for `hookpack hook`.
"""

from __future__ import annotations

import os
import sys

# Not typing.TYPE_CHECKING: importing typing costs ~3 ms on every hook run; mypy treats
# any constant of this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from hookpack.registry import ActionSpec

NOT_RUN = "notrun "


def entry(config: str | None = None, actions: tuple[ActionSpec, ...] | None = None) -> str:
    """The exit code as text, or "notrun <why>". The caller ends the process at once
    (os._exit): an abandoned action thread must not hold it."""
    code, why, _ = _run(config, actions)
    return NOT_RUN + why if why else str(code)


def main(config: str | None = None, actions: tuple[ActionSpec, ...] | None = None) -> int:
    """Run the hook; ``actions`` replaces the registry (tests)."""
    code, why, abandoned = _run(config, actions)
    if why:
        sys.stderr.write(f"hookpack: no action ran: {why}\n")
    if abandoned:
        # An action thread is still blocked somewhere; leave without waiting for it.
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(config: str | None,
         actions: tuple[ActionSpec, ...] | None) -> tuple[int, str, bool]:
    """(exit code, why no action could run or "", an action thread was abandoned)."""
    from hookpack import registry

    # Files and directories hookpack creates (state, run stats, spool, locks, parents
    # made by mkdir(parents=True)) take their mode from the umask: never let a loose one
    # (000 from an operator's shell or a unit) make them group/other-writable.
    os.umask(os.umask(0o022) | 0o022)
    actions = registry.ACTIONS if actions is None else actions
    hpath = os.environ.get("GANETI_HOOKS_PATH", "")
    phase = os.environ.get("GANETI_HOOKS_PHASE", "")
    specs = registry.candidates(hpath, phase, actions)
    if not specs:
        return 0, "", False
    try:
        from hookpack.quickgate import anything_to_do

        if not anything_to_do(specs, os.environ, config):
            return 0, "", False
        from hookpack.config import config_path, load_config
        from hookpack.errors import ConfigError

        path, required = config_path(config)
        try:
            load_config(path, required=required)
        except ConfigError as err:
            return 0, str(err), False
        from hookpack.dispatch import dispatch

        run = dispatch(os.environ, config=config, actions=actions)
    except Exception as err:  # the last guard: Ganeti must never see a traceback
        return 0, f"internal error: {type(err).__name__}: {err}", False
    return run.exit_code, "", run.abandoned


if __name__ == "__main__":
    sys.exit(main())
