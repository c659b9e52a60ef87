"""Medioot (service/profiles/medioot.toml): normalising its postbacks and answering in its
convention.

Also `loggable()` from service/providers/base.py, which decides what the postback log keeps.
"""

from __future__ import annotations

import json
from decimal import Decimal
from urllib.parse import urlencode

import pytest

from service.domain.events import EventType, Outcome, Postback, Signed
from service.providers.base import Inbound, Invalid, Unauthenticated, loggable
from service.settings import Provider
from tests.helpers import MEDIOOT_SECRET, md5, medioot_wall
from tests.helpers import medioot as signed

PROVIDER = Provider(name="medioot-app", protocol="medioot", secret=MEDIOOT_SECRET)
FORM = "application/x-www-form-urlencoded"

MEDIOOT = medioot_wall()


def get(params: dict[str, str] | list[tuple[str, str]]) -> Inbound:
    pairs = tuple(params.items()) if isinstance(params, dict) else tuple(params)
    return Inbound(method="GET", query=pairs, content_type="", body=b"", client_ip=None)


def post(body: bytes, content_type: str, query: tuple[tuple[str, str], ...] = ()) -> Inbound:
    return Inbound(method="POST", query=query, content_type=content_type, body=body, client_ip=None)


def normalise(inbound: Inbound) -> Postback:
    return MEDIOOT.normalise(PROVIDER, inbound)


def invalid(inbound: Inbound) -> str:
    with pytest.raises(Invalid) as info:
        normalise(inbound)
    assert type(info.value) is Invalid
    assert info.value.status == 400
    assert info.value.outcome is Outcome.INVALID
    return info.value.detail


def unauthenticated(inbound: Inbound) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        normalise(inbound)
    assert info.value.status == 403
    assert info.value.outcome is Outcome.REJECTED
    return info.value


# --- valid postbacks -----------------------------------------------------------------------------


def test_credit() -> None:
    extra = {
        "payout": "0.35",
        "userIp": "203.0.113.9",
        "campaign_id": "c-77",
        "offer_type": "cpa",
        "country": "DE",
        "uuid": "click-123",
        "offer_name": "Install & open",
    }
    params = signed("user-1", "T100", "10.50", "1", **extra)
    postback = normalise(get(params))
    assert postback == Postback(
        provider="medioot-app",
        key="credit:T100",
        type=EventType.CREDITED,
        user_id="user-1",
        amount=Decimal("10.50"),
        provider_ref="T100",
        test=False,
        data={
            "payout": "0.35",
            "userip": "203.0.113.9",
            "campaign_id": "c-77",
            "offer_type": "cpa",
            "country": "DE",
            "uuid": "click-123",
            "offer_name": "Install & open",
        },
        signed=Signed.of(params["signature"], "user-1", "T100", "10.50"),
    )
    assert str(postback.amount) == "10.50"


def test_a_boundary_shift_keeps_the_signature_but_not_the_signed_values() -> None:
    genuine = normalise(get(signed("1001", "58231", "2.50")))
    sig = signed("1001", "58231", "2.50")["signature"]
    shifted = {"subid": "1001", "transid": "5", "reward": "82312.50", "status": "1"}
    moved = normalise(get({**shifted, "signature": sig}))  # md5 has no field separators
    assert genuine.signed is not None and moved.signed is not None
    assert moved.signed.signature == genuine.signed.signature
    assert moved.signed.values != genuine.signed.values


def test_an_uppercase_signature_is_the_same_signature() -> None:
    params = signed("u", "T1", "5")
    upper = normalise(get({**params, "signature": params["signature"].upper()}))
    assert upper.signed == normalise(get(params)).signed


def test_reversal() -> None:
    postback = normalise(get(signed("user-1", "T100", "10.50", "2", uuid="click-123")))
    assert postback.key == "reversal:T100"
    assert postback.type is EventType.REVERSED
    assert postback.user_id == "user-1"
    assert postback.amount == Decimal("10.50")
    assert postback.provider_ref == "T100"
    assert postback.data == {"uuid": "click-123"}


