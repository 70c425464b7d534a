"""The entry point Ganeti runs (through hooks.d/<hpath>-<phase>.d/50-hookpack).

Kept tiny: a hook run with nothing to do must cost a few milliseconds, so this
module decides that from the registry before importing anything else.
"""

from __future__ import annotations

import os
import sys

# Not typing.TYPE_CHECKING: importing typing costs ~3 ms on every hook run; mypy treats
# any constant of this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from hookpack.registry import ActionSpec


def main(config: str | None = None, actions: tuple[ActionSpec, ...] | None = None) -> int:
    """Run the hook; ``actions`` replaces the registry (tests)."""
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
        return 0
    try:
        from hookpack.quickgate import anything_to_do

        if not anything_to_do(specs, os.environ, config):
            return 0
        from hookpack.dispatch import dispatch

        run = dispatch(os.environ, config=config, actions=actions)
    except Exception as err:  # the last guard: Ganeti must never see a traceback
        sys.stderr.write(f"hookpack: internal error, no action ran: {type(err).__name__}: "
                         f"{err}\n")
        return 0
    if run.abandoned:
        # An action thread is still blocked somewhere; leave without waiting for it.
        sys.stderr.flush()
        os._exit(run.exit_code)
    return run.exit_code


if __name__ == "__main__":
    sys.exit(main())
