"""inBrain offer and survey callbacks (README, Walls; inBrain's offer callback document).

POST with a JSON body; `Sig` = md5(PanelistId + RewardId + secret). `Reward` is decoded straight
into an exact Decimal. `offer_completion_reversed` reverses; every other RewardType credits a
positive Reward; a zero Reward, or `IsTest: true`, is recorded without moving the balance. The
success and the failure callback URL may be this same endpoint.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from ..domain.amounts import AmountError, check_amount, format_amount, parse_amount
from ..domain.events import EventType, Outcome, Postback, Signed
from ..domain.settlement import WHOLE
from ..settings import Provider
from .base import (
    Answer,
    Inbound,
    Invalid,
    Unauthenticated,
    checked,
    md5_hex,
    plain_answer,
    same_hex_digest,
    signed_with,
    storable_params,
)

SECRET_PARAMS = frozenset({"sig"})
IDENTITY = ("panelistid", "rewardid")
REQUIRED_SETTINGS: tuple[str, ...] = ("secret",)
REVERSAL = "offer_completion_reversed"


class Callback(msgspec.Struct, frozen=True):
    Sig: str
    PanelistId: str
    RewardId: str
    # Raw JSON tokens, parsed below by the ledger's own amount rules: a JSON number keeps its
    # exact text, and a string must be plain decimal notation like every other wall's amounts.
    Reward: msgspec.Raw
    RewardType: str = ""
    RevenueAmount: msgspec.Raw = msgspec.Raw(b"null")
    OfferTitle: str | None = None
    SessionId: str | None = None
    IsTest: bool = False


_decode = msgspec.json.Decoder(Callback).decode


def normalise(provider: Provider, inbound: Inbound) -> Postback:
    try:
        callback = _decode(inbound.body)
    except msgspec.ValidationError as exc:
        raise Invalid(f"callback: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise Invalid("body is not a JSON object") from None
    panelist = checked("PanelistId", callback.PanelistId, limit=255)
    reward_id = checked("RewardId", callback.RewardId, limit=255)
    if not panelist or not reward_id:
        raise Invalid("PanelistId and RewardId must not be empty")
    if not signed_with(
        provider, lambda secret: same_hex_digest(md5_hex(panelist, reward_id, secret), callback.Sig)
    ):
        raise Unauthenticated("signature", "invalid signature")
    amount = _amount("Reward", callback.Reward)
    reversal = callback.RewardType == REVERSAL
    data: dict[str, object] = {"reward_type": checked("RewardType", callback.RewardType, limit=100)}
    for name, value in (("offer_title", callback.OfferTitle), ("session_id", callback.SessionId)):
        if value:
            data[name] = checked(name, value, limit=2000)
    if bytes(callback.RevenueAmount) != b"null":
        data["revenue_amount"] = format_amount(_amount("RevenueAmount", callback.RevenueAmount))
    if reversal:
        # The Sig covers neither Reward nor RewardType, so anyone holding one callback could
        # send its reversal with a Reward of 0 first, and the real chargeback would then be a
        # conflict. A reversal therefore takes back the whole credit, whatever Reward it names.
        data[WHOLE] = True
    kind = "reversal" if reversal else "credit"
    return Postback(
        provider=provider.name,
        # A reversal may reuse the RewardId of the completion it reverses: two events. A test
        # callback has keys of its own, so that one sent with IsTest (it moves nothing) cannot
        # take the key of the real one.
        key=f"{'test-' if callback.IsTest else ''}{kind}:{reward_id}",
        type=EventType.REVERSED if reversal else EventType.CREDITED,
        user_id=panelist,
        amount=amount,
        provider_ref=reward_id,
        test=callback.IsTest,
        data=data,
        signed=Signed.of(callback.Sig, panelist, reward_id),
    )


def _amount(name: str, raw: msgspec.Raw) -> Decimal:
    token = bytes(raw)
    try:
        if token.startswith(b'"'):
            return parse_amount(msgspec.json.decode(token, type=str))
        if token[:1] in b"0123456789-":
            return check_amount(msgspec.json.decode(token, type=Decimal))
        raise AmountError("must be a number")
    except AmountError as exc:
        raise Invalid(f"{name} {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise Invalid(f"{name} is not a number") from None


def loggable(inbound: Inbound) -> dict[str, str]:
    """The callback's fields as text, never its Sig, whatever the Content-Type said. A string
    is kept as its text; any other value as the JSON it arrived as, so a number keeps its exact
    digits (`12345678.123456789012345`, never a float's rounding)."""
    try:
        inbound.body.decode("utf-8")  # a Raw value is not checked by the decoder
        fields = msgspec.json.decode(inbound.body, type=dict[str, msgspec.Raw])
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return {}
    return storable_params(
        (name, _as_text(raw)) for name, raw in fields.items() if name.lower() not in SECRET_PARAMS
    )


def _as_text(raw: msgspec.Raw) -> str:
    token = bytes(raw)
    if token.startswith(b'"'):
        return msgspec.json.decode(token, type=str)
    return token.decode("utf-8")  # checked above


def answer(outcome: Outcome, detail: str) -> Answer:
    return plain_answer(outcome, detail)  # inBrain only needs a 200 for new and repeats
