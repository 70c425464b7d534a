"""Sink bodies and templates: data in, exact JSON out, whatever the values hold."""

from __future__ import annotations

import hashlib
import hmac
import json
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from hookpack.actions.announce import action as announce
from hookpack.config import validate_section
from hookpack.sinks import TEMPLATE_FIELDS, dumps, grafana, render, slack, webhook

SETTINGS = dict(validate_section("announce", {"grafana_url": "https://g.example"},
                                 announce.SETTINGS, "test"))

NASTY = [*"$ {}\"'\\\n\r\t<>&`|*_~", "é", "→", "😀", "\u2028", "\x00"]
hostile = st.text(alphabet=st.sampled_from(NASTY), max_size=30) | st.text(max_size=30)


def event(**values):
    base = {"key": "k" * 64, "kind": "live-migration", "hpath": "instance-migrate",
            "cluster": "c1", "master": "m1", "instance": "i1", "source": "n1", "target": "n2",
            "start_ms": 1_700_000_000_000, "end_ms": 1_700_000_012_345}
    return {**base, **values}


@settings(max_examples=200, deadline=None)
@given(instance=hostile, cluster=hostile, source=hostile, template=hostile)
def test_hostile_values_and_templates_give_exact_json(instance, cluster, source, template):
    ev = event(instance=instance, cluster=cluster, source=source)
    cfg = {**SETTINGS, "slack_template": "$instance|$cluster|$source|" + template,
           "grafana_template": "$instance", "webhook_template": template}
    for sink in (slack, grafana, webhook):
        body = sink.payload(ev, cfg)
        assert json.loads(dumps(body).decode("utf-8")) == body  # valid JSON, round trip
    # values are substituted verbatim (Slack: &<> escaped), never re-interpreted
    text = slack.payload(ev, cfg)["text"]
    expected_head = "|".join(slack.escape(v) for v in (instance, cluster, source)) + "|"
    assert text.startswith(expected_head)
    assert grafana.payload(ev, cfg)["text"] == instance
    assert grafana.payload(ev, cfg)["tags"][0] == instance
    assert webhook.payload(ev, cfg)["instance"] == instance


@given(value=hostile)
def test_slack_escaping_leaves_no_control_characters_of_slack(value):
    escaped = slack.escape(value)
    assert "<" not in escaped and ">" not in escaped
    assert escaped.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "").count("&") == 0


def test_unknown_and_malformed_placeholders_are_left_as_written():
    assert render("$nope ${instance} $$ ${ $", event()) == "$nope i1 $ ${ $"


def test_only_whitelisted_fields_reach_a_template():
    assert render("$key $hpath $start_ms", event()) == "$key $hpath $start_ms"
    assert set(TEMPLATE_FIELDS) == {
        name for _, name, _, _ in string.Template.pattern.findall(
            " ".join(f"${f}" for f in TEMPLATE_FIELDS))}


def test_grafana_region_body_is_the_documented_shape():
    body = grafana.payload(event(), {**SETTINGS, "grafana_extra_tags": ["dc1"]})
    assert body == {"time": 1_700_000_000_000, "timeEnd": 1_700_000_012_345,
                    "tags": ["i1", "ganeti-live-migration", "source:n1", "target:n2", "dc1"],
                    "text": "Ganeti live migration of i1: n1 → n2 (12.3 s)"}
    body = grafana.payload(event(), {**SETTINGS, "grafana_dashboard_uid": "abc",
                                     "grafana_panel_id": 4})
    assert (body["dashboardUID"], body["panelId"]) == ("abc", 4)
    url, headers = grafana.request(b"{}", {**SETTINGS, "grafana_token_file": "/x",
                                           "grafana_url": "https://g.example/"},
                                   lambda key: "tok")
    assert url == "https://g.example/api/annotations"
    assert headers["Authorization"] == "Bearer tok"


def test_webhook_signature_is_hmac_sha256_of_the_exact_body():
    body = dumps(webhook.payload(event(), SETTINGS))
    expected = hmac.new(b"key", body, hashlib.sha256).hexdigest()
    assert webhook.signature("key", body) == f"sha256={expected}"
    # same event, same bytes: a retry carries the same signature
    assert dumps(webhook.payload(event(), SETTINGS)) == body


@given(key=st.text(max_size=100), body=st.binary(max_size=300))
def test_signature_equals_the_standard_library_hmac(key, body):
    expected = hmac.new(key.encode("utf-8"), body, hashlib.sha256).hexdigest()
    assert webhook.signature(key, body) == f"sha256={expected}"
