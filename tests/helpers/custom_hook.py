"""A hook entry whose registry is given by the test (for behaviour no real action has).

Used as an executable hook script by the emulator tests: it dispatches with the
actions named in HOOKPACK_TEST_ACTIONS (module:phase pairs) instead of the real
registry, so the deadline and isolation are tested in a real process as Ganeti runs it.
"""

from __future__ import annotations

import sys

from hookpack import registry
from hookpack.hook import main as hook_main


def main() -> int:
    config, actions_spec = sys.argv[1], sys.argv[2]
    actions = []
    for item in actions_spec.split(","):
        module, phase = item.split(":")
        name = module.rsplit(".", 1)[1]
        actions.append(registry.ActionSpec(name, module, registry.GANETI_HPATHS, (phase,), (),
                                           name, enabled_by_default=True))
    return hook_main(config, tuple(actions))


if __name__ == "__main__":
    sys.exit(main())
