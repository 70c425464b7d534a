"""Generic JSON webhook: the event as JSON, signed with HMAC-SHA256.

Headers: ``X-Hookpack-Signature: sha256=<hex HMAC of the exact body bytes>`` (key from
a root-only file) and ``X-Hookpack-Idempotency-Key`` (the same on every retry of an
event: receivers drop repeats). A receiver verifies with
``hmac.compare_digest(header, "sha256=" + hmac.new(key, body, sha256).hexdigest())``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hookpack.sinks import iso_time, render

NAME = "webhook"
SECRETS = ("webhook_url_file", "webhook_hmac_key_file")


def configured(settings: Mapping[str, Any]) -> bool:
    return bool(settings["webhook_url_file"])


def payload(event: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    start = event.get("start_ms")
    return {
        "id": event["key"],
        "type": event["kind"],
        "hpath": event["hpath"],
        "cluster": event["cluster"],
        "master": event["master"],
        "instance": event["instance"],
        "source": event["source"],
        "target": event["target"],
        "start": iso_time(start) if isinstance(start, int) else None,
        "end": iso_time(event["end_ms"]),
        "start_ms": start if isinstance(start, int) else None,
        "end_ms": event["end_ms"],
        "text": render(settings["webhook_template"], event),
    }


def signature(key: str, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256 (RFC 2104) of ``body``.

    Written out over the builtin _sha256 module: hmac and hashlib load OpenSSL, which
    costs the hook ~10 ms; tests check it equals hmac.new(key, body, sha256).
    """
    try:
        from _sha256 import sha256
    except ImportError:  # pragma: no cover - a Python built without it
        from hashlib import sha256
    block = 64
    raw = key.encode("utf-8")
    if len(raw) > block:
        raw = sha256(raw).digest()
    raw = raw.ljust(block, b"\0")
    inner = sha256(bytes(b ^ 0x36 for b in raw) + body).digest()
    outer: str = sha256(bytes(b ^ 0x5C for b in raw) + inner).hexdigest()
    return "sha256=" + outer


def request(body: bytes, settings: Mapping[str, Any],
            secret: Callable[[str], str]) -> tuple[str, dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if settings["webhook_hmac_key_file"]:
        headers["X-Hookpack-Signature"] = signature(secret("webhook_hmac_key_file"), body)
    return secret("webhook_url_file"), headers
