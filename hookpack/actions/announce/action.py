"""Announce migrations to Slack, Grafana and webhooks from the master, via a durable outbox."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hookpack.action import ActionContext
from hookpack.config import Field
from hookpack.env import Phase
from hookpack.errors import ActionError, HookpackError
from hookpack.result import Result

if TYPE_CHECKING:  # argparse stays off the hook's hot path
    import argparse

    from hookpack.actions.announce.events import Move, Starts
    from hookpack.outbox import Outbox

_TEXT = "Ganeti $kind of $instance: $source → $target ($duration)"

SETTINGS = {
    "migrations": Field(str, "live", "Which migrations to announce: `live` (as the seed "
                        "script), `all` (also non-live), `none`.",
                        choices=("live", "all", "none")),
    "failovers": Field(bool, False, "Announce failovers too (tag `ganeti-failover`)."),
    "slack_webhook_url_file": Field(
        str, "", "Root-only file holding the Slack incoming-webhook URL. Empty: no Slack."),
    "slack_template": Field(
        str, _TEXT + " — done $end", "Slack message. Fields: $instance $source $target "
        "$kind $cluster $master $start $end $duration; values are escaped for Slack."),
    "grafana_url": Field(str, "", "Grafana base URL (e.g. https://grafana.example.org). "
                         "Empty: no Grafana."),
    "grafana_token_file": Field(str, "", "Root-only file holding a Grafana service account "
                                "token (sent as `Authorization: Bearer`)."),
    "grafana_dashboard_uid": Field(str, "", "Annotate this dashboard only (empty: an "
                                   "organisation-wide annotation)."),
    "grafana_panel_id": Field(int, 0, "With grafana_dashboard_uid: only this panel (0: all).",
                              minimum=0),
    "grafana_extra_tags": Field(list, [], "Tags added to every annotation.", item_type=str),
    "grafana_template": Field(str, _TEXT, "Annotation text (same fields as slack_template)."),
    "webhook_url_file": Field(str, "", "Root-only file holding the generic webhook URL. "
                              "Empty: no webhook."),
    "webhook_hmac_key_file": Field(str, "", "Root-only file holding the HMAC-SHA256 key for "
                                   "X-Hookpack-Signature (empty: unsigned)."),
    "webhook_template": Field(str, _TEXT, "The `text` field of the webhook event."),
    "allow_insecure_hosts": Field(list, [], "Hosts that may be reached over plain http "
                                  "(everything else must be https).", item_type=str),
    "ca_file": Field(str, "", "CA bundle for https (empty: the system's)."),
    "attempt_timeout": Field(float, 2.0, "The hook's one delivery attempt, all sinks in "
                             "parallel, in seconds; 0: only queue. Whatever fails is left to "
                             "`hookpack outbox flush`.", minimum=0.0, maximum=2.0),
    "flush_timeout": Field(float, 10.0, "Per-request limit of `hookpack outbox flush`, s.",
                           minimum=0.5, maximum=120.0),
    "backoff_base": Field(float, 30.0, "First retry delay, s; doubled per failed attempt.",
                          minimum=0.0, maximum=3600.0),
    "backoff_max": Field(float, 3600.0, "Longest retry delay, s.", minimum=1.0,
                         maximum=86400.0),
    "start_max_age": Field(float, 86400.0, "A start record older than this (a migration "
                           "that failed, so no post hook ran) is discarded, s.",
                           minimum=60.0, maximum=30 * 86400.0),
}


def run(ctx: ActionContext) -> Result:
    from hookpack.actions.announce.events import Starts, classify
    from hookpack.outbox import now_ms

    move, why = classify(ctx.env, ctx.settings)
    if move is None:
        return Result.skipped(why)
    starts = Starts(ctx.paths.state_dir)
    expired = [f"removed stale start record {name}"
               for name in starts.expire(ctx.settings["start_max_age"])]
    if ctx.env.phase is Phase.PRE:
        replaced = starts.record(move, ctx.env.hpath, now_ms())
        note = " (replaced a leftover of a failed attempt)" if replaced else ""
        return Result.changed(f"{move.kind} {move.source} → {move.target}: start recorded"
                              f"{note}", [f"recorded start of {move.kind}", *expired])
    return _announce(ctx, move, starts, expired)


def _announce(ctx: ActionContext, move: Move, starts: Starts, expired: list[str]) -> Result:
    from hookpack.actions.announce import delivery
    from hookpack.actions.announce.events import build_event
    from hookpack.outbox import Failure, Outbox, event_id, now_ms

    settings = ctx.settings
    names = delivery.configured_sinks(settings)
    if not names:
        return Result.skipped("no sink configured (slack_webhook_url_file, grafana_url, "
                              "webhook_url_file)")
    start = starts.take(move, ctx.env.hpath, settings["start_max_age"])
    event = build_event(ctx.env, move, start, now_ms())
    deliveries = {name: {"payload": delivery.sink(name).payload(event, settings),
                         "attempts": 0, "next_attempt_ms": 0, "last_error": ""}
                  for name in names}
    outbox = Outbox(ctx.paths.spool_dir, ctx.paths.run_dir)
    ident = event_id(now_ms(), event["key"])
    secrets = delivery.Secrets(settings, ctx.redact)
    # Keep a margin before the hook's hard deadline for writing the state back.
    cap = min(float(settings["attempt_timeout"]), max(0.0, ctx.deadline.remaining() - 0.5))
    data = {"id": ident, "key": event["key"], "created_ms": event["end_ms"],
            "subject": move.instance, "event": event, "deliveries": deliveries}
    try:
        with outbox.create(ident, data) as held:
            starts.forget(move, ctx.env.hpath)  # only once the event is on disk
            outcomes = (delivery.attempt_all(held, names, settings, secrets, cap) if cap > 0
                        else {name: Failure("not attempted (attempt_timeout = 0)")
                              for name in names})
    except ActionError as err:
        if held_nothing(outbox, ident):
            log_unqueued(ctx, data)
            return Result.failed(f"{move.kind} {move.source} → {move.target}: cannot queue "
                                 f"the event ({err}); not sent: its whole content is logged "
                                 "as `hookpack announce: unqueued event`, replay it with "
                                 "`hookpack outbox replay`")
        raise
    sent = [name for name, failure in outcomes.items() if failure is None]
    queued = {name: failure for name, failure in outcomes.items() if failure is not None}
    what = f"{move.kind} {move.source} → {move.target}"
    if start is None:
        what += " (start unknown: no pre-phase record)"
    changes = [*(f"delivered to {n}" for n in sent), *(f"queued for {n}" for n in queued),
               *expired]
    if not queued:
        return Result.changed(f"{what}: delivered to {', '.join(sent)}", changes)
    first = next(iter(queued.values()))
    done = f"delivered to {', '.join(sent)}; " if sent else ""
    dead = [name for name, failure in queued.items() if failure.permanent]
    state = (f"dead-lettered for {', '.join(dead)} (refused for good; `hookpack outbox "
             "list`)" if dead else "queued") if len(dead) == len(queued) else "queued"
    return Result.changed(f"{what}: {done}{', '.join(queued)}: {first.reason}; {state}, "
                          f"{outbox.count()} pending", changes)


def held_nothing(outbox: Outbox, ident: str) -> bool:
    """Whether the event never reached the disk (then only the log can keep it)."""
    try:
        return outbox.read(ident) is None
    except HookpackError:
        return True


def log_unqueued(ctx: ActionContext, data: dict[str, Any]) -> None:
    """The whole event on one line (stderr, and syslog when configured), never cut:
    `hookpack outbox replay '<json>'` queues it again. It holds no secret (sinks add
    URLs and credentials only when they send)."""
    import json
    import sys

    line = ("hookpack announce: unqueued event (replay with `hookpack outbox replay`): "
            + json.dumps(data, sort_keys=True, ensure_ascii=True, separators=(",", ":")))
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    if ctx.config.core["log"].get("syslog"):
        import syslog

        syslog.openlog("hookpack", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_ERR, line)


def add_cli(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from hookpack.actions.announce.cli import add_outbox_cli

    add_outbox_cli(subparsers)