def test_credit_and_reversal_of_one_transaction_have_different_keys() -> None:
    credit = normalise(get(signed("u", "T1", "5", "1")))
    reversal = normalise(get(signed("u", "T1", "5", "2")))
    assert credit.key != reversal.key


def test_data_leaves_out_absent_and_empty_extras() -> None:
    postback = normalise(get(signed("u", "T1", "5", country="", offer_name="Game")))
    assert postback.data == {"offer_name": "Game"}


def test_signature_and_unknown_parameters_are_not_in_data() -> None:
    postback = normalise(get(signed("u", "T1", "5", extra_thing="x")))
    assert "signature" not in postback.data
    assert "extra_thing" not in postback.data


def test_zero_reward_is_accepted() -> None:
    assert normalise(get(signed("u", "T1", "0"))).amount == 0


def test_reward_with_leading_zeros_is_exact() -> None:
    assert normalise(get(signed("u", "T1", "007.10"))).amount == Decimal("7.10")


# --- signature -----------------------------------------------------------------------------------


def test_signature_is_over_the_raw_reward_text() -> None:
    params = signed("u", "T1", "10.50")
    assert normalise(get(params)).amount == Decimal("10.50")
    params["reward"] = "10.5"
    refusal = unauthenticated(get(params))
    assert refusal.reason == "signature"


def test_signature_over_the_normalised_reward_does_not_verify_the_raw_text() -> None:
    params = signed("u", "T1", "10.5")
    params["reward"] = "10.50"
    assert unauthenticated(get(params)).reason == "signature"


def test_uppercase_signature_is_accepted() -> None:
    params = signed("u", "T1", "3")
    params["signature"] = params["signature"].upper()
    assert normalise(get(params)).amount == Decimal("3")


@pytest.mark.parametrize(
    "signature",
    ["0" * 32, md5("uT13" + "wrong-secret"), md5("uT13"), "not-hex", "\u00e9" * 32],
)
def test_bad_signature_is_unauthenticated(signature: str) -> None:
    params = signed("u", "T1", "3")
    params["signature"] = signature
    refusal = unauthenticated(get(params))
    assert refusal.reason == "signature"
    assert signature not in refusal.detail


def test_empty_signature_counts_as_missing() -> None:
    params = signed("u", "T1", "3")
    params["signature"] = ""
    assert "signature" in invalid(get(params))


def test_other_secret_is_unauthenticated() -> None:
    params = signed("u", "T1", "3", secret="another-secret")
    assert unauthenticated(get(params)).reason == "signature"


@pytest.mark.parametrize("field", ["subid", "transid", "reward"])
def test_every_signed_field_is_covered(field: str) -> None:
    params = signed("u", "T1", "3")
    params[field] = params[field] + "9"
    assert unauthenticated(get(params)).reason == "signature"


@pytest.mark.parametrize(("reward", "status"), [("abc", "1"), ("NaN", "1"), ("5", "3")])
def test_signature_is_checked_before_reward_and_status(reward: str, status: str) -> None:
    params = signed("u", "T1", reward, status)
    params["signature"] = "0" * 32
    assert unauthenticated(get(params)).reason == "signature"


# --- parameter names -----------------------------------------------------------------------------


def test_parameter_names_are_case_insensitive() -> None:
    params = signed("u", "T1", "3")
    renamed = {
        "subId": params["subid"],
        "transId": params["transid"],
        "Reward": params["reward"],
        "STATUS": params["status"],
        "SIGNATURE": params["signature"],
        "UUID": "click-9",
    }
    postback = normalise(get(renamed))
    assert postback.user_id == "u"
    assert postback.key == "credit:T1"
    assert postback.data == {"uuid": "click-9"}


