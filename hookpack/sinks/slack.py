"""Slack incoming webhook: POST {"text": ...} as JSON to the webhook URL.

Slack's documented shape (api.slack.com/messaging/webhooks): Content-type
application/json, a JSON object with "text"; the answer is 200 "ok". In message text
only &, < and > must be escaped (api.slack.com/reference/surfaces/formatting);
we escape them in the substituted values only, so a template may still use Slack's
<url|label> links.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hookpack.sinks import render

NAME = "slack"
SECRETS = ("slack_webhook_url_file",)


def configured(settings: Mapping[str, Any]) -> bool:
    return bool(settings["slack_webhook_url_file"])


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def payload(event: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    return {"text": render(settings["slack_template"], event, escape)}


def request(body: bytes, settings: Mapping[str, Any],
            secret: Callable[[str], str]) -> tuple[str, dict[str, str]]:
    return secret("slack_webhook_url_file"), {"Content-Type": "application/json"}
