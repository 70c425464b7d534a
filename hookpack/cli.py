"""The `hookpack` command."""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hookpack import __version__, registry
from hookpack.errors import HookpackError

if TYPE_CHECKING:
    from hookpack.config import Config

Handler = Callable[[argparse.Namespace], int]


def run() -> int:
    """The `hookpack` process (console script, ``python -m hookpack``, the .deb's command):
    ``main``, then nothing left for the interpreter's last garbage collection, which
    walks every object the run made (a 1000-tap apply makes tens of thousands) to free
    memory the process gives back anyway as it ends. atexit handlers and the flush of
    stdout and stderr still run. Not in ``main``: tests call it in one long process."""
    code = main()
    gc.freeze()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["hook"] and len(args) <= 3:
        return _hook_fast(args)  # hook.main sets the umask itself
    os.umask(os.umask(0o022) | 0o022)  # as in hook.main: never group/other-writable files
    parser = _parser_for(args)
    ns = parser.parse_args(args)
    handler: Handler | None = getattr(ns, "handler", None)
    if handler is None:
        build_parser().print_help()  # every command, not only the one named
        return 2
    try:
        return handler(ns)
    except HookpackError as err:
        print(f"hookpack: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _hook_fast(args: list[str]) -> int:
    # `hookpack hook [--config PATH]` skips argparse: it is on Ganeti's hot path.
    from hookpack.hook import main as hook_main

    config = None
    if len(args) == 3 and args[1] == "--config":
        config = args[2]
    elif len(args) == 2 and args[1].startswith("--config="):
        config = args[1].split("=", 1)[1]
    elif len(args) != 1:
        print("usage: hookpack hook [--config PATH]", file=sys.stderr)
        return 2
    return hook_main(config)


def _parser_for(args: list[str]) -> argparse.ArgumentParser:
    """The parser for ``args``. A command of one action (``hookpack shaping apply --all``,
    run by a timer on every node) builds that action's parser alone: the others' imports
    would cost more than the command's own work on a small node."""
    spec = next((s for s in registry.ACTIONS if s.cli and args[:1] == [s.name]), None)
    if spec is not None:
        parser, sub = _top_parser()
        importlib.import_module(spec.module).add_cli(sub)
        if spec.name in sub.choices:
            return parser
    return build_parser()


def _top_parser() -> tuple[argparse.ArgumentParser,
                          argparse._SubParsersAction[argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="hookpack", description="Ganeti KVM hook pack.")
    parser.add_argument("--version", action="version", version=f"hookpack {__version__}")
    return parser, parser.add_subparsers(metavar="COMMAND")


def build_parser() -> argparse.ArgumentParser:
    parser, sub = _top_parser()

    p = sub.add_parser("hook", help="run the actions for the hook Ganeti is running (entry)")
    _config_arg(p)

    p = sub.add_parser("env", help="print a hook environment parsed, as JSON")
    p.add_argument("file", nargs="?", help="KEY=VALUE dump (default: this environment)")
    p.add_argument("--fqdn", help="resolve roles for this node name (default: this node)")
    _json_arg(p, "(always JSON; accepted like on every command)")
    _config_arg(p)
    p.set_defaults(handler=cmd_env)

    config = sub.add_parser("config", help="configuration").add_subparsers(metavar="ACTION")
    p = config.add_parser("check", help="validate the configuration file")
    _json_arg(p)
    _config_arg(p)
    p.set_defaults(handler=cmd_config_check)
    p = config.add_parser("reference", help="print the configuration reference (Markdown)")
    p.add_argument("--write", metavar="PATH", help="write it to PATH instead")
    p.set_defaults(handler=cmd_config_reference)

    hooks = sub.add_parser("hooks", help="Ganeti hooks tree").add_subparsers(metavar="ACTION")
    p = hooks.add_parser("install", help="lay the entry scripts out into a hooks tree")
    p.add_argument("--root", default="/etc/ganeti/hooks", help="Ganeti's hooks directory")
    p.add_argument("--python", help="interpreter for the entry scripts (default: this one)")
    p.add_argument("--entry-config", help="config file the entry scripts pass to hookpack")
    p.add_argument("--dry-run", action="store_true", help="only say what would change")
    _json_arg(p)
    p.set_defaults(handler=cmd_hooks_install)
    p = hooks.add_parser("uninstall", help="remove hookpack's entries (and only those)")
    p.add_argument("--root", default="/etc/ganeti/hooks")
    _json_arg(p)
    p.set_defaults(handler=cmd_hooks_uninstall)

    p = sub.add_parser("doctor", help="check that this node is ready (exit 1 on a failure)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--strict", action="store_true", help="exit 1 on a warning too")
    _config_arg(p)
    p.set_defaults(handler=cmd_doctor)

    p = sub.add_parser("metrics", help="Prometheus metrics (node_exporter textfile format)")
    p.add_argument("--write", metavar="PATH", help="write them atomically to PATH (e.g. "
                   "/var/lib/prometheus/node-exporter/hookpack.prom)")
    _config_arg(p)
    p.set_defaults(handler=cmd_metrics)

    p = sub.add_parser("status", help="per instance: shaping, pinning, disks, last hook runs")
    p.add_argument("instance", nargs="?", help="one instance (default: all on this node)")
    p.add_argument("--json", action="store_true", help="machine-readable output "
                   "(schema: docs/monitoring.md)")
    _config_arg(p)
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("actions", help="list the actions and where they act")
    _json_arg(p)
    _config_arg(p)
    p.set_defaults(handler=cmd_actions)

    from hookpack import hookserver, jobwatch

    jobwatch.add_cli(sub)
    hookserver.add_cli(sub)

    for spec in registry.ACTIONS:
        if spec.cli:
            importlib.import_module(spec.module).add_cli(sub)
    return parser


def _config_arg(parser: argparse.ArgumentParser) -> None:
    from hookpack.config import add_config_arg

    add_config_arg(parser)


def _json_arg(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument("--json", action="store_true",
                        help=f"the result as JSON {note}".strip())


def load(ns: argparse.Namespace) -> Config:
    """hookpack.config.load, kept here for the CLI's own commands (the hook's fast path
    does not import hookpack.config until it has something to do)."""
    from hookpack.config import load as load_config_of

    return load_config_of(ns)


def cmd_env(ns: argparse.Namespace) -> int:
    from hookpack.env import parse_env, read_env_dump
    from hookpack.roles import resolve_roles, system_fqdn

    if ns.file:
        try:
            environ = read_env_dump(Path(ns.file).read_text(errors="surrogateescape"))
        except OSError as err:
            raise HookpackError(f"{ns.file}: cannot read it: {err.strerror}") from None
    else:
        environ = dict(os.environ)
    env = parse_env(environ)
    fqdn = ns.fqdn or load(ns).core["node"]["fqdn"] or system_fqdn()
    data = env.to_dict()
    data["node"] = fqdn
    data["roles"] = sorted(role.value for role in resolve_roles(env, fqdn))
    data["actions"] = [s.name for s in registry.candidates(env.hpath, environ.get(
        "GANETI_HOOKS_PHASE", ""))]
    print(json.dumps(data, indent=2, sort_keys=True))
    return 0


def cmd_config_check(ns: argparse.Namespace) -> int:
    cfg = load(ns)
    sections: list[dict[str, str]] = []
    for spec in registry.ACTIONS:
        module = importlib.import_module(spec.module)
        try:
            cfg.section(spec.section, getattr(module, "SETTINGS", {}))
        except HookpackError as err:
            sections.append({"section": spec.section, "status": "fail", "message": str(err)})
            continue
        state = "enabled" if cfg.section_enabled(spec.section, spec.enabled_by_default) \
            else "disabled"
        sections.append({"section": spec.section, "status": "ok", "message": state})
    known = set(cfg.core) | {s.section for s in registry.ACTIONS}
    for section in sorted(set(cfg.raw) - known):
        sections.append({"section": section, "status": "fail", "message":
                         f"unknown section; known: {', '.join(sorted(known))}"})
    problems = sum(s["status"] == "fail" for s in sections)
    if ns.json:
        print(json.dumps({"path": str(cfg.path) if cfg.path else None,
                          "valid": not problems, "sections": sections}, indent=2))
    else:
        for s in sections:
            print(f"{s['status'].upper() if s['status'] == 'fail' else 'ok  '} "
                  f"{s['section']}: {s['message']}")
        where = cfg.path or "(no file: defaults)"
        print(f"{where}: {'invalid' if problems else 'valid'}")
    return 1 if problems else 0


def cmd_config_reference(ns: argparse.Namespace) -> int:
    from hookpack.docsgen import reference

    text = reference()
    if ns.write:
        Path(ns.write).write_text(text)
    else:
        print(text, end="")
    return 0


def cmd_hooks_install(ns: argparse.Namespace) -> int:
    from hookpack.hooksinstall import install

    changes = install(Path(ns.root), python=ns.python, config=ns.entry_config,
                      dry_run=ns.dry_run)
    _print_changes(ns, changes)
    return 0


def cmd_hooks_uninstall(ns: argparse.Namespace) -> int:
    from hookpack.hooksinstall import uninstall

    changes = uninstall(Path(ns.root))
    _print_changes(ns, changes)
    return 0


def _print_changes(ns: argparse.Namespace, changes: list[str]) -> None:
    if ns.json:
        print(json.dumps({"root": ns.root, "dry_run": bool(getattr(ns, "dry_run", False)),
                          "changes": changes}, indent=2))
        return
    for change in changes:
        print(change)
    print(f"{ns.root}: {len(changes)} change(s)")


def cmd_doctor(ns: argparse.Namespace) -> int:
    from hookpack.doctor import FAIL, WARN, run_checks

    checks = run_checks(load(ns))
    if ns.json:
        print(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        for check in checks:
            print(check.line())
    failing = (FAIL, WARN) if ns.strict else (FAIL,)
    return 1 if any(c.status in failing for c in checks) else 0


def cmd_metrics(ns: argparse.Namespace) -> int:
    from hookpack.metrics import collect, render, write_textfile

    text = render(collect(load(ns)))
    if ns.write:
        write_textfile(Path(ns.write), text)
    else:
        print(text, end="")
    return 0


def cmd_status(ns: argparse.Namespace) -> int:
    from hookpack.status import collect, render, to_json

    instances = collect(load(ns), ns.instance)
    if ns.json:
        print(json.dumps(to_json(instances), indent=2, sort_keys=True))
    else:
        print(render(instances), end="")
    return 0


def cmd_actions(ns: argparse.Namespace) -> int:
    cfg = load(ns)
    rows = [{"name": spec.name,
             "enabled": cfg.section_enabled(spec.section, spec.enabled_by_default),
             "phases": list(spec.phases), "roles": list(spec.roles), "hpaths": list(spec.hpaths)}
            for spec in registry.ACTIONS]
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    for spec, row in zip(registry.ACTIONS, rows, strict=True):
        state = "on " if row["enabled"] else "off"
        hpaths = "all hooks" if spec.hpaths == registry.GANETI_HPATHS else ",".join(spec.hpaths)
        roles = ",".join(spec.roles) or "any node"
        print(f"{state} {spec.name:12} {'/'.join(spec.phases):9} {roles:22} {hpaths}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