# --- malformed requests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "missing",
    [("subid",), ("transid",), ("reward",), ("status",), ("signature",), ("transid", "reward")],
)
def test_missing_parameters_are_named(missing: tuple[str, ...]) -> None:
    params = {k: v for k, v in signed("u", "T1", "3").items() if k not in missing}
    detail = invalid(get(params))
    for name in missing:
        assert name in detail


def test_no_parameters_at_all() -> None:
    detail = invalid(get({}))
    for name in ("subid", "transid", "reward", "status", "signature"):
        assert name in detail


@pytest.mark.parametrize("status", ["3", "0", "", " 1", "01", "credit"])
def test_unknown_status_is_invalid(status: str) -> None:
    detail = invalid(get(signed("u", "T1", "3", status)))
    assert "status" in detail


@pytest.mark.parametrize(
    "reward", ["NaN", "-4", "1e999999", "Infinity", "abc", "1,5", "1000000000000000", " 1"]
)
def test_malformed_reward_with_a_valid_signature_is_invalid(reward: str) -> None:
    detail = invalid(get(signed("u", "T1", reward)))
    assert "reward" in detail


@pytest.mark.parametrize("name", ["subid", "reward", "status", "uuid"])
def test_parameter_given_twice_is_invalid(name: str) -> None:
    params = signed("u", "T1", "3", uuid="c1")
    pairs = [*params.items(), (name, params[name])]
    assert name in invalid(get(pairs))


def test_parameter_given_twice_in_different_case_is_invalid() -> None:
    params = signed("u", "T1", "3")
    assert "subid" in invalid(get([*params.items(), ("SubId", "u")]))


def test_parameter_in_query_and_body_is_invalid() -> None:
    params = signed("u", "T1", "3")
    body = urlencode({"reward": "3"}).encode()
    assert "reward" in invalid(post(body, FORM, query=tuple(params.items())))


@pytest.mark.parametrize("field", ["subid", "transid", "uuid", "offer_name"])
def test_nul_character_is_invalid(field: str) -> None:
    params = signed("u", "T1", "3", uuid="c1", offer_name="o")
    params[field] = params[field] + "\x00"
    params["signature"] = md5(params["subid"] + params["transid"] + "3" + MEDIOOT_SECRET)
    invalid(get(params))


def test_nul_character_in_a_name_is_invalid() -> None:
    params = signed("u", "T1", "3")
    invalid(get([*params.items(), ("off\x00er", "x")]))


@pytest.mark.parametrize("field", ["subid", "offer_name"])
def test_lone_surrogate_is_invalid(field: str) -> None:
    params = signed("u", "T1", "3", offer_name="o")
    params[field] = params[field] + "\ud800"
    invalid(get(params))


def test_subid_longer_than_255_is_invalid() -> None:
    assert "subid" in invalid(get(signed("u" * 256, "T1", "3")))


def test_subid_of_255_is_accepted() -> None:
    assert normalise(get(signed("u" * 255, "T1", "3"))).user_id == "u" * 255


def test_transid_longer_than_255_is_invalid() -> None:
    assert "transid" in invalid(get(signed("u", "T" * 256, "3")))


def test_extra_field_longer_than_2000_is_invalid() -> None:
    assert "offer_name" in invalid(get(signed("u", "T1", "3", offer_name="o" * 2001)))


def test_invalid_details_are_one_line() -> None:
    params = signed("u", "T1", "3")
    detail = invalid(get([*params.items(), ("a\nb", "1"), ("A\nB", "2")]))
    assert "\n" not in detail


def test_invalid_detail_for_a_json_field_name_is_one_line() -> None:
    body = json.dumps({**signed("u", "T1", "3"), "bad\nname": {"x": 1}}).encode()
    detail = invalid(post(body, "application/json"))
    assert "\n" not in detail


# --- POST bodies ---------------------------------------------------------------------------------


def test_form_body() -> None:
    body = urlencode(signed("u", "T1", "10.50", "1", uuid="c1")).encode()
    postback = normalise(post(body, FORM))
    assert postback.key == "credit:T1"
    assert postback.amount == Decimal("10.50")
    assert postback.data == {"uuid": "c1"}


