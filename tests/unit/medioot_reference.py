"""The hand-written protocol module Medioot had before it became a profile
(service/profiles/medioot.toml), kept unchanged as the reference that profile is checked against
(test_medioot_profile.py).

Medioot-style walls (README, Walls; Medioot's postback document).

GET (or POST) with `subid`, `transid`, `reward`, `status`, `signature` = md5(subid + transid +
reward + secret) over the strings exactly as received. `status` 1 credits, 2 reverses. The
signature covers neither `status` nor `uuid`, and its fields have no separators: a signature
already seen with other field values is refused by the write path, a reversal takes back at most
its credit, and `allowed_ips` is what stops a captured URL being replayed with `status` flipped.
"""

from __future__ import annotations

from service.domain.amounts import AmountError, parse_amount
from service.domain.events import EventType, Outcome, Postback, Signed
from service.providers.base import (
    Answer,
    Inbound,
    Invalid,
    Unauthenticated,
    bounded,
    md5_hex,
    params,
    plain_answer,
    require,
    same_hex_digest,
    signed_with,
)
from service.providers.base import loggable as base_loggable
from service.settings import Provider

SECRET_PARAMS = frozenset({"signature"})
REQUIRED_SETTINGS: tuple[str, ...] = ("secret",)
_REQUIRED = ("subid", "transid", "reward", "status", "signature")
_EXTRA = ("payout", "userip", "campaign_id", "offer_type", "country", "uuid", "offer_name")
_STATUS = {"1": ("credit", EventType.CREDITED), "2": ("reversal", EventType.REVERSED)}


def normalise(provider: Provider, inbound: Inbound) -> Postback:
    found = params(inbound)
    require(found, _REQUIRED)
    subid, transid, reward = found["subid"], found["transid"], found["reward"]
    received = found["signature"]
    if not signed_with(
        provider, lambda secret: same_hex_digest(md5_hex(subid, transid, reward, secret), received)
    ):
        raise Unauthenticated("signature", "invalid signature")
    if found["status"] not in _STATUS:
        raise Invalid("status must be 1 (credit) or 2 (reversal)")
    try:
        amount = parse_amount(reward)
    except AmountError as exc:
        raise Invalid(f"reward {exc}") from None
    kind, event_type = _STATUS[found["status"]]
    return Postback(
        provider=provider.name,
        # (transid, status): the credit and the reversal of one transaction are two events.
        key=f"{kind}:{bounded(found, 'transid')}",
        type=event_type,
        user_id=bounded(found, "subid"),
        amount=amount,
        provider_ref=transid,
        # `uuid` is the click: a reversal sent under a new transid links to its credit by it.
        data={name: bounded(found, name, 2000) for name in _EXTRA if found.get(name)},
        signed=Signed.of(found["signature"], subid, transid, reward),
    )


def answer(outcome: Outcome, detail: str) -> Answer:
    # The wall stops retrying on DUP; for a conflict, retrying cannot help either.
    return plain_answer(outcome, detail, repeat="DUP")


def loggable(inbound: Inbound) -> dict[str, str]:
    return base_loggable(inbound, SECRET_PARAMS)
