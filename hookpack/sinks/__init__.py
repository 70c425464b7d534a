"""Where announcements go: one module per receiver (Slack, Grafana, generic webhook).

A sink builds its request body as data when the event is queued (so every retry
sends the same bytes) and adds the URL and credentials only when it delivers (so the
spool never holds a secret, and a rotated token applies to queued events too).
Message texts come from operator templates filled by ``string.Template.safe_substitute``
with a fixed set of fields: a value can never inject template syntax, JSON or
markup, and an unknown ``$name`` in a template is left as written.
"""

from __future__ import annotations

import string
import time
from collections.abc import Callable, Mapping
from typing import Any

# The fields a template may use, and nothing else from the environment.
TEMPLATE_FIELDS = ("instance", "source", "target", "kind", "cluster", "master", "start",
                   "end", "duration")

KIND_TEXT = {"live-migration": "live migration", "migration": "migration",
             "failover": "failover"}


def template_fields(event: Mapping[str, Any],
                    escape: Callable[[str], str] = lambda text: text) -> dict[str, str]:
    """The whitelisted fields of ``event`` as strings, each passed through ``escape``."""
    start, end = event.get("start_ms"), event["end_ms"]
    duration = f"{(end - start) / 1000:.1f} s" if isinstance(start, int) else "unknown"
    values = {
        "instance": event["instance"], "source": event["source"], "target": event["target"],
        "kind": KIND_TEXT.get(event["kind"], event["kind"]), "cluster": event["cluster"],
        "master": event["master"],
        "start": iso_time(start) if isinstance(start, int) else "unknown",
        "end": iso_time(end), "duration": duration,
    }
    return {key: escape(str(values[key])) for key in TEMPLATE_FIELDS}


def render(template: str, event: Mapping[str, Any],
           escape: Callable[[str], str] = lambda text: text) -> str:
    return string.Template(template).safe_substitute(template_fields(event, escape))


def iso_time(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def dumps(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact, key order fixed, UTF-8."""
    import json

    return json.dumps(payload, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")
