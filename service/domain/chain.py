"""The per-user hash chain of events, computed here independently of the database.

Each event's hash covers the previous hash of its user and the event's fields. Chain 0 is the
plain sha256 of events written before the chain key existed; chain 1 is HMAC-SHA256 with the
chain key (`integrity.chain_key`). The database computes it on insert (the `events_chain`
trigger, from the key's HMAC pads sent as a session setting); `verify` recomputes it here from
the stored fields, so a function replaced in the database cannot vouch for an edited event.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Callable

import msgspec

UNKEYED = 0
KEYED = 1
_BLOCK = 64  # sha256's block size: HMAC pads the key to it


class ChainKey:
    """The chain key. Its repr hides it, so that it cannot reach a log by accident."""

    __slots__ = ("_key",)

    def __init__(self, key: str) -> None:
        raw = key.encode("utf-8")
        self._key = hashlib.sha256(raw).digest() if len(raw) > _BLOCK else raw

    def __repr__(self) -> str:
        return "ChainKey(<hidden>)"

    def pads(self) -> str:
        """The hex of HMAC's inner then outer pad, as the database's `event_hmac` takes them."""
        padded = self._key.ljust(_BLOCK, b"\0")
        inner = bytes(b ^ 0x36 for b in padded)
        outer = bytes(b ^ 0x5C for b in padded)
        return inner.hex() + outer.hex()

    def mac(self, message: bytes) -> bytes:
        return hmac.digest(self._key, message, "sha256")

    def mac_function(self) -> Callable[[bytes], bytes]:
        """`mac` for many messages: HMAC-SHA256 from the inner and outer sha256 states, fed the
        key's pads once and copied per message (HMAC's definition, without its per-call key
        setup, which costs more than hashing a short message)."""
        padded = self._key.ljust(_BLOCK, b"\0")
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

        def mac(message: bytes) -> bytes:
            step = inner.copy()
            step.update(message)
            result = outer.copy()
            result.update(step.digest())
            return result.digest()

        return mac

    def derive(self, purpose: str) -> ChainKey:
        """A key of its own for another use (checkpoints), so no value can pass for another."""
        derived = ChainKey("")
        derived._key = self.mac(b"postback-ledger " + purpose.encode())
        return derived


# PostgreSQL's jsonb prints a string as JSON with only ", \ and control characters escaped
# (\b \f \n \r \t, else \u00xx), as msgspec does; a test checks every character.
_text = msgspec.json.encode


def message(
    prev: bytes | None,
    *,
    position: int,
    provider: str,
    key: str,
    type: str,
    user_id: str,
    amount_text: str,
    provider_ref: str,
    test: bool,
    data_text: str,
    recorded_at: datetime.datetime,
) -> bytes:
    """The bytes the database's `event_message` hashes: the previous hash, then the jsonb text of
    the array of fields. `amount_text` and `data_text` are the database's own text of the
    numeric and the jsonb (`amount::text`, `data::text`), which jsonb embeds unchanged."""
    return (prev or b"") + body(
        position,
        provider,
        key,
        type,
        user_id,
        amount_text,
        provider_ref,
        test,
        data_text,
        instant(recorded_at),
    )


def instant(recorded_at: datetime.datetime) -> bytes:
    """How the hashed bytes give an event's time: UTC, microseconds, quoted."""
    when = recorded_at.astimezone(datetime.UTC).isoformat(timespec="microseconds")[:-6] + "Z"
    return _text(when)


def body(
    position: int,
    provider: str,
    key: str,
    type: str,
    user_id: str,
    amount_text: str,
    provider_ref: str,
    test: bool,
    data_text: str,
    when: bytes,
) -> bytes:
    """`message` without the previous hash, `when` from `instant`: positional, for `verify`,
    which builds one per event."""
    return b"[%d, %b, %b, %b, %b, %b, %b, %b, %b, %b]" % (
        position,
        _text(provider),
        _text(key),
        _text(type),
        _text(user_id),
        amount_text.encode(),
        _text(provider_ref),
        b"true" if test else b"false",
        data_text.encode(),
        when,
    )


def expected_hash(chain: int, body: bytes, key: ChainKey) -> bytes | None:
    """The hash an event of `chain` with `body` (from `message`) must have; None: unknown chain."""
    if chain == KEYED:
        return key.mac(body)
    if chain == UNKEYED:
        return hashlib.sha256(body).digest()
    return None


def problem(
    version: int,
    prev: bytes | None,
    stored: bytes | None,
    body: bytes,
    key: ChainKey,
    head: bytes | None,
    first_keyed: int | None,
) -> str:
    """What is wrong with one event's hash (empty: nothing): `version` its chain, `prev` and
    `stored` its previous hash and its own as the log holds them, `body` its hashed bytes
    without the previous hash (`body`, or `message` without one), `head` the hash of its user's
    previous event, `first_keyed` the first keyed event of the log so far."""
    if stored is None:
        return "has no hash (written before hash chains existed)"
    if version == UNKEYED and first_keyed is not None:
        # Once the chain key is in use, every new event is keyed: an unkeyed one after that was
        # written by someone without the key.
        return f"has an unkeyed hash, but keyed hashes began at event {first_keyed}"
    expected = expected_hash(version, (prev or b"") + body, key)
    if expected is None:
        return f"has an unknown chain version {version}"
    if not hmac.compare_digest(expected, stored):
        return "its hash does not match its contents"
    if prev != head:
        return "does not chain to the previous event of its user"
    return ""
