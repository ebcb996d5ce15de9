"""Every page carries a strict Content-Security-Policy; templates hold no inline script; browsers'
violation reports are counted in /metrics and malformed ones are refused."""

import json
import re
from pathlib import Path

import pytest
from django.test import override_settings
from prometheus_client import REGISTRY

from tests.factories import three_arm_study

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t" * 40
TEMPLATE_DIRS = [ROOT / "webapp" / "templates", ROOT / "studies" / "templates"]
TEMPLATE_DIRS += [ROOT / "training" / "templates"]


def policy(response) -> dict[str, list[str]]:
    header = response.headers.get("Content-Security-Policy", "")
    directives = [d.split() for d in header.split(";") if d.strip()]
    return {d[0]: d[1:] for d in directives}


def violations(directive: str) -> float:
    value = REGISTRY.get_sample_value("collabllm_csp_violations_total", {"directive": directive})
    return value or 0.0


def report(directive: str = "script-src-elem", **extra: str) -> bytes:
    body = {
        "document-uri": "http://testserver/s/demo/chat/?PROLIFIC_PID=secret",
        "effective-directive": directive,
        "violated-directive": directive,
        "blocked-uri": "inline",
        **extra,
    }
    return json.dumps({"csp-report": body}).encode()


def post_report(client, body: bytes, content_type: str = "application/csp-report"):
    return client.generic("POST", "/csp-report", body, content_type=content_type)


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/admin/login/", "/s/csp-study/", "/healthz"])
def test_pages_allow_scripts_only_from_the_site(client, url):
    three_arm_study(slug="csp-study")
    csp = policy(client.get(url))
    assert csp["script-src"] == ["'self'"]
    assert csp["default-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'self'"] and csp["form-action"] == ["'self'"]
    assert csp["report-uri"] == ["/csp-report"]


@pytest.mark.django_db
def test_admin_pages_carry_the_policy_too(admin_client):
    csp = policy(admin_client.get("/admin/studies/study/"))
    assert csp["script-src"] == ["'self'"] and "'unsafe-inline'" not in str(csp)


def test_no_template_holds_an_inline_script_or_handler():
    inline_script = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
    handler = re.compile(r"<[^>]*\s(on[a-z]+|hx-on[:\w-]*)\s*=", re.IGNORECASE)
    found = []
    for folder in TEMPLATE_DIRS:
        for path in folder.rglob("*.html"):
            text, name = path.read_text(), path.relative_to(ROOT)
            for pattern in (inline_script, handler):
                found += [f"{name}: {m.group(0)[:60]}" for m in pattern.finditer(text)]
    assert found == []


def test_htmx_is_told_not_to_inject_styles_or_eval():
    for path in ["webapp/templates/base.html", "studies/templates/admin/studies/study_page.html",
                 "training/templates/admin/training/run_page.html"]:  # fmt: skip
        text = (ROOT / path).read_text()
        assert '"includeIndicatorStyles":false' in text and '"allowEval":false' in text, path


@override_settings(METRICS_TOKEN=TOKEN)
def test_a_report_is_counted_by_directive_and_shown_in_metrics(client, caplog):
    before = violations("script-src-elem")
    assert post_report(client, report()).status_code == 204
    assert violations("script-src-elem") == before + 1
    scrape = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert b'collabllm_csp_violations_total{directive="script-src-elem"}' in scrape.content
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "webapp.cspreport")
    assert "script-src-elem" in logged and "secret" not in logged


def test_a_reporting_api_batch_counts_each_report(client):
    before = violations("img-src")
    batch = [
        {"type": "csp-violation", "body": {"effectiveDirective": "img-src", "blockedURL": "x"}},
        {"type": "csp-violation", "body": {"effectiveDirective": "img-src", "blockedURL": "y"}},
    ]
    response = post_report(client, json.dumps(batch).encode(), "application/reports+json")
    assert response.status_code == 204 and violations("img-src") == before + 2


def test_an_unknown_directive_is_counted_as_other(client):
    before, unknown = violations("other"), "x-made-up-" + "a" * 50
    assert post_report(client, report(unknown)).status_code == 204
    assert violations("other") == before + 1 and violations(unknown) == 0


MALFORMED = [
    b"not json",
    b"{}",
    b"[]",
    b'{"csp-report": "text"}',
    b'{"csp-report": {}}',
    b"\xff\xfe",
    b'[{"body": "text"}]',
    b'{"csp-report": {"effective-directive": 3}}',
]


@pytest.mark.parametrize("body", MALFORMED)
def test_a_malformed_report_gets_400_and_is_not_counted(client, body):
    before = sum(violations(d) for d in ["script-src-elem", "other", "img-src"])
    assert post_report(client, body).status_code == 400
    assert sum(violations(d) for d in ["script-src-elem", "other", "img-src"]) == before


def test_an_oversized_report_is_refused_unread(client):
    before = violations("script-src-elem")
    body = report(padding="p" * 20_000)
    assert post_report(client, body).status_code == 413
    assert violations("script-src-elem") == before


def test_the_report_endpoint_takes_only_post(client):
    assert client.get("/csp-report").status_code == 405
