"""The explicit list of actions and where each one acts.

Kept free of imports beyond the standard library's basics: the hook entry point
reads it before anything else to decide, in a few milliseconds, that most hook runs
have nothing to do. Adding an action = its folder hookpack/actions/<name>/ (the entry
module action.py: SETTINGS, run) + one line in ACTIONS (docs/development.md).
"""

from __future__ import annotations

# Every hooks path Ganeti 3.0 knows (HPATH of lib/cmdlib/*.py at v3.0.2, plus
# config-update from src/Ganeti/Constants.hs).
GANETI_HPATHS = (
    "cluster-destroy", "cluster-init", "cluster-modify", "cluster-rename", "cluster-verify",
    "config-update", "disk-grow",
    "group-add", "group-evacuate", "group-modify", "group-remove", "group-rename",
    "instance-add", "instance-change-group", "instance-export", "instance-failover",
    "instance-migrate", "instance-modify", "instance-move", "instance-reboot",
    "instance-recreate-disks", "instance-reinstall", "instance-remove", "instance-rename",
    "instance-start", "instance-stop",
    "mirrors-replace",
    "network-add", "network-connect", "network-disconnect", "network-modify", "network-remove",
    "node-add", "node-migrate", "node-modify", "node-remove",
)
INSTANCE_HPATHS = (*(h for h in GANETI_HPATHS if h.startswith("instance-")),
                   "disk-grow", "mirrors-replace")
PHASES = ("pre", "post")

# hpaths whose instance may change where it runs or whether its QEMU runs.
INSTANCE_LIFECYCLE = ("instance-start", "instance-stop", "instance-reboot",
                      "instance-migrate", "instance-failover", "instance-move",
                      "instance-modify", "instance-remove", "instance-add")


class ActionSpec:
    """One action: which hooks it runs on, on which node roles, and its config section.

    A plain class (not a NamedTuple or dataclass): importing typing or dataclasses
    costs milliseconds on every hook run, most of which have nothing to do.
    """

    __slots__ = ("cli", "enabled_by_default", "hpaths", "module", "name", "phases", "roles",
                 "section")

    def __init__(self, name: str, module: str, hpaths: tuple[str, ...],
                 phases: tuple[str, ...], roles: tuple[str, ...], section: str,
                 enabled_by_default: bool = False, cli: bool = False) -> None:
        self.name = name
        self.module = module  # the action's entry module: hookpack.actions.<name>.action
        self.hpaths = hpaths
        self.phases = phases
        self.roles = roles  # empty: on every node the hook runs on
        self.section = section  # config section; `enabled` there switches the action
        self.enabled_by_default = enabled_by_default
        self.cli = cli  # the module adds `hookpack <name> ...` commands (add_cli)

    def __repr__(self) -> str:
        return f"ActionSpec({self.name!r})"

    def matches(self, hpath: str, phase: str) -> bool:
        return hpath in self.hpaths and phase in self.phases


ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec("record", "hookpack.actions.record.action", GANETI_HPATHS, PHASES, (), "record"),
    ActionSpec("policy", "hookpack.actions.policy.action", ("instance-add", "instance-rename"),
               ("pre",), ("master",), "policy"),
    ActionSpec("dns", "hookpack.actions.dns.action", ("instance-add", "instance-rename",
               "instance-remove", "instance-modify"), ("post",), ("master",), "dns", cli=True),
    ActionSpec("netbox", "hookpack.actions.netbox.action", ("instance-add", "instance-rename",
               "instance-remove", "instance-modify"), ("post",), ("master",), "netbox", cli=True),
    ActionSpec("announce", "hookpack.actions.announce.action", ("instance-migrate",
               "instance-failover"), ("pre", "post"), ("master",), "announce", cli=True),
    # instance-add too: an instance added with --start gets no instance-start hook.
    ActionSpec("pinning", "hookpack.actions.pinning.action", ("instance-add", "instance-start",
               "instance-reboot", "instance-migrate", "instance-failover"), ("post",),
               ("host",), "pinning", cli=True),
    ActionSpec("shaping", "hookpack.actions.shaping.action", ("instance-add", "instance-start",
               "instance-stop", "instance-reboot", "instance-migrate", "instance-failover",
               "instance-move", "instance-modify", "instance-remove"), ("post",),
               ("primary", "secondary", "source", "target", "host"), "shaping", cli=True),
    ActionSpec("disk-grow", "hookpack.actions.disk_grow.action", ("disk-grow",), ("post",),
               ("primary",), "disk_grow", enabled_by_default=True, cli=True),
)


def candidates(hpath: str, phase: str,
               actions: tuple[ActionSpec, ...] = ACTIONS) -> list[ActionSpec]:
    """The actions registered for this hook path and phase (phase in either case)."""
    phase = phase.strip().lower()
    return [spec for spec in actions if spec.matches(hpath, phase)]


def layout(actions: tuple[ActionSpec, ...] = ACTIONS) -> list[str]:
    """The `<hpath>-<phase>.d` directories that need an entry script."""
    return sorted({f"{h}-{p}.d" for spec in actions for h in spec.hpaths for p in spec.phases})


def by_name(name: str, actions: tuple[ActionSpec, ...] = ACTIONS) -> ActionSpec | None:
    return next((spec for spec in actions if spec.name == name), None)
