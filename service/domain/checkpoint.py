"""Checkpoints: a signed digest of every user's chain head, kept outside the database.

A checkpoint covers the events of every transaction whose id is below `boundary` (the xmin of
the snapshot it was taken in: all those transactions had ended, and no later one can get a
smaller id, so that set of events can never grow). For each user it takes the hash of the
user's last event in that set; `heads` is the sha256 over those (user, hash) pairs in user
order, and `signature` an HMAC of every field with a key derived from the chain key. `verify
--checkpoint` recomputes the heads over the same boundary from the log as it is now: any event
before the boundary that was edited, removed or added changes a head (its user's chain is
recomputed, or it no longer verifies), even by someone holding the chain key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

import msgspec

from .chain import ChainKey

FORMAT = "postback-ledger checkpoint 1"


class CheckpointError(Exception):
    """A checkpoint file that cannot be used, in one line."""


class Checkpoint(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    format: str
    taken_at: str
    boundary: int
    events: int
    users: int
    heads: str
    signature: str = ""

    def signed(self, key: ChainKey) -> Checkpoint:
        return msgspec.structs.replace(self, signature=_signature(self, key))

    def check(self, key: ChainKey) -> None:
        if self.format != FORMAT:
            raise CheckpointError(f"format is {self.format!r}, expected {FORMAT!r}")
        if not hmac.compare_digest(self.signature, _signature(self, key)):
            raise CheckpointError(
                "signature does not match: the file was altered, or signed with another chain key"
            )


def _signature(cp: Checkpoint, key: ChainKey) -> str:
    fields = (cp.format, cp.taken_at, cp.boundary, cp.events, cp.users, cp.heads)
    return key.derive("checkpoint").mac(msgspec.json.encode(fields)).hex()


def heads_digest(heads: Mapping[str, str]) -> str:
    """sha256 over the (user, head hash) pairs in user order, each pair a JSON array line."""
    digest = hashlib.sha256()
    for user in sorted(heads):
        digest.update(msgspec.json.encode([user, heads[user]]) + b"\n")
    return digest.hexdigest()


def encode(cp: Checkpoint) -> bytes:
    return msgspec.json.encode(cp)


def decode(text: bytes) -> Checkpoint:
    try:
        return msgspec.json.decode(text, type=Checkpoint)
    except msgspec.ValidationError as exc:
        raise CheckpointError(f"not a checkpoint: {exc}") from None
    except msgspec.DecodeError:
        raise CheckpointError("not a checkpoint: not JSON") from None
