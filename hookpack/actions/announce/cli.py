"""`hookpack outbox list|flush|retry|drop`: the queued announcements."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from hookpack.confirm import add_yes_arg, confirm
from hookpack.errors import BadInput


def add_outbox_cli(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    outbox = subparsers.add_parser(
        "outbox", help="queued announcements (announce action)").add_subparsers(
        metavar="ACTION")
    p = outbox.add_parser("list", help="show queued events and their delivery state")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    _config(p)
    p.set_defaults(handler=cmd_list)
    p = outbox.add_parser("flush", help="deliver what is due (run by the systemd timer)")
    p.add_argument("--force", action="store_true", help="also what is not due yet")
    _json(p)
    _config(p)
    p.set_defaults(handler=cmd_flush)
    p = outbox.add_parser("retry", help="deliver these events now, whatever their backoff")
    _ids(p)
    p.set_defaults(handler=cmd_retry)
    p = outbox.add_parser("drop", help="discard these events (they will never be sent)")
    _ids(p)
    add_yes_arg(p)
    p.set_defaults(handler=cmd_drop)
    p = outbox.add_parser("replay", help="queue an event the hook could not write (its "
                          "JSON from the `unqueued event` log line)")
    p.add_argument("event", metavar="JSON", help="the event's JSON, or - to read it from "
                   "stdin")
    _config(p)
    _json(p)
    p.set_defaults(handler=cmd_replay)


def _config(p: argparse.ArgumentParser) -> None:
    from hookpack.config import add_config_arg

    add_config_arg(p)


def _ids(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", nargs="*", metavar="ID", help="event ids from `hookpack outbox list`")
    p.add_argument("--all", action="store_true", help="every queued event")
    _json(p)
    _config(p)


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="the result as one JSON object")


def _setup(ns: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    from hookpack import registry
    from hookpack.action import Paths
    from hookpack.actions.announce import action as announce
    from hookpack.actions.announce.delivery import Secrets
    from hookpack.config import load
    from hookpack.outbox import Outbox

    cfg = load(ns)
    spec = registry.by_name("announce")
    settings = cfg.section(spec.section if spec else "announce", announce.SETTINGS)
    paths = Paths.from_config(cfg)
    return Outbox(paths.spool_dir, paths.run_dir), settings, Secrets(settings, lambda s: None), \
        paths


def _selected(ns: argparse.Namespace, outbox: Any) -> set[str]:
    from hookpack.outbox import check_id

    if ns.all == bool(ns.ids):
        raise BadInput("name event ids or give --all (not both)")
    if ns.all:
        return set(outbox.ids())
    wanted = {check_id(i) for i in ns.ids}
    missing = sorted(wanted - set(outbox.ids()))
    if missing:
        raise BadInput(f"not in the outbox: {', '.join(missing)}")
    return wanted


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "now"


def cmd_list(ns: argparse.Namespace) -> int:
    outbox, _, _, _ = _setup(ns)
    rows = dead_rows = 0
    for event in outbox.ids():
        try:
            data = outbox.read(event)
        except BadInput as err:
            rows += 1
            print(json.dumps({"id": event, "error": str(err)}) if ns.json else f"{err}")
            continue
        if data is None:
            continue
        for name, d in sorted(data["deliveries"].items()):
            if d.get("done_ms"):
                continue
            dead = bool(d.get("dead_ms"))
            rows += 0 if dead else 1
            dead_rows += 1 if dead else 0
            row = {"id": event, "sink": name, "instance": data.get("subject", ""),
                   "kind": data.get("event", {}).get("kind", ""),
                   "state": "dead-lettered" if dead else "pending",
                   "attempts": d.get("attempts", 0), "next_attempt": "never" if dead else
                   _when(int(d.get("next_attempt_ms", 0))),
                   "last_error": d.get("last_error", "")}
            if ns.json:
                print(json.dumps(row, sort_keys=True))
            else:
                print(f"{event}  {name:8} {row['instance']}  {row['kind']}  "
                      f"{'DEAD-LETTERED' + '  ' if dead else ''}"
                      f"attempts {row['attempts']}  next {row['next_attempt']}  "
                      f"{row['last_error'] or '-'}")
    if not ns.json:
        print(f"{rows} pending deliver{'y' if rows == 1 else 'ies'}"
              + (f", {dead_rows} dead-lettered (refused for good: fix, then `hookpack outbox "
                 "retry ID`, or `drop ID`)" if dead_rows else ""))
    return 0


def cmd_flush(ns: argparse.Namespace, only: set[str] | None = None, force: bool = False) -> int:
    from hookpack.actions.announce.delivery import flush
    from hookpack.actions.announce.events import Starts

    outbox, settings, secrets, paths = _setup(ns)
    cleaned = [f"removed leftover temporary file {name}" for name in outbox.clean_tmp()]
    cleaned += [f"removed stale start record {name} (a migration that did not finish)"
                for name in Starts(paths.state_dir).expire(settings["start_max_age"])]
    if not ns.json:
        for line in cleaned:
            print(line)
    report = flush(outbox, settings, secrets, timeout=settings["flush_timeout"], only=only,
                   force=force or getattr(ns, "force", False))
    pending = outbox.count()
    if ns.json:
        print(json.dumps({"delivered": list(report.delivered), "failed": list(report.failed),
                          "busy": list(report.busy), "deferred": report.deferred,
                          "dead": list(report.dead), "pending": pending,
                          "cleaned": cleaned}, sort_keys=True))
        return 1 if report.failed or report.dead else 0
    for line in report.delivered:
        print(f"delivered {line}")
    for line in report.failed:
        print(f"failed    {line}")
    for line in report.dead:
        print(f"dead      {line} (refused for good: kept, not retried)")
    for event in report.busy:
        print(f"busy      {event} (another hookpack run is delivering it)")
    dead = f"{len(report.dead)} dead-lettered, " if report.dead else ""
    print(f"outbox: {len(report.delivered)} delivered, {len(report.failed)} failed, "
          f"{report.deferred} deferred, {dead}"
          f"{pending} event{'s' if pending != 1 else ''} pending")
    return 1 if report.failed or report.dead else 0


def cmd_retry(ns: argparse.Namespace) -> int:
    outbox, _, _, _ = _setup(ns)
    return cmd_flush(ns, only=_selected(ns, outbox), force=True)


def cmd_drop(ns: argparse.Namespace) -> int:
    outbox, _, _, _ = _setup(ns)
    selected = sorted(_selected(ns, outbox))
    if ns.all:
        confirm(f"outbox drop --all: discard {len(selected)} queued event(s); they will "
                "never be sent", ns.yes)
    dropped, busy = [], []
    for event in selected:
        with outbox.claim(event) as held:
            if held is None:
                busy.append(event)
                if not ns.json:
                    print(f"busy      {event} (being delivered; try again)", file=sys.stderr)
                continue
            held.remove()
            dropped.append(event)
            if not ns.json:
                print(f"dropped   {event}")
    if ns.json:
        print(json.dumps({"dropped": dropped, "busy": busy, "pending": outbox.count()},
                         sort_keys=True))
    else:
        print(f"outbox: {len(dropped)} dropped, {outbox.count()} pending")
    return 0


def cmd_replay(ns: argparse.Namespace) -> int:
    from hookpack.outbox import check_id

    outbox, _, _, _ = _setup(ns)
    text = sys.stdin.read() if ns.event == "-" else ns.event
    try:
        data = json.loads(text)
        ident = check_id(str(data["id"]))
        deliveries = data["deliveries"]
        if not isinstance(deliveries, dict) or not deliveries or not isinstance(
                data.get("key"), str):
            raise ValueError("no deliveries or no key")
    except (ValueError, KeyError, TypeError) as err:
        raise BadInput(f"not an event from an `unqueued event` log line: {err}") from None
    if outbox.read(ident) is not None:
        print(json.dumps({"id": ident, "queued": False, "already": True}) if ns.json
              else f"outbox: {ident} is queued already")
        return 0
    for delivery in deliveries.values():  # as new: the same key, so receivers dedupe
        for key in ("done_ms", "dead_ms", "last_attempt_ms"):
            delivery.pop(key, None)
        delivery.update(attempts=0, next_attempt_ms=0, last_error="")
    with outbox.create(ident, data):
        pass
    if ns.json:
        print(json.dumps({"id": ident, "queued": True, "already": False,
                          "sinks": sorted(deliveries)}))
    else:
        print(f"queued    {ident} ({', '.join(sorted(deliveries))}); `hookpack outbox flush` "
              "sends it")
    return 0
