"""The entry point Ganeti runs (through hooks.d/<hpath>-<phase>.d/50-hookpack).

Kept tiny: a hook run with nothing to do must cost a few milliseconds, so this
module decides that from the registry before importing anything else.
"""

from __future__ import annotations

import os
import sys


def main(config: str | None = None) -> int:
    from hookpack import registry

    hpath = os.environ.get("GANETI_HOOKS_PATH", "")
    phase = os.environ.get("GANETI_HOOKS_PHASE", "")
    specs = registry.candidates(hpath, phase)
    if not specs:
        return 0
    try:
        from hookpack.quickgate import anything_to_do

        if not anything_to_do(specs, os.environ, config):
            return 0
        from hookpack.dispatch import dispatch

        run = dispatch(os.environ, config=config)
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
