"""`hookpack metrics`: Prometheus metrics in node_exporter's textfile-collector format.

Core metrics come from the dispatcher's run statistics (runstats); an action adds its
own by defining ``metrics(cfg: Config, paths: Paths) -> list[Sample]`` in its module
(e.g. shaped bytes per instance, outbox backlog). Written atomically, so node_exporter
never reads half a file.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from hookpack import registry
from hookpack.action import Paths
from hookpack.config import Config
from hookpack.errors import HookpackError
from hookpack.record import field, record
from hookpack.runstats import all_stats

FAILED_OUTCOMES = ("failed", "timeout")


@record(frozen=True)
class Sample:
    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    help: str = ""
    kind: str = "gauge"  # "counter", "summary"...
    family: str = ""  # the metric family when it differs from name (a summary's _sum)

    @property
    def family_name(self) -> str:
        return self.family or self.name


ERRORS_HELP = ("1 when this part's metrics could not be read this time (0: read); "
               "\"core\" is the run statistics and the outbox.")


def collect(cfg: Config) -> list[Sample]:
    """Every metric, plus ``hookpack_metrics_errors`` for each part (0 or 1), always, so
    an alert on it sees a series before the first error."""
    paths = Paths.from_config(cfg)
    samples = [build_info()]
    core_failed = 0
    try:
        samples += [*run_samples(paths.state_dir), *outbox_samples(paths)]
    except (HookpackError, OSError):
        core_failed = 1
    samples.append(Sample("hookpack_metrics_errors", core_failed, {"action": "core"},
                          ERRORS_HELP))
    for spec in registry.ACTIONS:
        if not cfg.section_enabled(spec.section, spec.enabled_by_default):
            continue
        extra = getattr(importlib.import_module(spec.module), "metrics", None)
        if extra is None:
            continue
        failed = 0
        try:
            samples.extend(extra(cfg, paths))
        except HookpackError:
            failed = 1
        samples.append(Sample("hookpack_metrics_errors", failed, {"action": spec.name},
                              ERRORS_HELP))
    return samples


def build_info() -> Sample:
    """The running hookpack's version (and Python's), as Prometheus' *_build_info."""
    import platform

    from hookpack import __version__

    return Sample("hookpack_build_info", 1,
                  {"version": __version__, "python": platform.python_version()},
                  "hookpack's version; the value is always 1.")


def run_samples(state_dir: Path) -> Iterable[Sample]:
    for action, stats in all_stats(state_dir).items():
        outcomes = stats.get("outcomes", {})
        for outcome, count in sorted(outcomes.items()):
            yield Sample("hookpack_action_runs_total", count,
                         {"action": action, "outcome": outcome},
                         "Action runs by outcome.", "counter")
        failures = sum(outcomes.get(o, 0) for o in FAILED_OUTCOMES)
        yield Sample("hookpack_action_failures_total", failures, {"action": action},
                     "Action runs that failed or hit the deadline.", "counter")
        duration = "hookpack_action_duration_seconds"
        yield Sample(f"{duration}_sum", stats.get("duration_ms_sum", 0) / 1000,
                     {"action": action}, "Time spent in action runs.", "summary", duration)
        yield Sample(f"{duration}_count", stats.get("runs", 0), {"action": action},
                     "Time spent in action runs.", "summary", duration)
        last = stats.get("last") or [{}]
        if last[0].get("time"):
            yield Sample("hookpack_action_last_run_timestamp_seconds", last[0]["time"],
                         {"action": action}, "When the action last ran.")


def outbox_samples(paths: Paths, now_ms: int | None = None) -> list[Sample]:
    """Backlog of the durable outbox (announce's events): events, pending deliveries per
    sink, and the age of the oldest event (from its id, which starts with its creation
    time in ms)."""
    from hookpack.outbox import Outbox
    from hookpack.outbox import now_ms as clock

    outbox = Outbox(paths.spool_dir, paths.run_dir)
    ids = outbox.ids()
    now = clock() if now_ms is None else now_ms
    oldest = max(0.0, (now - int(ids[0][:13])) / 1000) if ids else 0.0
    pending: dict[str, int] = {}
    dead: dict[str, int] = {}
    unreadable = 0
    for event in ids:
        try:
            data = outbox.read(event)
        except HookpackError:
            unreadable += 1
            continue
        for sink, delivery in (data or {}).get("deliveries", {}).items():
            if not isinstance(delivery, dict) or delivery.get("done_ms"):
                continue
            bucket = dead if delivery.get("dead_ms") else pending
            bucket[sink] = bucket.get(sink, 0) + 1
    samples = [
        Sample("hookpack_outbox_events", len(ids), {}, "Events waiting in the outbox."),
        Sample("hookpack_outbox_oldest_event_age_seconds", oldest, {},
               "Age of the oldest event in the outbox (0 when it is empty)."),
        Sample("hookpack_outbox_unreadable_events", unreadable, {},
               "Outbox event files that cannot be read (see `hookpack outbox list`)."),
    ]
    samples += [Sample("hookpack_outbox_pending_deliveries", count, {"sink": sink},
                       "Deliveries not yet done, per sink.")
                for sink, count in sorted(pending.items())]
    samples += [Sample("hookpack_outbox_dead_letters", count, {"sink": sink},
                       "Deliveries the receiver refused for good (a permanent 4xx), kept "
                       "until retried or dropped, per sink.")
                for sink, count in sorted(dead.items())]
    return samples


def render(samples: Iterable[Sample]) -> str:
    lines: list[str] = []
    described: set[str] = set()
    for sample in sorted(samples, key=lambda s: (s.family_name, s.name)):
        family = sample.family_name
        if family not in described:
            described.add(family)
            if sample.help:
                lines.append(f"# HELP {family} {_escape_help(sample.help)}")
            lines.append(f"# TYPE {family} {sample.kind}")
        lines.append(f"{sample.name}{_labels(sample.labels)} {_number(sample.value)}")
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape_label(str(value))}"'
                     for key, value in sorted(labels.items()))
    return "{" + inner + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
