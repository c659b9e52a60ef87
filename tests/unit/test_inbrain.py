"""service/providers/inbrain.py: normalising inBrain callbacks and answering in its convention
(inBrain's offer callback document)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from decimal import Decimal

import pytest

from service.domain import wallet
from service.domain.events import EventType, Outcome, Postback, Signed
from service.providers import inbrain
from service.providers.base import Inbound, Invalid, Unauthenticated, loggable
from service.settings import Provider

SECRET = "test-inbrain-secret"
PROVIDER = Provider(name="inbrain", protocol="inbrain", secret=SECRET)
JSON = "application/json"

# The seed's example payload, re-signed with our own secret (the seed's Sig uses theirs).
SEED_SIG = "cd917216cb4cb02648bb96ac77760269"
SEED_PANELIST = "6a8c5d53-d8bf-4a3e-ba54-460d00f5caa0"
SEED_REWARD_ID = "c55b3483-5755-42f8-9bc5-5c185862e35a"


class Raw(str):
    """JSON text put into a body verbatim: numbers exactly as written, or invalid tokens."""


def md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8", "surrogatepass")).hexdigest()


def sign(panelist: str, reward_id: str, secret: str = SECRET) -> str:
    return md5(panelist + reward_id + secret)


def encode(fields: Mapping[str, object]) -> bytes:
    """A JSON object body; `Raw` values are inserted as written."""
    parts = [
        f"{json.dumps(k)}: {v if isinstance(v, Raw) else json.dumps(v)}" for k, v in fields.items()
    ]
    return ("{" + ", ".join(parts) + "}").encode("utf-8", "surrogatepass")


def callback(
    panelist: str,
    reward_id: str,
    reward: object = Raw("100"),
    *,
    secret: str = SECRET,
    **extra: object,
) -> dict[str, object]:
    return {
        "Sig": sign(panelist, reward_id, secret),
        "PanelistId": panelist,
        "RewardId": reward_id,
        "Reward": reward,
        **extra,
    }


def seed_callback() -> dict[str, object]:
    return {
        "Sig": sign(SEED_PANELIST, SEED_REWARD_ID),
        "PanelistId": SEED_PANELIST,
        "OfferTitle": "The Offer Name",
        "RewardType": "offer_completed",
        "RewardId": SEED_REWARD_ID,
        "Reward": Raw("100"),
        "RevenueAmount": Raw("1.00"),
    }


def post(body: bytes, content_type: str = JSON) -> Inbound:
    return Inbound(method="POST", query=(), content_type=content_type, body=body, client_ip=None)


def normalise(fields: Mapping[str, object] | bytes) -> Postback:
    body = fields if isinstance(fields, bytes) else encode(fields)
    return inbrain.normalise(PROVIDER, post(body))


def invalid(fields: Mapping[str, object] | bytes) -> str:
    with pytest.raises(Invalid) as info:
        normalise(fields)
    assert type(info.value) is Invalid
    assert info.value.status == 400
    assert info.value.outcome is Outcome.INVALID
    assert "\n" not in info.value.detail
    return info.value.detail


def unauthenticated(fields: Mapping[str, object]) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        normalise(fields)
    assert info.value.status == 403
    assert info.value.outcome is Outcome.REJECTED
    return info.value


# --- the seed's example --------------------------------------------------------------------------


def test_seed_example_credits() -> None:
    postback = normalise(seed_callback())
    assert postback == Postback(
        provider="inbrain",
        key=f"credit:{SEED_REWARD_ID}",
        type=EventType.CREDITED,
        user_id=SEED_PANELIST,
        amount=Decimal("100"),
        provider_ref=SEED_REWARD_ID,
        test=False,
        data={
            "reward_type": "offer_completed",
            "offer_title": "The Offer Name",
            "revenue_amount": "1.00",
        },
        signed=Signed.of(sign(SEED_PANELIST, SEED_REWARD_ID), SEED_PANELIST, SEED_REWARD_ID),
    )
    assert wallet.outcome(wallet.alone(postback)) is Outcome.CREDITED
    assert wallet.fold([postback]).balance == Decimal("100")


def test_seed_example_with_the_seeds_own_sig_is_refused() -> None:
    # That Sig was made with inBrain's example secret, not ours.
    assert unauthenticated({**seed_callback(), "Sig": SEED_SIG}).reason == "signature"


def test_sig_is_not_in_data() -> None:
    postback = normalise(seed_callback())
    assert "Sig" not in postback.data and "sig" not in postback.data
    assert str(seed_callback()["Sig"]) not in repr(postback)


def test_unknown_fields_are_ignored() -> None:
    postback = normalise(callback("u", "R1", Raw("3"), Extra="x", Nested={"a": [1]}))
    assert postback.amount == Decimal("3")
    assert "Extra" not in postback.data


# --- exact decimals ------------------------------------------------------------------------------


@pytest.mark.parametrize("reward", [Raw("2.50"), "2.50"])
def test_reward_keeps_its_scale_as_number_or_string(reward: object) -> None:
    postback = normalise(callback("u", "R1", reward))
    assert postback.amount == Decimal("2.50")
    assert str(postback.amount) == "2.50"
    assert postback.amount.as_tuple().exponent == -2


@pytest.mark.parametrize(
    "text", ["0.1", "0.10", "7", "100.000", "999999999999999.99999999999999999999", "0.00000001"]
)
@pytest.mark.parametrize("as_string", [False, True])
def test_reward_is_never_rounded(text: str, as_string: bool) -> None:
    reward: object = text if as_string else Raw(text)
    postback = normalise(callback("u", "R1", reward))
    assert format(postback.amount, "f") == text
    assert postback.amount.as_tuple() == Decimal(text).as_tuple()


def test_three_tenths_sum_exactly() -> None:
    state = wallet.fold(normalise(callback("u", f"R{i}", Raw("0.1"))) for i in range(3))
    assert state.balance == Decimal("0.3")
    assert str(state.balance) == "0.3"


def test_revenue_amount_keeps_its_scale() -> None:
    postback = normalise(callback("u", "R1", Raw("1"), RevenueAmount=Raw("0.50")))
    assert postback.data["revenue_amount"] == "0.50"


@pytest.mark.parametrize("revenue", ["1e999999", "1e-999999"])
def test_extreme_revenue_amount_is_refused_or_kept_short(revenue: str) -> None:
    # RevenueAmount is only kept as text; the exact form of 1e999999 is a million digits.
    try:
        postback = normalise(callback("u", "R1", Raw("1"), RevenueAmount=Raw(revenue)))
    except Invalid:
        return
    assert len(postback.data.get("revenue_amount", "")) <= 100


# --- reward types --------------------------------------------------------------------------------

CREDIT_TYPES = [
    "offer_completed",
    "survey_completed",
    "profiler_completed",
    "ad_hoc",
    "survey_disqualified",
    "offer_clicked",
    "some_future_type",
]


@pytest.mark.parametrize("reward_type", CREDIT_TYPES)
def test_every_other_reward_type_credits_a_positive_reward(reward_type: str) -> None:
    postback = normalise(callback("u", "R1", Raw("5.5"), RewardType=reward_type))
    assert postback.type is EventType.CREDITED
    assert postback.key == "credit:R1"
    assert postback.provider_ref == "R1"
    assert postback.data["reward_type"] == reward_type
    assert wallet.outcome(wallet.alone(postback)) is Outcome.CREDITED
    assert wallet.fold([postback]).balance == Decimal("5.5")


def test_absent_reward_type_credits() -> None:
    postback = normalise(callback("u", "R1", Raw("5")))
    assert postback.type is EventType.CREDITED
    assert wallet.fold([postback]).balance == Decimal("5")


def test_reversal_takes_back_its_credit() -> None:
    postback = normalise(callback("u", "R1", Raw("2.50"), RewardType="offer_completion_reversed"))
    assert postback.type is EventType.REVERSED
    assert postback.key == "reversal:R1"
    assert postback.amount == Decimal("2.50")
    # Alone it waits for its credit; then it takes back the whole credit, whatever Reward it
    # names: the Sig does not cover Reward, so a forged small reversal must not pre-empt it.
    assert wallet.outcome(wallet.alone(postback)) is Outcome.RECORDED
    assert postback.data["reverses_whole_credit"] is True
    credit = normalise(callback("u", "R1", Raw("4"), RewardType="offer_completed"))
    expected = wallet.Wallet(Decimal(0), Decimal(4), Decimal(4), event_count=2)
    assert wallet.fold([credit, postback]) == expected


def test_a_test_callback_has_keys_of_its_own() -> None:
    real = normalise(callback("u", "R1", Raw("4"), RewardType="offer_completion_reversed"))
    test = normalise(
        callback("u", "R1", Raw("4"), RewardType="offer_completion_reversed", IsTest=True)
    )
    assert (real.key, test.key) == ("reversal:R1", "test-reversal:R1")


def test_the_signature_vouches_for_the_panelist_and_the_reward_id_only() -> None:
    a = normalise(callback("u", "R1", Raw("1"), RewardType="offer_completed"))
    b = normalise(callback("u", "R1", Raw("500000"), RewardType="offer_completion_reversed"))
    assert a.signed == b.signed is not None
    shifted = normalise(callback("uR", "1", Raw("1")))
    assert shifted.signed is not None and a.signed is not None
    assert shifted.signed.signature == a.signed.signature  # md5 over the plain concatenation
    assert shifted.signed.values != a.signed.values  # which the write path refuses as a replay


def test_reversal_reuses_the_reward_id_under_its_own_key() -> None:
    credit = normalise(callback("u", "R1", Raw("3"), RewardType="offer_completed"))
    reversal = normalise(callback("u", "R1", Raw("3"), RewardType="offer_completion_reversed"))
    assert (credit.key, reversal.key) == ("credit:R1", "reversal:R1")
    assert credit.provider_ref == reversal.provider_ref == "R1"
    assert wallet.fold([credit, reversal]).balance == 0


@pytest.mark.parametrize(
    ("reward_type", "reward"),
    [
        ("offer_clicked", Raw("0")),
        ("survey_disqualified", Raw("0")),
        ("survey_disqualified", Raw("0.00")),
        ("offer_completed", "0"),
        ("offer_completion_reversed", Raw("0")),
        ("survey_completed", Raw("-0")),
    ],
)
def test_zero_reward_is_recorded_without_moving_a_balance(reward_type: str, reward: object) -> None:
    postback = normalise(callback("u", "R1", reward, RewardType=reward_type))
    assert postback.amount == 0
    assert not postback.amount.is_signed()
    assert wallet.fold([postback]).balance == 0
    assert wallet.outcome(wallet.alone(postback)) is Outcome.RECORDED


def test_disqualification_with_a_reward_credits_it() -> None:
    postback = normalise(callback("u", "R1", Raw("0.25"), RewardType="survey_disqualified"))
    assert wallet.outcome(wallet.alone(postback)) is Outcome.CREDITED
    assert wallet.fold([postback]).balance == Decimal("0.25")


# --- IsTest --------------------------------------------------------------------------------------


def test_is_test_is_recorded_as_a_test() -> None:
    fields = callback(
        "u", "R1", Raw("10"), RewardType="survey_completed", SessionId="s-1", IsTest=True
    )
    postback = normalise(fields)
    assert postback.test is True
    assert postback.amount == Decimal("10")
    assert postback.data["session_id"] == "s-1"
    assert wallet.fold([postback]).balance == 0
    assert wallet.outcome(wallet.alone(postback)) is Outcome.RECORDED


def test_is_test_reversal_moves_nothing() -> None:
    fields = callback("u", "R1", Raw("10"), RewardType="offer_completion_reversed", IsTest=True)
    postback = normalise(fields)
    assert postback.test is True
    assert wallet.fold([postback]).balance == 0


@pytest.mark.parametrize("fields", [{"IsTest": False}, {}])
def test_not_a_test(fields: dict[str, object]) -> None:
    postback = normalise({**callback("u", "R1", Raw("10")), **fields})
    assert postback.test is False
    assert wallet.fold([postback]).balance == Decimal("10")


def test_survey_fields_are_kept() -> None:
    fields = callback(
        "u",
        "R1",
        Raw("4"),
        RewardType="survey_completed",
        SessionId="session-9",
        OfferTitle="A survey",
        RevenueAmount=Raw("0.40"),
        IsTest=False,
    )
    assert normalise(fields).data == {
        "reward_type": "survey_completed",
        "session_id": "session-9",
        "offer_title": "A survey",
        "revenue_amount": "0.40",
    }


# --- signature -----------------------------------------------------------------------------------


def test_uppercase_sig_is_accepted() -> None:
    fields = callback("u", "R1", Raw("3"))
    fields["Sig"] = str(fields["Sig"]).upper()
    assert normalise(fields).amount == Decimal("3")


@pytest.mark.parametrize(
    "sig",
    [
        "0" * 32,
        sign("u", "R1", "wrong-secret"),
        md5("R1" + "u" + SECRET),  # fields in the wrong order
        md5("uR1"),  # no secret
        md5("u" + "R1" + "3" + SECRET),  # Reward is not part of it
        "",
        "not-hex",
        "\u00e9" * 32,
        SEED_SIG,
    ],
)
def test_bad_sig_is_unauthenticated(sig: str) -> None:
    fields = callback("u", "R1", Raw("3"))
    fields["Sig"] = sig
    refusal = unauthenticated(fields)
    assert refusal.reason == "signature"
    if sig:
        assert sig not in refusal.detail


def test_other_secret_is_unauthenticated() -> None:
    assert unauthenticated(callback("u", "R1", secret="another")).reason == "signature"


@pytest.mark.parametrize("field", ["PanelistId", "RewardId"])
def test_every_signed_field_is_covered(field: str) -> None:
    fields = callback("u", "R1", Raw("3"))
    fields[field] = str(fields[field]) + "9"
    assert unauthenticated(fields).reason == "signature"


def test_sig_over_another_panelist_does_not_verify() -> None:
    fields = callback("u", "R1", Raw("3"))
    fields["Sig"] = sign("other", "R1")
    assert unauthenticated(fields).reason == "signature"


# --- malformed bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"not json", b"{'Sig': 'x'}", b'{"Sig": "x",}', b"\xff\xfe", b"{}}"],
)
def test_body_that_is_not_json_is_invalid(body: bytes) -> None:
    invalid(body)


@pytest.mark.parametrize("body", [b"[1, 2]", b"[]", b'"text"', b"5", b"null", b"true"])
def test_json_that_is_not_an_object_is_invalid(body: bytes) -> None:
    invalid(body)


def test_json_array_of_a_valid_callback_is_invalid() -> None:
    invalid(b"[" + encode(callback("u", "R1")) + b"]")


@pytest.mark.parametrize("missing", ["Sig", "PanelistId", "RewardId", "Reward"])
def test_missing_field_is_invalid_and_named(missing: str) -> None:
    fields = callback("u", "R1", Raw("3"))
    del fields[missing]
    assert missing in invalid(fields)


@pytest.mark.parametrize(
    "reward",
    [
        "abc",
        Raw("-1"),
        "-1",
        Raw("-0.01"),
        Raw("NaN"),
        "NaN",
        "-NaN",
        "sNaN",
        "Infinity",
        "-Infinity",
        Raw("Infinity"),
        Raw("1e999999"),
        "1e999999",
        Raw("1000000000000000"),
        "1000000000000000",
        Raw("1e15"),
        Raw("0.000000000000000000001"),  # 21 decimals
        Raw("true"),
        Raw("false"),
        Raw("null"),
        "",
        Raw("[1]"),
        Raw('{"a": 1}'),
    ],
)
def test_malformed_reward_with_a_valid_sig_is_invalid(reward: object) -> None:
    invalid(callback("u", "R1", reward))


@pytest.mark.parametrize("reward", ["1_000", "\u0661", " 1", "1 "])
def test_reward_string_that_is_not_plain_decimal_notation_is_invalid(reward: str) -> None:
    # Python's Decimal() accepts these; a wall's amount is plain decimal text (amounts.py).
    invalid(callback("u", "R1", reward))


def test_reward_just_below_the_limit_is_accepted() -> None:
    postback = normalise(callback("u", "R1", Raw("999999999999999")))
    assert postback.amount == Decimal("999999999999999")


@pytest.mark.parametrize("field", ["PanelistId", "RewardId"])
def test_empty_id_is_invalid(field: str) -> None:
    fields = callback("u", "R1", Raw("3"))
    fields[field] = ""
    fields["Sig"] = sign(str(fields["PanelistId"]), str(fields["RewardId"]))
    assert field in invalid(fields)


@pytest.mark.parametrize("field", ["PanelistId", "RewardId", "OfferTitle", "SessionId"])
def test_nul_character_is_invalid(field: str) -> None:
    fields = callback("u", "R1", Raw("3"), OfferTitle="o", SessionId="s")
    fields[field] = str(fields[field]) + "\x00"
    fields["Sig"] = sign(str(fields["PanelistId"]), str(fields["RewardId"]))
    invalid(fields)


@pytest.mark.parametrize("field", ["PanelistId", "OfferTitle"])
def test_lone_surrogate_is_invalid(field: str) -> None:
    fields = callback("u", "R1", Raw("3"), OfferTitle="o")
    fields[field] = str(fields[field]) + "\ud800"
    fields["Sig"] = sign(str(fields["PanelistId"]), str(fields["RewardId"]))
    invalid(fields)


@pytest.mark.parametrize("field", ["PanelistId", "RewardId", "OfferTitle"])
def test_invalid_utf8_inside_a_json_string_is_invalid(field: str) -> None:
    # Raw bytes, not an escape: msgspec raises UnicodeDecodeError for these.
    fields = callback("u", "R1", Raw("3"), OfferTitle="o")
    body = encode(fields).replace(
        f'"{fields[field]}"'.encode(), f'"{fields[field]}'.encode() + b'\xff"'
    )
    assert b"\xff" in body
    invalid(body)


def test_panelist_id_over_255_characters_is_invalid() -> None:
    assert "PanelistId" in invalid(callback("u" * 256, "R1", Raw("3")))


def test_panelist_id_of_255_characters_is_accepted() -> None:
    assert normalise(callback("u" * 255, "R1", Raw("3"))).user_id == "u" * 255


def test_reward_id_over_255_characters_is_invalid() -> None:
    assert "RewardId" in invalid(callback("u", "R" * 256, Raw("3")))


def test_offer_title_over_2000_characters_is_invalid() -> None:
    invalid(callback("u", "R1", Raw("3"), OfferTitle="o" * 2001))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Sig", Raw("123")),
        ("PanelistId", Raw("123")),
        ("RewardId", Raw("null")),
        ("PanelistId", Raw("[]")),
        ("IsTest", "yes"),
        ("RewardType", Raw("5")),
        ("OfferTitle", Raw('{"a": 1}')),
        ("RevenueAmount", "abc"),
    ],
)
def test_wrong_json_type_is_invalid(field: str, value: object) -> None:
    fields = callback("u", "R1", Raw("3"))
    fields[field] = value
    invalid(fields)


def test_invalid_detail_never_carries_the_sig() -> None:
    fields = callback("u", "R1", "abc")
    assert str(fields["Sig"]) not in invalid(fields)


# --- loggable: what the postback log keeps -------------------------------------------------------


def test_loggable_drops_the_sig() -> None:
    fields = seed_callback()
    kept = loggable(post(encode(fields)), inbrain.SECRET_PARAMS)
    assert "Sig" not in kept
    assert kept["PanelistId"] == SEED_PANELIST
    assert kept["RewardId"] == SEED_REWARD_ID
    assert str(fields["Sig"]) not in repr(kept)


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "", "application/json"]
)
def test_loggable_never_keeps_the_sig_whatever_the_content_type(content_type: str) -> None:
    fields = seed_callback()
    kept = inbrain.loggable(post(encode(fields), content_type))
    assert str(fields["Sig"]) not in repr(kept)


# --- answer --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome.CREDITED,
        Outcome.REVERSED,
        Outcome.RECORDED,
        Outcome.DUPLICATE,
        Outcome.CONFLICT,
        Outcome.STATUS_CHANGED,
        Outcome.IGNORED,
    ],
)
def test_answer_ok_for_new_duplicate_and_conflict(outcome: Outcome) -> None:
    answer = inbrain.answer(outcome, "recorded as event 1")
    assert (answer.status, answer.body, answer.content_type) == (200, "OK", "text/plain")


def test_answer_rejected() -> None:
    answer = inbrain.answer(Outcome.REJECTED, "invalid signature")
    assert answer.status == 403
    assert answer.body == "invalid signature"


def test_answer_invalid_carries_the_detail() -> None:
    answer = inbrain.answer(Outcome.INVALID, "Reward must not be negative")
    assert (answer.status, answer.body) == (400, "Reward must not be negative")


def test_answer_unavailable() -> None:
    answer = inbrain.answer(Outcome.UNAVAILABLE, "")
    assert answer.status == 503
    assert answer.body
    assert inbrain.answer(Outcome.SHED, "").status == 503


@pytest.mark.parametrize("outcome", list(Outcome))
def test_answer_is_never_500(outcome: Outcome) -> None:
    assert inbrain.answer(outcome, "detail").status in {200, 400, 403, 503}


def test_module_shape() -> None:
    assert "sig" in inbrain.SECRET_PARAMS
    assert inbrain.REQUIRED_SETTINGS == ("secret",)