def test_form_body_with_charset() -> None:
    body = urlencode(signed("u", "T1", "2", "2")).encode()
    assert normalise(post(body, f"{FORM}; charset=UTF-8")).type is EventType.REVERSED


def test_form_body_together_with_query_parameters() -> None:
    params = signed("u", "T1", "2")
    body = urlencode({"reward": params.pop("reward"), "signature": params.pop("signature")})
    postback = normalise(post(body.encode(), FORM, query=tuple(params.items())))
    assert postback.amount == Decimal("2")


def test_form_body_that_is_not_utf8_is_invalid() -> None:
    invalid(post(b"subid=\xff&transid=1", FORM))


def test_json_body_with_strings() -> None:
    body = json.dumps(signed("u", "T1", "10.50", "1", uuid="c1")).encode()
    postback = normalise(post(body, "application/json"))
    assert postback.amount == Decimal("10.50")
    assert postback.data == {"uuid": "c1"}


def test_json_numbers_keep_their_exact_text() -> None:
    signature = md5("u" + "T1" + "10.50" + MEDIOOT_SECRET)
    body = (
        b'{"subid": "u", "transid": "T1", "reward": 10.50, "status": 1, '
        b'"signature": "' + signature.encode() + b'"}'
    )
    postback = normalise(post(body, "application/json; charset=utf-8"))
    assert postback.amount == Decimal("10.50")
    assert str(postback.amount) == "10.50"
    assert postback.type is EventType.CREDITED


def test_json_number_that_differs_from_the_signed_text_fails() -> None:
    signature = md5("u" + "T1" + "10.50" + MEDIOOT_SECRET)
    body = b'{"subid": "u", "transid": "T1", "reward": 10.5, "status": 1, "signature": "%s"}' % (
        signature.encode()
    )
    assert unauthenticated(post(body, "application/json")).reason == "signature"


def test_json_numeric_transid_is_signed_as_sent() -> None:
    signature = md5("u" + "00123" + "1" + MEDIOOT_SECRET)
    body = b'{"subid": "u", "transid": "00123", "reward": 1, "status": "2", "signature": "%s"}' % (
        signature.encode()
    )
    assert normalise(post(body, "application/json")).key == "reversal:00123"


def test_json_null_is_treated_as_absent() -> None:
    body = json.dumps({**signed("u", "T1", "3"), "uuid": None}).encode()
    assert normalise(post(body, "application/json")).data == {}


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"5", b"null", b"true"])
def test_json_body_that_is_not_an_object_is_invalid(body: bytes) -> None:
    invalid(post(body, "application/json"))


@pytest.mark.parametrize("body", [b"{", b"{'subid': 'u'}", b'{"subid": "u",}', b"\xff\xfe"])
def test_invalid_json_is_invalid(body: bytes) -> None:
    invalid(post(body, "application/json"))


def test_json_object_value_is_invalid() -> None:
    body = json.dumps({**signed("u", "T1", "3"), "offer_name": {"nested": True}}).encode()
    assert "offer_name" in invalid(post(body, "application/json"))


def test_json_with_invalid_utf8_in_a_string_is_invalid() -> None:
    # Never a 500: the bytes inside a JSON string must be checked too.
    body = b'{"subid": "u\xff", "transid": "T1", "reward": "3", "status": "1", "signature": "x"}'
    invalid(post(body, "application/json"))


def test_json_string_escapes_are_decoded_and_checked() -> None:
    body = json.dumps({**signed("u", "T1", "3"), "offer_name": "a\u0000b"}).encode()
    invalid(post(body, "application/json"))


def test_json_duplicate_key_is_invalid() -> None:
    # The same name twice is refused in a query or form; a JSON object must not be the way round.
    params = signed("u", "T1", "3")
    body = json.dumps(params)[:-1].encode() + b', "reward": "3"}'
    assert "reward" in invalid(post(body, "application/json"))


