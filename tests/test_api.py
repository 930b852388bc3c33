"""The HTTP contract of docs/api.md over a real loopback socket: every route, every error row,
bad input never a 500, and the OpenAPI document describing what the routes really answer."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
import pytest_twisted
import treq
from apiharness import OPERATOR_KEY, PAYMENT, ApiHarness, api_config, ready
from conftest import test_config
from domain_helpers import FIRST8, LAST8
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from idtronic_tel.api.app import build_router
from idtronic_tel.api.errors import STATUS
from idtronic_tel.api.resource import REASONS
from idtronic_tel.api.routing import Call, Reply


@pytest.fixture
def harness(sqlite_url: str) -> AsyncIterator[ApiHarness]:
    h = ApiHarness(sqlite_url, api_config(test_config()))
    yield h
    pytest_twisted.blockon(Deferred.fromCoroutine(h.stop()))


def token_of(text: str) -> str:
    match = re.search(r"code (\d{6})", text)
    assert match, "no token in the SMS"
    return match.group(1)


@pytest_twisted.ensureDeferred
async def test_payment_happy_path_and_errors(harness: ApiHarness) -> None:
    h = harness
    key, _identifier, payment = await ready(h)
    [(mobile, text)] = await h.sent_sms()
    assert mobile == "+33611223344"
    token = token_of(text)
    wrong = "000000" if token != "000000" else "111111"

    got = await h.call("GET", f"/v1/payments/{payment}", key=key)
    assert got.status == 200 and got.body["sms"] == "submitted" and got.body["status"] == "pending"
    assert token not in str(got.body)

    bad = await h.call("POST", f"/v1/payments/{payment}/confirm", {"token": wrong}, key)
    assert (bad.status, bad.body["error"], bad.body["attempts_remaining"]) == (422, "invalid_token", 2)
    ok = await h.call("POST", f"/v1/payments/{payment}/confirm", {"token": token}, key)
    assert ok.status == 200 and ok.body["status"] == "validated" and ok.body["validated_at"]
    again = await h.call("POST", f"/v1/payments/{payment}/confirm", {"token": token}, key)
    assert again.status == 409 and again.body == {
        "error": "not_pending",
        "message": "the payment is not pending",
        "status": "validated",
    }
    for action in ("resend", "cancel"):
        late = await h.call("POST", f"/v1/payments/{payment}/{action}", key=key)
        assert late.status == 409 and late.body["status"] == "validated"


@pytest_twisted.ensureDeferred
async def test_authentication_and_merchant_isolation(harness: ApiHarness) -> None:
    h = harness
    key, _, payment = await ready(h)
    _, other_key = await h.merchant("Autre")
    for credential in (None, "Bearer nope", "Basic " + key, OPERATOR_KEY):
        answer = await h.call("GET", f"/v1/payments/{payment}", key=credential)
        assert answer.status == 401 and answer.body["error"] == "unauthorized"
    theirs = await h.call("GET", f"/v1/payments/{payment}", key=other_key)
    missing = await h.call("GET", "/v1/payments/pay_doesnotexist", key=other_key)
    assert theirs.status == missing.status == 404 and theirs.body == missing.body
    admin = await h.call("GET", "/v1/admin/status", key=key)
    assert admin.status == 401


@pytest_twisted.ensureDeferred
async def test_payment_refusals_are_identical(harness: ApiHarness) -> None:
    h = harness
    key, identifier, _ = await ready(h)
    bodies = []
    for target in ("1234567897", identifier):
        if target == identifier:
            assert (
                await h.call("POST", f"/v1/admin/cardholders/{identifier}/lock", {}, OPERATOR_KEY)
            ).status == 200
        answer = await h.call("POST", "/v1/payments", {**PAYMENT, "identifier": target}, key)
        assert answer.status == 422
        bodies.append(answer.body)
    assert bodies[0] == bodies[1] and bodies[0]["error"] == "payment_refused"
    await h.call("POST", f"/v1/admin/cardholders/{identifier}/unlock", {}, OPERATOR_KEY)
    assert (await h.call("POST", "/v1/payments", {**PAYMENT, "identifier": identifier}, key)).status == 201


@pytest_twisted.ensureDeferred
async def test_invalid_fields_and_bad_bodies_never_500(harness: ApiHarness) -> None:
    h = harness
    key, identifier, payment = await ready(h)
    cases = [
        ({**PAYMENT, "identifier": identifier, "amount": 0}, 422, "invalid_fields"),
        ({**PAYMENT, "identifier": identifier, "amount": "12"}, 422, "invalid_fields"),
        ({**PAYMENT, "identifier": identifier, "amount": True}, 422, "invalid_fields"),
        ({**PAYMENT, "identifier": identifier, "currency": "EU"}, 422, "invalid_fields"),
        ({**PAYMENT, "identifier": "123"}, 422, "invalid_fields"),
        ({**PAYMENT, "identifier": identifier, "card": "4111"}, 400, "unknown_fields"),
        ([1, 2], 400, "invalid_json"),
    ]
    for body, status, code in cases:
        answer = await h.call("POST", "/v1/payments", body, key)
        assert (answer.status, answer.body["error"]) == (status, code), (body, answer.body)
    malformed = await h.call("POST", "/v1/payments", raw=b'{"amount": 12,', key=key)
    assert (malformed.status, malformed.body["error"]) == (400, "invalid_json")
    huge = await h.call("POST", "/v1/payments", raw=b'{"reference": "' + b"x" * 70000 + b'"}', key=key)
    assert (huge.status, huge.body["error"]) == (413, "body_too_large")
    form = await h.call("POST", "/v1/payments", raw=b"a=b", key=key, headers={"content-type": "text/plain"})
    assert form.status == 415
    short = await h.call("POST", f"/v1/payments/{payment}/confirm", {"token": "12a"}, key)
    assert (short.status, short.body["error"]) == (422, "invalid_fields")
    assert (await h.call("GET", "/v1/nothing-here")).status == 404
    wrong_method = await h.call("PUT", "/v1/payments", {}, key)
    assert wrong_method.status == 405 and wrong_method.header("allow") == "POST"


@pytest_twisted.ensureDeferred
async def test_fuzzed_bodies_get_a_4xx(harness: ApiHarness) -> None:
    h = harness
    key, _, payment = await ready(h)
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
        ),
        max_leaves=12,
    )
    seen = []

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(json_values, st.binary(max_size=200)))
    def collect(value: object) -> None:
        seen.append(value)

    collect()
    import json as _json

    for value in seen:
        raw = value if isinstance(value, bytes) else _json.dumps(value).encode()
        for path in (
            "/v1/payments",
            f"/v1/payments/{payment}/confirm",
            "/v1/enrollments",
            "/v1/profile/sessions",
        ):
            answer = await h.call("POST", path, raw=raw, key=key)
            assert 400 <= answer.status < 500, (path, raw, answer.status, answer.body)
            assert isinstance(answer.body, dict) and "error" in answer.body


@pytest_twisted.ensureDeferred
async def test_idempotency_key(harness: ApiHarness) -> None:
    h = harness
    _, key = await h.merchant()
    identifier = await h.active_cardholder(FIRST8, LAST8)
    body = {**PAYMENT, "identifier": identifier}
    first = await h.call("POST", "/v1/payments", body, key, headers={"idempotency-key": "k1"})
    second = await h.call("POST", "/v1/payments", body, key, headers={"idempotency-key": "k1"})
    assert first.status == second.status == 201 and first.body == second.body
    assert len(await h.sent_sms()) == 1
    other = await h.call(
        "POST", "/v1/payments", {**body, "amount": 1}, key, headers={"idempotency-key": "k1"}
    )
    assert (other.status, other.body["error"]) == (409, "idempotency_conflict")


@pytest_twisted.ensureDeferred
async def test_resend_rate_limits_with_retry_after(harness: ApiHarness) -> None:
    h = harness
    key, identifier, payment = await ready(h)
    soon = await h.call("POST", f"/v1/payments/{payment}/resend", key=key)
    assert soon.status == 429 and 1 <= int(soon.header("retry-after") or 0) <= 30
    for n in range(4):  # 1 payment + 4 more = 5 tokens in 10 minutes for this cardholder
        assert (
            await h.call(
                "POST", "/v1/payments", {**PAYMENT, "identifier": identifier, "reference": f"r{n}"}, key
            )
        ).status == 201
    limited = await h.call("POST", "/v1/payments", {**PAYMENT, "identifier": identifier}, key)
    assert limited.status == 429 and int(limited.header("retry-after") or 0) > 0


@pytest_twisted.ensureDeferred
async def test_merchant_rate_limit(sqlite_url: str) -> None:
    h = ApiHarness(sqlite_url, api_config(test_config(), merchant_requests_per_minute=4))
    try:
        _, key = await h.merchant()
        statuses = [(await h.call("GET", "/v1/payments/pay_x", key=key)).status for _ in range(3)]
        assert statuses[0] == 404 and statuses[-1] == 429
        limited = await h.call("GET", "/v1/payments/pay_x", key=key)
        assert limited.status == 429 and int(limited.header("retry-after") or 0) >= 1
    finally:
        await h.stop()


@pytest_twisted.ensureDeferred
async def test_suspension_answers_503_and_resumes(harness: ApiHarness) -> None:
    h = harness
    key, identifier, payment = await ready(h)
    on = await h.call("POST", "/v1/admin/suspension", {"notice": "Maintenance jusqu'à 6h"}, OPERATOR_KEY)
    assert on.status == 200 and on.body["suspended"] is True
    h.core._forget()
    for method, path, auth in (
        ("GET", f"/v1/payments/{payment}", key),
        ("POST", "/v1/enrollments", None),
        ("GET", f"/v1/enrollments/{identifier}", None),
    ):
        answer = await h.call(method, path, {} if method == "POST" else None, auth)
        assert answer.status == 503, (path, answer.body)
        assert answer.body == {
            "error": "service_suspended",
            "message": "the service is suspended",
            "notice": "Maintenance jusqu'à 6h",
        }
        assert int(answer.header("retry-after") or 0) > 0
    assert (await h.call("GET", "/v1/notice")).body == {"suspended": True, "notice": "Maintenance jusqu'à 6h"}
    assert await h.sent_sms() == []  # nothing leaves while suspended
    off = await h.call("DELETE", "/v1/admin/suspension", key=OPERATOR_KEY)
    assert off.status == 200 and off.body["suspended"] is False
    assert (await h.call("GET", f"/v1/payments/{payment}", key=key)).status == 200
    assert len(await h.sent_sms()) == 1  # the queued SMS leaves on resume


@pytest_twisted.ensureDeferred
async def test_suspend_one_merchant_or_cardholder(harness: ApiHarness) -> None:
    h = harness
    key, identifier, payment = await ready(h)
    merchant_id = (await h.call("GET", "/v1/admin/merchants", key=OPERATOR_KEY)).body["merchants"][0]["id"]
    await h.call("POST", "/v1/admin/suspension", {"notice": "contrat", "merchant": merchant_id}, OPERATOR_KEY)
    h.core._forget()
    assert (await h.call("GET", f"/v1/payments/{payment}", key=key)).body["notice"] == "contrat"
    await h.call("DELETE", f"/v1/admin/suspension?merchant={merchant_id}", key=OPERATOR_KEY)
    await h.call("POST", "/v1/admin/suspension", {"notice": "x", "cardholder": identifier}, OPERATOR_KEY)
    refused = await h.call("POST", "/v1/payments", {**PAYMENT, "identifier": identifier}, key)
    assert refused.body["error"] == "payment_refused"
    unknown = await h.call(
        "POST", "/v1/admin/suspension", {"notice": "x", "cardholder": "1234567897"}, OPERATOR_KEY
    )
    assert unknown.status == 404


@pytest_twisted.ensureDeferred
async def test_enrollment_routes(harness: ApiHarness) -> None:
    h = harness
    fields = {
        "last_name": "Durand",
        "first_name": "Paul",
        "birth_date": "1970-01-31",
        "mobile": "+33698765432",
        "card_first8": FIRST8,
    }
    created = await h.call("POST", "/v1/enrollments", fields)
    assert created.status == 201 and created.body["status"] == "awaiting_callback"
    identifier = created.body["identifier"]
    status = await h.call("GET", f"/v1/enrollments/{identifier}")
    assert (
        status.status == 200 and status.body["status"] == "awaiting_callback" and status.body["next_call_at"]
    )
    early = await h.call("POST", f"/v1/enrollments/{identifier}/callback")
    assert early.status == 409
    for _ in range(3):
        assert await h.answer_callback("00000000") in ("retry", "failed")
        break
    jobs = await h.calls.claim_due("t", 10)
    assert jobs == []  # the call is still the same attempt: entries were consumed by end_call above
    assert (await h.call("GET", "/v1/enrollments/0000000000")).status == 404
    bad = await h.call("POST", "/v1/enrollments", {**fields, "mobile": "0145678900"})
    assert bad.status == 422 and bad.body["fields"]["mobile"] == "not a mobile number"
    phone = await h.call("POST", "/v1/admin/enrollments", {**fields, "channel": "fax"}, OPERATOR_KEY)
    assert phone.status == 201
    web_only = await h.call("POST", "/v1/admin/enrollments", {**fields, "channel": "web"}, OPERATOR_KEY)
    assert web_only.status == 422


@pytest_twisted.ensureDeferred
async def test_failed_enrollment_can_ask_a_new_callback(harness: ApiHarness) -> None:
    h = harness
    fields = {
        "last_name": "Durand",
        "first_name": "Paul",
        "birth_date": "1970-01-31",
        "mobile": "+33698765432",
        "card_first8": FIRST8,
    }
    identifier = (await h.call("POST", "/v1/enrollments", fields)).body["identifier"]
    jobs = await h.calls.claim_due("t", 10)
    await h.ivr.start_call(jobs[0].attempt_id)
    for _ in range(3):
        await h.ivr.check_card_digits(jobs[0].attempt_id, "11111111")
    assert (await h.call("GET", f"/v1/enrollments/{identifier}")).body["status"] == "failed"
    again = await h.call("POST", f"/v1/enrollments/{identifier}/callback")
    assert again.status == 202 and again.body["status"] == "awaiting_callback"
    assert await h.answer_callback(LAST8) == "accepted"
    assert (await h.call("GET", f"/v1/enrollments/{identifier}")).body["status"] == "active"


@pytest_twisted.ensureDeferred
async def test_profile_routes(harness: ApiHarness) -> None:
    h = harness
    identifier = await h.active_cardholder(FIRST8, LAST8)
    for target in (identifier, "1234567897"):
        answer = await h.call("POST", "/v1/profile/challenges", {"identifier": target})
        assert answer.status == 202
    [(_, text)] = await h.sent_sms()
    wrong = await h.call(
        "POST",
        "/v1/profile/sessions",
        {"identifier": identifier, "token": "000000" if token_of(text) != "000000" else "111111"},
    )
    assert wrong.status == 422 and wrong.body["error"] == "invalid_token"
    opened = await h.call("POST", "/v1/profile/sessions", {"identifier": identifier, "token": token_of(text)})
    assert opened.status == 201
    session = "Session " + opened.body["session"]
    profile = await h.call("GET", "/v1/profile", key=session)
    assert profile.status == 200 and profile.body["card"] == FIRST8[:6] + "******" + LAST8[-4:]
    patched = await h.call("PATCH", "/v1/profile", {"mobile": "06 98 76 54 32"}, session)
    assert patched.status == 200 and patched.body["mobile_pending"] == "+33698765432"
    assert patched.body["mobile"] == "+33611223344"
    for credential in (None, "Session nope", "Bearer " + opened.body["session"]):
        assert (await h.call("GET", "/v1/profile", key=credential)).status == 401
    bad = await h.call("PATCH", "/v1/profile", {"birth_date": "yesterday"}, session)
    assert bad.status == 422


@pytest_twisted.ensureDeferred
async def test_operator_routes(harness: ApiHarness) -> None:
    h = harness
    merchant_id, key = await h.merchant("Boutique", "boutique.example.fr")
    assert key.startswith("idt_live_") and len(key) > 40
    listing = await h.call("GET", "/v1/admin/merchants", key=OPERATOR_KEY)
    assert key not in str(listing.body) and listing.body["merchants"][0]["domain"] == "boutique.example.fr"
    rotated = await h.call("POST", f"/v1/admin/merchants/{merchant_id}/rotate-key", key=OPERATOR_KEY)
    assert rotated.status == 200 and rotated.body["api_key"] != key
    h.core._forget()
    assert (await h.call("GET", "/v1/payments/x", key=key)).status == 401
    assert (await h.call("GET", "/v1/payments/x", key=rotated.body["api_key"])).status == 404
    removed = await h.call("DELETE", f"/v1/admin/merchants/{merchant_id}", key=OPERATOR_KEY)
    assert removed.status == 204
    h.core._forget()
    assert (await h.call("GET", "/v1/payments/x", key=rotated.body["api_key"])).status == 401
    assert (await h.call("DELETE", f"/v1/admin/merchants/{merchant_id}", key=OPERATOR_KEY)).status == 404
    bad_domain = await h.call(
        "POST", "/v1/admin/merchants", {"name": "x", "domain": "not a domain"}, OPERATOR_KEY
    )
    assert bad_domain.status == 422
    status = await h.call("GET", "/v1/admin/status", key=OPERATOR_KEY)
    assert status.status == 200 and status.body["links"] == {
        "ami": "not configured",
        "smpp": "not configured",
    }
    assert "queues" in status.body
    assert (await h.call("GET", "/v1/admin/status", key="Bearer wrong")).status == 401


@pytest_twisted.ensureDeferred
async def test_health_metrics_and_pages(harness: ApiHarness) -> None:
    h = harness
    health = await h.call("GET", "/healthz")
    assert health.status == 200 and health.body["database"] == "up"
    assert (await h.call("GET", "/metrics")).status == 401  # on the API listener: the operator's key
    metrics = await h.call("GET", "/metrics", key=OPERATOR_KEY)
    assert metrics.status == 200 and b"idtronic_http_requests_total" in metrics.body
    page = await h.call("GET", "/")
    assert page.status == 200 and b'id="enroll-form"' in page.body
    assert "default-src 'none'" in (page.header("content-security-policy") or "")


@pytest_twisted.ensureDeferred
async def test_health_is_degraded_but_200_when_a_listener_or_link_is_down(harness: ApiHarness) -> None:
    def health(links: dict[str, Any], listeners: dict[str, str]) -> Deferred[Reply]:
        router = build_router(harness.core, lambda: links, lambda: listeners)
        route = next(r for r in router.routes if r.template == "/healthz")
        return Deferred.fromCoroutine(route.handler(Call(None, {}, {}, "127.0.0.1")))  # type: ignore[arg-type]

    up = {"http": "up", "fastagi": "up"}
    fine = await health({"ami": "up", "smpp": {"smsc1": "bound"}}, up)
    assert (fine.status, fine.body["status"], fine.body["listeners"]) == (200, "ok", up)
    for links, listeners in [
        ({"ami": "down", "smpp": "not configured"}, up),
        ({"ami": "not configured", "smpp": {"smsc1": "bound", "smsc2": "down"}}, up),
        ({"ami": "up", "smpp": "not configured"}, {"http": "up", "fastagi": "down"}),
    ]:
        degraded = await health(links, listeners)
        assert (degraded.status, degraded.body["status"]) == (200, "degraded"), (links, listeners)


@pytest_twisted.ensureDeferred
async def test_every_status_has_its_reason_phrase_and_a_wrong_check_digit_says_so(
    harness: ApiHarness, sqlite_url: str
) -> None:
    h = harness
    sent = {s for r in build_router(h.core, dict).routes for s in r.responses} | set(STATUS.values())
    assert sent | {500} <= set(REASONS)
    key, identifier, _ = await ready(h)
    typo = identifier[:9] + str((int(identifier[9]) + 1) % 10)
    headers = {"authorization": [f"Bearer {key}"], "content-type": ["application/json"]}
    for wrong, problem in [(typo, "wrong check digit"), ("123456789", "a 10-digit identification number")]:
        body = json.dumps({**PAYMENT, "identifier": wrong}).encode()
        answer = await treq.post(h.base + "/v1/payments", body, headers=headers, persistent=False)
        assert (answer.code, answer.phrase) == (422, b"Unprocessable Content")
        assert (await answer.json())["fields"]["identifier"].startswith(problem)
    limited = ApiHarness(sqlite_url, api_config(test_config(), public_requests_per_minute=1))
    try:
        for expected in (b"Accepted", b"Too Many Requests"):
            answer = await treq.post(
                limited.base + "/v1/profile/challenges",
                json.dumps({"identifier": identifier}).encode(),
                headers={"content-type": ["application/json"]},
                persistent=False,
            )
            await answer.content()
            assert answer.phrase == expected
    finally:
        await limited.stop()


@pytest_twisted.ensureDeferred
async def test_health_says_503_when_the_database_is_gone(harness: ApiHarness) -> None:
    h = harness
    h.pool.engine.dispose()
    from sqlalchemy import create_engine

    h.pool.engine.url  # noqa: B018 - the same engine object is used by the pool's sessions
    h.pool._sessions.configure(bind=create_engine("sqlite:////nonexistent/dir/db.sqlite"))
    health = await h.call("GET", "/healthz")
    assert health.status == 503 and health.body["database"] == "down"


# ---- the OpenAPI document ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_openapi_describes_every_route_and_every_answer(harness: ApiHarness) -> None:
    h = harness
    spec = (await h.call("GET", "/v1/openapi.json")).body
    assert spec["openapi"].startswith("3.1")
    router = build_router(h.core, lambda: {})
    declared = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    served = {(r.method, r.template) for r in router.routes if r.auth != "public"}
    assert declared == served

    def check(method: str, template: str, answer: object) -> None:
        operation = spec["paths"][template][method.lower()]
        status = str(answer.status)  # type: ignore[attr-defined]
        assert status in operation["responses"], f"{method} {template} answered undeclared {status}"
        content = operation["responses"][status].get("content", {})
        schema = content.get("application/json", {}).get("schema")
        if schema is not None:
            resolver_doc = {**spec, **schema}
            jsonschema.validate(answer.body, resolver_doc)  # type: ignore[attr-defined]

    key, identifier, payment = await ready(h)
    [(_, text)] = await h.sent_sms()
    merchant_id = (await h.call("GET", "/v1/admin/merchants", key=OPERATOR_KEY)).body["merchants"][0]["id"]
    base_enroll = {
        "last_name": "A",
        "first_name": "B",
        "birth_date": "1980-01-01",
        "mobile": "0611223344",
        "card_first8": FIRST8,
    }
    script = [
        ("POST", "/v1/payments", "/v1/payments", {**PAYMENT, "identifier": identifier}, key),
        ("POST", "/v1/payments", "/v1/payments", {**PAYMENT, "identifier": "1"}, key),
        ("POST", "/v1/payments", "/v1/payments", {}, None),
        ("GET", "/v1/payments/{id}", f"/v1/payments/{payment}", None, key),
        ("GET", "/v1/payments/{id}", "/v1/payments/nope", None, key),
        (
            "POST",
            "/v1/payments/{id}/confirm",
            f"/v1/payments/{payment}/confirm",
            {"token": "000000" if token_of(text) != "000000" else "111111"},
            key,
        ),
        (
            "POST",
            "/v1/payments/{id}/confirm",
            f"/v1/payments/{payment}/confirm",
            {"token": token_of(text)},
            key,
        ),
        (
            "POST",
            "/v1/payments/{id}/confirm",
            f"/v1/payments/{payment}/confirm",
            {"token": token_of(text)},
            key,
        ),
        ("POST", "/v1/payments/{id}/resend", f"/v1/payments/{payment}/resend", None, key),
        ("POST", "/v1/payments/{id}/cancel", f"/v1/payments/{payment}/cancel", None, key),
        ("POST", "/v1/enrollments", "/v1/enrollments", base_enroll, None),
        ("POST", "/v1/enrollments", "/v1/enrollments", {**base_enroll, "mobile": "x"}, None),
        ("GET", "/v1/enrollments/{identifier}", f"/v1/enrollments/{identifier}", None, None),
        ("GET", "/v1/enrollments/{identifier}", "/v1/enrollments/1234567897", None, None),
        (
            "POST",
            "/v1/enrollments/{identifier}/callback",
            f"/v1/enrollments/{identifier}/callback",
            None,
            None,
        ),
        ("POST", "/v1/profile/challenges", "/v1/profile/challenges", {"identifier": identifier}, None),
        (
            "POST",
            "/v1/profile/sessions",
            "/v1/profile/sessions",
            {"identifier": identifier, "token": "000000"},
            None,
        ),
        ("GET", "/v1/profile", "/v1/profile", None, "Session nope"),
        ("PATCH", "/v1/profile", "/v1/profile", {"first_name": "C"}, "Session nope"),
        ("POST", "/v1/admin/merchants", "/v1/admin/merchants", {"name": "Z"}, OPERATOR_KEY),
        ("GET", "/v1/admin/merchants", "/v1/admin/merchants", None, OPERATOR_KEY),
        (
            "POST",
            "/v1/admin/merchants/{id}/rotate-key",
            f"/v1/admin/merchants/{merchant_id}/rotate-key",
            None,
            OPERATOR_KEY,
        ),
        (
            "POST",
            "/v1/admin/enrollments",
            "/v1/admin/enrollments",
            {**base_enroll, "channel": "phone"},
            OPERATOR_KEY,
        ),
        (
            "POST",
            "/v1/admin/cardholders/{identifier}/lock",
            f"/v1/admin/cardholders/{identifier}/lock",
            {"reason": "x"},
            OPERATOR_KEY,
        ),
        (
            "POST",
            "/v1/admin/cardholders/{identifier}/unlock",
            f"/v1/admin/cardholders/{identifier}/unlock",
            None,
            OPERATOR_KEY,
        ),
        ("GET", "/v1/admin/status", "/v1/admin/status", None, OPERATOR_KEY),
        ("GET", "/v1/admin/status", "/v1/admin/status", None, None),
        ("POST", "/v1/admin/suspension", "/v1/admin/suspension", {"notice": "n"}, OPERATOR_KEY),
        ("GET", "/v1/notice", "/v1/notice", None, None),
        ("DELETE", "/v1/admin/suspension", "/v1/admin/suspension", None, OPERATOR_KEY),
        ("DELETE", "/v1/admin/merchants/{id}", f"/v1/admin/merchants/{merchant_id}", None, OPERATOR_KEY),
        ("GET", "/healthz", "/healthz", None, None),
        ("GET", "/metrics", "/metrics", None, None),
        ("GET", "/v1/openapi.json", "/v1/openapi.json", None, None),
    ]
    exercised = set()
    for method, template, path, body, auth in script:
        answer = await h.call(method, path, body, auth)
        if template == "/v1/admin/suspension" and method == "POST":
            h.core._forget()
        check(method, template, answer)
        exercised.add((method, template))
    assert exercised == served, f"not exercised: {served - exercised}"


@pytest_twisted.ensureDeferred
async def test_public_routes_are_limited_per_identifier(sqlite_url: str) -> None:
    h = ApiHarness(sqlite_url, api_config(test_config(), identifier_requests_per_hour=2))
    try:
        reads = [(await h.call("GET", "/v1/enrollments/1234567897")).status for _ in range(5)]
        assert reads == [404] * 5  # status reads count against the address only
        challenges = [
            (await h.call("POST", "/v1/profile/challenges", {"identifier": "1234567897"})).status
            for _ in range(2)
        ]
        limited = await h.call("POST", "/v1/profile/challenges", {"identifier": "1234567897"})
        assert challenges == [202, 202] and limited.status == 429  # 2 per identifier and hour
        assert int(limited.header("retry-after") or 0) > 60
        other = await h.call("POST", "/v1/profile/challenges", {"identifier": "5555555557"})
        assert other.status == 202  # another identifier
    finally:
        await h.stop()


@pytest_twisted.ensureDeferred
async def test_public_routes_are_limited_per_address_before_the_body_is_read(sqlite_url: str) -> None:
    h = ApiHarness(sqlite_url, api_config(test_config(), public_requests_per_minute=4))
    try:
        statuses = [(await h.call("POST", "/v1/enrollments", {})).status for _ in range(3)]
        assert statuses == [422, 422, 429]  # 4 per minute, 2 at once
        limited = await h.call("POST", "/v1/enrollments", raw=b"not even json")
        assert limited.status == 429 and 1 <= int(limited.header("retry-after") or 0) <= 60
    finally:
        await h.stop()
