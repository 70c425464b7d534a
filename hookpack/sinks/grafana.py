"""Grafana annotations HTTP API: one region annotation per migration.

Grafana's documented shape (grafana.com/docs/grafana/latest/developers/http_api/
annotations/): POST /api/annotations with ``Authorization: Bearer <token>`` (a
service account token) and a JSON body ``{"time": ms, "timeEnd": ms, "tags": [...],
"text": ...}``, optionally ``dashboardUID`` and ``panelId``; without a dashboard the
annotation is organisation-wide. The answer is 200 {"message":"Annotation added",...}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hookpack.sinks import render

NAME = "grafana"
SECRETS = ("grafana_token_file",)

TAG_BY_KIND = {"live-migration": "ganeti-live-migration", "migration": "ganeti-migration",
               "failover": "ganeti-failover"}


def configured(settings: Mapping[str, Any]) -> bool:
    return bool(settings["grafana_url"])


def payload(event: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    end = int(event["end_ms"])
    start = event.get("start_ms")
    body: dict[str, Any] = {
        "time": start if isinstance(start, int) else end,
        "tags": [event["instance"], TAG_BY_KIND[event["kind"]],
                 f"source:{event['source']}", f"target:{event['target']}",
                 *settings["grafana_extra_tags"]],
        "text": render(settings["grafana_template"], event),
    }
    if isinstance(start, int):
        body["timeEnd"] = end  # a region; without a known start, a point at the end
    if settings["grafana_dashboard_uid"]:
        body["dashboardUID"] = settings["grafana_dashboard_uid"]
        if settings["grafana_panel_id"]:
            body["panelId"] = settings["grafana_panel_id"]
    return body


def request(body: bytes, settings: Mapping[str, Any],
            secret: Callable[[str], str]) -> tuple[str, dict[str, str]]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if settings["grafana_token_file"]:
        headers["Authorization"] = f"Bearer {secret('grafana_token_file')}"
    return settings["grafana_url"].rstrip("/") + "/api/annotations", headers
