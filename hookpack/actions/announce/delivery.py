"""Sending queued announcements: one bounded attempt from the hook, the rest by flush.

The hook tries every sink of a new event at once, in parallel threads sharing one
cap (``attempt_timeout``, at most 2 s, never past the hook's deadline); what fails
stays in the outbox with its backoff. ``hookpack outbox flush`` sends what is due,
oldest first; after a sink fails once in a flush run, its later events wait for the
next run (a dead receiver costs one timeout per run, not one per event).
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from hookpack.config import read_secret
from hookpack.errors import BadInput, HookpackError
from hookpack.outbox import Failure, Held, Outbox, now_ms, record_attempt, revive
from hookpack.record import field, record

SINK_NAMES = ("slack", "grafana", "webhook")
IDEMPOTENCY_HEADER = "X-Hookpack-Idempotency-Key"


def sink(name: str) -> ModuleType:
    if name not in SINK_NAMES:
        raise HookpackError(f"unknown sink {name!r}; known: {', '.join(SINK_NAMES)}")
    return importlib.import_module(f"hookpack.sinks.{name}")


def configured_sinks(settings: Mapping[str, Any]) -> list[str]:
    return [name for name in SINK_NAMES if sink(name).configured(settings)]


@record
class Secrets:
    """Secrets read on first use from root-only files, each registered with ``redact``."""

    settings: Mapping[str, Any]
    redact: Callable[[str], None]
    values: dict[str, str] = field(default_factory=dict)

    def __call__(self, key: str) -> str:
        if key not in self.values:
            # read_secret refuses files group or others can read (ConfigError)
            from pathlib import Path

            value = read_secret(Path(self.settings[key]))
            if not value:
                raise HookpackError(f"{self.settings[key]}: secret file is empty")
            self.values[key] = value
            self.redact(value)
        return self.values[key]

    def clean(self, text: str) -> str:
        for value in self.values.values():
            if value:
                text = text.replace(value, "***")
        return text


def attempt(event_key: str, sink_name: str, payload: Mapping[str, Any],
            settings: Mapping[str, Any], secrets: Secrets, timeout: float) -> Failure | None:
    """One POST of one delivery. None when delivered, else why (permanent when the
    receiver refused it with a 4xx other than 408/425/429)."""
    from hookpack.adapters import http
    from hookpack.sinks import dumps

    try:
        body = dumps(payload)
        url, headers = sink(sink_name).request(body, settings, secrets)
        headers[IDEMPOTENCY_HEADER] = event_key
        http.post(url, body, headers, timeout=timeout,
                  allow_insecure_hosts=settings["allow_insecure_hosts"],
                  ca_file=settings["ca_file"])
    except http.HttpError as err:
        return Failure(secrets.clean(str(err)), err.permanent, err.retry_after)
    except HookpackError as err:
        return Failure(secrets.clean(str(err)))
    except Exception as err:  # a bug must not lose the event: it stays queued
        return Failure(secrets.clean(f"internal error: {type(err).__name__}: {err}"))
    return None


def attempt_all(held: Held, names: list[str], settings: Mapping[str, Any], secrets: Secrets,
                timeout: float) -> dict[str, Failure | None]:
    """Try ``names`` in parallel within ``timeout`` s in all; record each outcome."""
    # Read every secret before the threads start: file errors become clean reasons.
    outcomes: dict[str, Failure | None] = {}
    for name in names:
        try:
            for key in sink(name).SECRETS:
                if settings[key]:
                    secrets(key)
        except HookpackError as err:
            outcomes[name] = Failure(secrets.clean(str(err)))
    todo = [n for n in names if n not in outcomes]
    results: dict[str, Failure | None] = {}
    give_up = time.monotonic() + timeout
    deliveries = held.data["deliveries"]

    def work(name: str) -> None:
        results[name] = attempt(held.data["key"], name, deliveries[name]["payload"], settings,
                                secrets, max(0.0, give_up - time.monotonic()))

    threads = [threading.Thread(target=work, args=(n,), name=f"hookpack-{n}", daemon=True)
               for n in todo]
    for thread in threads:
        thread.start()
    for thread in threads:
        # The adapter bounds each request; the small grace only covers scheduling.
        thread.join(max(0.0, give_up - time.monotonic()) + 0.2)
    for name in todo:
        outcomes[name] = results[name] if name in results else Failure(
            f"no answer within {timeout:g} s")
    at = now_ms()
    for name, failure in outcomes.items():
        record_attempt(deliveries[name], failure, at_ms=at, base=_jittered(settings),
                       cap=settings["backoff_max"])
    held.settle()
    return outcomes


def _jittered(settings: Mapping[str, Any]) -> float:
    # Up to 20% later, so events queued together do not retry in lockstep (os.urandom:
    # importing random costs the hook ~4 ms).
    spread = int.from_bytes(os.urandom(2), "big") / 65535
    return float(settings["backoff_base"]) * (1.0 + 0.2 * spread)


@record
class FlushReport:
    delivered: list[str] = field(default_factory=list)  # "<id> <sink>"
    failed: list[str] = field(default_factory=list)  # "<id> <sink>: reason"
    dead: list[str] = field(default_factory=list)  # "<id> <sink>: reason" (refused for good)
    busy: list[str] = field(default_factory=list)
    deferred: int = 0  # due but skipped: its sink already failed in this run


def flush(outbox: Outbox, settings: Mapping[str, Any], secrets: Secrets, *,
          timeout: float, only: set[str] | None = None, force: bool = False,
          clock: Callable[[], int] = now_ms) -> FlushReport:
    """Deliver what is due (``force``: everything), oldest event first. Dead-lettered
    deliveries are left alone, except those of the events named in ``only`` (an
    operator's `hookpack outbox retry`), which are tried again."""
    report = FlushReport()
    broken: set[str] = set()
    for event in outbox.ids():
        if only is not None and event not in only:
            continue
        try:
            _flush_one(outbox, event, report, broken, settings, secrets, timeout=timeout,
                       force=force, clock=clock, only=only)
        except BadInput as err:  # one unreadable file must not stop the others
            report.failed.append(f"{event}: {err}")
    return report


def _flush_one(outbox: Outbox, event: str, report: FlushReport, broken: set[str],
               settings: Mapping[str, Any], secrets: Secrets, *, timeout: float, force: bool,
               clock: Callable[[], int], only: set[str] | None = None) -> None:
    with outbox.claim(event) as held:
        if held is None:
            if outbox.read(event) is not None:
                report.busy.append(event)
            return
        if only is not None:
            for delivery in held.dead().values():
                revive(delivery)
        due = [name for name, d in held.pending().items()
               if force or int(d.get("next_attempt_ms", 0)) <= clock()]
        if not due:
            return
        for name in due:
            if name in broken:
                report.deferred += 1
                continue
            failure = _attempt_queued(held, name, settings, secrets, timeout)
            record_attempt(held.data["deliveries"][name], failure, at_ms=clock(),
                           base=_jittered(settings), cap=settings["backoff_max"])
            if failure is None:
                report.delivered.append(f"{event} {name}")
            elif failure.permanent:  # the receiver refused this event, not every event
                report.dead.append(f"{event} {name}: {failure.reason}")
            else:
                broken.add(name)
                report.failed.append(f"{event} {name}: {failure.reason}")
        held.settle()


def _attempt_queued(held: Held, name: str, settings: Mapping[str, Any], secrets: Secrets,
                    timeout: float) -> Failure | None:
    if name not in SINK_NAMES:
        return Failure(f"unknown sink {name!r}")
    try:
        for key in sink(name).SECRETS:
            if settings[key]:
                secrets(key)
        if not sink(name).configured(settings):
            return Failure(f"sink {name} is no longer configured; `hookpack outbox drop` "
                           "to discard")
    except HookpackError as err:
        return Failure(secrets.clean(str(err)))
    return attempt(held.data["key"], name, held.data["deliveries"][name]["payload"],
                   settings, secrets, timeout)
