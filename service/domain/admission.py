"""Which postbacks of a batch may be recorded, decided from what the log already holds.

Pure: the write path reads that state under the batch's locks, asks here, then writes. Three
things refuse an authenticated postback before anything of it is written:

- its signature was already used with other values of the fields it signs (a replay), or was
  first used by a reversal and now comes with a credit (a captured chargeback URL with its
  status flipped; a genuine credit and its reversal with the same signature cancel out anyway);
- its wall transaction already has such an event, or the reversal names another user than the
  credit (`settlement.conflict`);
- its receipt offer belongs to another user.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from . import receipt_offers, settlement
from .events import AuthReason, EventType, Outcome, Postback

Key = tuple[str, str]  # (provider, idempotency key)
SignatureName = tuple[str, bytes]  # (provider, digest of the signature)


class SignatureUse(msgspec.Struct, frozen=True):
    """What a signature vouched for the first time it was seen."""

    values: bytes
    reversal: bool


class Refusal(msgspec.Struct, frozen=True):
    outcome: Outcome
    detail: str
    auth_reason: AuthReason | None = None  # for the signature-failure counter


REPLAY = Refusal(
    Outcome.REJECTED, "signature already used with other values of the fields it signs", "replay"
)
CANCELLED = Refusal(
    Outcome.CONFLICT,
    "a reversal already used this signature: the credit and its reversal cancel out",
)
OTHER_OWNER = Refusal(Outcome.CONFLICT, "the receipt offer belongs to another user")


def first_uses(postbacks: Iterable[Postback]) -> dict[SignatureName, SignatureUse]:
    """Each signature of the batch with what its first postback (in arrival order) says."""
    uses: dict[SignatureName, SignatureUse] = {}
    for p in postbacks:
        if p.signed is not None:
            uses.setdefault(
                (p.provider, p.signed.signature),
                SignatureUse(p.signed.values, p.type is EventType.REVERSED),
            )
    return uses


def signature_refusals(
    postbacks: Iterable[Postback], uses: Mapping[SignatureName, SignatureUse]
) -> dict[int, Refusal]:
    """The postbacks (by id) that their signature cannot authenticate, given each signature's
    first use (before this batch, or earlier in it)."""
    refused: dict[int, Refusal] = {}
    for p in postbacks:
        if p.signed is None:
            continue
        first = uses[(p.provider, p.signed.signature)]
        if first.values != p.signed.values:
            refused[id(p)] = REPLAY
        elif first.reversal and p.type is EventType.CREDITED:
            refused[id(p)] = CANCELLED
    return refused


def admit(
    candidates: Iterable[tuple[Key, Postback]],
    links: Mapping[tuple[str, str], settlement.Settlement],
    owners: Mapping[tuple[str, str], str],
) -> tuple[dict[Key, Refusal], dict[Key, Postback]]:
    """The candidates that cannot be recorded, and those to record in another form (a reversal
    linked to its credit by the click: `data.link` names the credited transaction).

    `links`: the settlements of the candidates' transactions and of their clicks; `owners`: the
    users of their receipt offers. Candidates come in the order they will be inserted in, and
    each one admitted counts for those after it."""
    links = dict(links)
    owners = dict(owners)
    refused: dict[Key, Refusal] = {}
    resolved: dict[Key, Postback] = {}
    for key, p in candidates:
        name = settlement.link(p)
        current = settlement.Settlement()
        if name is not None:
            clicked = settlement.click(p)
            joined = _of_click(links, clicked, p, links.get(name)) if clicked else None
            if joined is not None:
                p = resolved[key] = msgspec.structs.replace(p, data={**p.data, "link": joined})
                name = (p.provider, joined)
            current = links.get(name, current)
            reason = settlement.conflict(current, p)
            if reason is not None:
                refused[key] = Refusal(Outcome.CONFLICT, reason)
                continue
        offer = receipt_offers.offer_key(p)
        if offer is not None and owners.setdefault(offer, p.user_id) != p.user_id:
            refused[key] = OTHER_OWNER
            continue  # refused: its conversion counts for none of those after it
        if name is not None:
            links[name], _ = settlement.settle(current, p)
    return refused, resolved


def _of_click(
    links: Mapping[tuple[str, str], settlement.Settlement],
    clicked: tuple[str, str],
    event: Postback,
    own: settlement.Settlement | None,
) -> str | None:
    """The transaction of the click that `event` joins (`settlement.linked_by_click`), the
    first by link when several would do, so that it is the same one each time."""
    for (provider, transaction), s in sorted(links.items()):
        if (provider, s.click) == clicked and settlement.linked_by_click(
            event, own, (transaction, s)
        ):
            return transaction
    return None