@pytest.mark.parametrize("content_type", ["text/plain", "", "multipart/form-data; boundary=x"])
def test_unsupported_content_type_is_invalid(content_type: str) -> None:
    body = urlencode(signed("u", "T1", "3")).encode()
    invalid(post(body, content_type))


def test_empty_body_with_any_content_type_uses_the_query() -> None:
    params = signed("u", "T1", "3")
    inbound = post(b"", "text/plain", query=tuple(params.items()))
    assert normalise(inbound).amount == Decimal("3")


# --- answer --------------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", [Outcome.CREDITED, Outcome.REVERSED, Outcome.RECORDED])
def test_answer_ok(outcome: Outcome) -> None:
    answer = MEDIOOT.answer(outcome, "")
    assert (answer.status, answer.body, answer.content_type) == (200, "OK", "text/plain")


@pytest.mark.parametrize("outcome", [Outcome.DUPLICATE, Outcome.CONFLICT])
def test_answer_dup(outcome: Outcome) -> None:
    answer = MEDIOOT.answer(outcome, "already recorded")
    assert (answer.status, answer.body) == (200, "DUP")


def test_answer_rejected() -> None:
    assert MEDIOOT.answer(Outcome.REJECTED, "invalid signature").status == 403


def test_answer_invalid_carries_the_detail() -> None:
    answer = MEDIOOT.answer(Outcome.INVALID, "missing parameter: subid")
    assert (answer.status, answer.body, answer.content_type) == (
        400,
        "missing parameter: subid",
        "text/plain",
    )


def test_answer_unavailable() -> None:
    answer = MEDIOOT.answer(Outcome.UNAVAILABLE, "")
    assert answer.status == 503
    assert answer.body


@pytest.mark.parametrize("outcome", list(Outcome))
def test_answer_is_never_500(outcome: Outcome) -> None:
    assert MEDIOOT.answer(outcome, "detail").status in {200, 400, 403, 503}


# --- loggable ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["signature", "SIGNATURE", "Signature"])
def test_loggable_drops_the_signature_from_the_query(name: str) -> None:
    params = signed("u", "T1", "3", uuid="c1")
    params[name] = params.pop("signature")
    kept = loggable(get(params), MEDIOOT.SECRET_PARAMS)
    assert {k.lower() for k in kept} == {"subid", "transid", "reward", "status", "uuid"}
    assert params[name] not in kept.values()


def test_loggable_drops_the_signature_from_a_form_body() -> None:
    params = signed("u", "T1", "3")
    kept = loggable(post(urlencode(params).encode(), FORM), MEDIOOT.SECRET_PARAMS)
    assert kept == {"subid": "u", "transid": "T1", "reward": "3", "status": "1"}


def test_loggable_drops_the_signature_from_a_json_body() -> None:
    params = signed("u", "T1", "3")
    kept = loggable(post(json.dumps(params).encode(), "application/json"), MEDIOOT.SECRET_PARAMS)
    assert "signature" not in kept
    assert kept["subid"] == "u"


def test_loggable_keeps_the_query_when_the_body_is_unreadable() -> None:
    params = signed("u", "T1", "3")
    kept = loggable(post(b"{", "application/json", tuple(params.items())), MEDIOOT.SECRET_PARAMS)
    assert "signature" not in kept
    assert kept["transid"] == "T1"


def test_loggable_makes_values_storable() -> None:
    kept = loggable(get({"offer_name": "a\x00b\ud800", "country": "x" * 5000}), frozenset())
    assert kept["offer_name"].encode("utf-8")
    assert "\x00" not in kept["offer_name"]
    assert len(kept["country"]) <= 2000


def test_loggable_survives_invalid_utf8_in_a_json_string() -> None:
    params = signed("u", "T1", "3")
    body = b'{"offer_name": "\xff"}'
    kept = loggable(post(body, "application/json", tuple(params.items())), MEDIOOT.SECRET_PARAMS)
    assert "signature" not in kept
