"""Run the actions registered for one hook invocation, isolated and within the deadline.

Exit codes follow Ganeti (shared/reference/ganeti-hooks.md): in the pre phase any
non-zero exit aborts the operation, so only a veto (or, when configured, hookpack's
own breakage) returns non-zero; post-phase exit codes are only logged, so post hooks
exit 0 unless `hook.post_failure_exit_code` says otherwise.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import TextIO

from hookpack import registry
from hookpack.action import ActionContext, Paths
from hookpack.config import Config, config_path, load_config
from hookpack.deadline import Deadline, Watchdog, run_bounded
from hookpack.env import HookEnv, Phase, parse_env
from hookpack.errors import ConfigError, HookpackError, Veto
from hookpack.log import RunLog
from hookpack.record import record
from hookpack.result import Outcome, Result
from hookpack.roles import Role, resolve_roles, system_fqdn
from hookpack.runstats import record_run
from hookpack.validate import instance_name

VETO_EXIT = 1


@record(frozen=True)
class ActionRun:
    spec: registry.ActionSpec
    result: Result
    ms: int


@record
class HookRun:
    """Everything one hook invocation did, for the exit code and for tests."""

    env: HookEnv | None
    roles: frozenset[Role]
    runs: list[ActionRun]
    exit_code: int

    @property
    def abandoned(self) -> bool:
        """An action thread was left running at the deadline."""
        return any(run.result.outcome is Outcome.TIMEOUT for run in self.runs)


def dispatch(environ: Mapping[str, str], *, config: str | os.PathLike[str] | None = None,
             fqdn: Callable[[], str] | None = None, stream: TextIO | None = None,
             actions: tuple[registry.ActionSpec, ...] = registry.ACTIONS) -> HookRun:
    stream = stream if stream is not None else sys.stderr
    phase_text = environ.get("GANETI_HOOKS_PHASE", "").strip().lower()
    specs = registry.candidates(environ.get("GANETI_HOOKS_PATH", ""), phase_text, actions)
    if not specs:
        return HookRun(None, frozenset(), [], 0)
    is_pre = phase_text == Phase.PRE.value

    path, required = config_path(config)
    try:
        cfg = load_config(path, required=required)
    except ConfigError as err:
        stream.write(f"hookpack: no action ran: {err}\n")
        return HookRun(None, frozenset(), [], 0)

    specs = [s for s in specs if cfg.section_enabled(s.section, s.enabled_by_default)]
    if not specs:
        return HookRun(None, frozenset(), [], 0)

    log = RunLog(cfg.core["log"], stream)
    deadline = Deadline(cfg.deadline)
    env = parse_env(environ)
    for warning in env.warnings:
        log.write(f"hookpack: environment: {warning}", "warning")
    if not env.supported:
        log.write("hookpack: no action ran: hooks version or phase not understood "
                  f"(version {env.version}, phase {environ.get('GANETI_HOOKS_PHASE')!r})",
                  "warning")
        return HookRun(env, frozenset(), [], 0)

    me = cfg.core["node"]["fqdn"] or (fqdn or system_fqdn)()
    roles = resolve_roles(env, me)
    specs = [s for s in specs if not s.roles or roles.intersection(Role(r) for r in s.roles)]
    current = {"action": ""}
    broken_code = _broken_exit_code(cfg, is_pre)
    watchdog = Watchdog(deadline, broken_code, lambda: (
        f"hookpack {current['action']}: timeout: abandoned at the {cfg.deadline:g} s deadline;"
        " exiting so Ganeti can go on"))
    watchdog.start()
    try:
        runs = []
        for spec in specs:
            current["action"] = spec.name
            ctx = _context(env, roles, me, cfg, deadline, log)
            run = _run_action(spec, ctx, deadline)
            phase = env.phase.value if env.phase else "?"
            log.action(spec.name, _subject(env), run.result, f"{env.hpath}/{phase}", run.ms)
            record_run(cfg.path_of("state_dir"), spec.name, outcome=run.result.outcome.value,
                       ms=run.ms, hpath=env.hpath, phase=phase, instance=_subject(env),
                       message=log.clean(run.result.message))
            runs.append(run)
    finally:
        watchdog.stop()
    return HookRun(env, roles, runs, _exit_code(runs, is_pre, broken_code))


def _context(env: HookEnv, roles: frozenset[Role], me: str, cfg: Config, deadline: Deadline,
             log: RunLog) -> ActionContext:
    return ActionContext(env=env, roles=roles, fqdn=me, config=cfg, settings={},
                         deadline=deadline, paths=Paths.from_config(cfg), redact=log.redact)


def _run_action(spec: registry.ActionSpec, ctx: ActionContext, deadline: Deadline) -> ActionRun:
    start = deadline.elapsed_ms()
    result = _call(spec, ctx, deadline)
    return ActionRun(spec, result, deadline.elapsed_ms() - start)


def _call(spec: registry.ActionSpec, ctx: ActionContext, deadline: Deadline) -> Result:
    try:
        module = importlib.import_module(spec.module)
        settings = ctx.config.section(spec.section, getattr(module, "SETTINGS", {}))
    except ConfigError as err:
        return Result.failed(str(err))
    except ImportError as err:
        return Result.failed(f"cannot load {spec.module}: {err}")
    ctx = ActionContext(**{**ctx.__dict__, "settings": settings})
    if deadline.expired():
        return _at_deadline(module, ctx, "not started: no time left before the deadline")
    bounded = run_bounded(lambda: module.run(ctx), deadline.remaining(), spec.name)
    if not bounded.finished:
        return _at_deadline(module, ctx, f"abandoned at the {deadline.seconds:g} s deadline")
    if bounded.error is not None:
        return _from_error(bounded.error)
    if not isinstance(bounded.value, Result):
        return Result.failed(f"internal error: action returned {type(bounded.value).__name__}")
    return bounded.value


def _at_deadline(module: object, ctx: ActionContext, why: str) -> Result:
    """A timeout, unless the action says otherwise (a gate that fails closed vetoes)."""
    decide = getattr(module, "at_deadline", None)
    verdict = decide(ctx, why) if callable(decide) else None
    return verdict if isinstance(verdict, Result) else Result(Outcome.TIMEOUT, why)


def _from_error(error: BaseException) -> Result:
    if isinstance(error, Veto):
        return Result.veto(str(error))
    if isinstance(error, HookpackError):
        return Result.failed(str(error))
    if isinstance(error, ImportError):  # a dependency missing from the install
        return Result.failed(f"cannot import a dependency: {type(error).__name__}: {error}; "
                             "reinstall hookpack with its dependencies")
    if os.environ.get("HOOKPACK_DEBUG"):
        import traceback  # only after a crash: kept off the hook's hot path

        traceback.print_exception(error)
    return Result.failed(f"internal error: {type(error).__name__}: {error}")


def _broken_exit_code(cfg: Config, is_pre: bool) -> int:
    if is_pre:
        return VETO_EXIT if cfg.core["hook"]["pre_fail_closed"] else 0
    return int(cfg.core["hook"]["post_failure_exit_code"])


def _exit_code(runs: list[ActionRun], is_pre: bool, broken_code: int) -> int:
    outcomes = {run.result.outcome for run in runs}
    if is_pre and Outcome.VETO in outcomes:
        return VETO_EXIT
    if outcomes & {Outcome.FAILED, Outcome.TIMEOUT}:
        return broken_code
    return 0


def _subject(env: HookEnv) -> str:
    name = env.instance.name if env.instance else env.op_target
    try:
        return instance_name(name) if name else ""
    except HookpackError:
        return repr(name)[:60]
