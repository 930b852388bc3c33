"""One shape per resource (issue 8 §3) and one validator at the boundary (§4): the answers and the OpenAPI
schemas both come from the core's views; a request body is refused exactly where the published JSON
Schema refuses it, each wrong field named."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idtronic_tel.api import bodies, openapi
from idtronic_tel.api.app import build_router
from idtronic_tel.api.errors import ApiError
from idtronic_tel.core import views
from idtronic_tel.core.states import CardholderStatus, PaymentStatus

NOW = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.UTC)
SAMPLES: list[Any] = [
    views.Payment(
        "pay_1", PaymentStatus.PENDING, 4990, "EUR", "o-1", "", NOW, NOW, None, views.SmsShown.QUEUED, 3
    ),
    views.Enrollment("4970123456", CardholderStatus.AWAITING_CALLBACK, NOW),
    views.Enrollment("4970123456", CardholderStatus.ACTIVE, None),
    views.Profile("4970123456", "Martin", "Claire", dt.date(1985, 4, 12), "+33611223344", None, None),
    views.ProfileSession("idt_ses_x", 300),
    views.Lock("4970123456", True),
    views.MerchantKey("mch_1", "Boutique", None, "idt_live_x"),
    views.MerchantList((views.Merchant("mch_1", "Boutique", "shop.example.fr", "idt_live_ab…", False, NOW),)),
    views.Suspension(True, "Maintenance", None, None),
    views.Suspension(False, "", "4970123456", None),
]


@pytest.mark.parametrize("view", SAMPLES, ids=lambda v: type(v).__name__)
def test_each_answer_fits_the_schema_derived_from_its_view(view: Any) -> None:
    answer = views.wire(view)
    jsonschema.validate(answer, openapi.schema_of(type(view)))
    assert set(answer) <= {f.name for f in dataclasses.fields(view)}
    assert views.from_wire(type(view), answer) == view or isinstance(view, views.MerchantList)


def test_the_document_publishes_the_views_and_the_bodies_the_server_checks() -> None:
    spec = openapi.document(build_router(None, dict))  # type: ignore[arg-type]
    schemas = spec["components"]["schemas"]
    assert schemas["Payment"] == openapi.schema_of(views.Payment)
    assert schemas["Payment"]["properties"]["sms"]["enum"] == [s.value for s in views.SmsShown]
    create = spec["paths"]["/v1/payments"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == bodies.PAYMENT.json_schema()
    confirm = spec["paths"]["/v1/payments/{id}/confirm"]["post"]
    assert {"400", "401", "404", "409", "413", "415", "422", "429", "503"} <= set(confirm["responses"])
    assert "400" in create["responses"]  # an empty Idempotency-Key


def refused(schema: bodies.BodySchema, raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as caught:
        schema.parse(raw)
    return caught.value


def test_every_wrong_field_is_named_with_what_it_expects() -> None:
    error = refused(bodies.PAYMENT, b'{"identifier": "12", "amount": 0, "currency": "AAA", "reference": ""}')
    assert (error.status, error.extra["fields"]) == (
        422,
        {
            "identifier": "a 10-digit identification number",
            "amount": "an integer number of minor units, greater than 0",
            "currency": "an ISO 4217 currency code such as EUR",
            "reference": "1 to 200 characters",
        },
    )
    assert refused(bodies.TOKEN, b"{}").extra["fields"] == {"token": "required"}
    unknown = refused(bodies.TOKEN, b'{"token": "123456", "extra": 1}')
    assert (unknown.status, unknown.extra["fields"]) == (400, ["extra"])
    assert (
        bodies.PAYMENT.parse(
            b'{"identifier": "4970123456", "amount": 12.0, "currency": "EUR", "reference": "r"}'
        )["amount"]
        == 12
    )


VALUES = (
    st.from_regex(r"[0-9]{6}|[0-9]{10}", fullmatch=True)
    | st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=12)
    | st.integers()
    | st.none()
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.dictionaries(st.sampled_from(["token", "identifier", "other"]), VALUES))
def test_the_validator_agrees_with_the_published_schema(body: dict[str, Any]) -> None:
    schema = bodies.SESSION.json_schema()
    valid = jsonschema.Draft202012Validator(schema).is_valid(body)
    try:
        bodies.SESSION.parse(json.dumps(body).encode())
    except ApiError as error:
        assert not valid and error.status in (400, 422), error.body()
    else:
        assert valid
