"""The chain key, the hashed form of an event, and checkpoints: pure code."""

from __future__ import annotations

import datetime
import hashlib

import pytest

from service.domain import chain
from service.domain.chain import ChainKey
from service.domain.checkpoint import (
    FORMAT,
    Checkpoint,
    CheckpointError,
    decode,
    encode,
    heads_digest,
)

KEY = "unit-test-chain-key-0123456789abcdef"


@pytest.mark.parametrize("key", [KEY, "k" * 64, "long-" * 40, "\u00e9" * 40])
def test_the_pads_give_the_hmac_as_the_database_computes_it(key: str) -> None:
    # What event_hmac does in SQL: sha256(outer pad || sha256(inner pad || message)).
    pads = ChainKey(key).pads()
    inner, outer = bytes.fromhex(pads[:128]), bytes.fromhex(pads[128:])
    message = b"prev" + b'[1, "medioot"]'
    in_sql = hashlib.sha256(outer + hashlib.sha256(inner + message).digest()).digest()
    assert in_sql == ChainKey(key).mac(message)
    assert len(pads) == 256


@pytest.mark.parametrize("key", [KEY, "", "k" * 64, "long-" * 40, "\u00e9" * 40])
@pytest.mark.parametrize("message", [b"", b"m", b"x" * 63, b"y" * 64, b"z" * 1000])
def test_the_mac_function_is_the_mac(key: str, message: bytes) -> None:
    mac = ChainKey(key).mac_function()
    assert mac(message) == ChainKey(key).mac(message)
    assert mac(message) == mac(message)  # its states are copied, never consumed


def test_the_key_never_shows_in_its_repr() -> None:
    key = ChainKey(KEY)
    assert KEY not in repr(key) and KEY not in str(key)
    assert key.pads() not in repr(key)


def test_the_message_is_the_jsonb_text_of_the_fields() -> None:
    when = datetime.datetime(
        2026, 1, 2, 3, 4, 5, 60, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    body = chain.message(
        b"\x01\x02",
        position=7,
        provider="medioot",
        key='k"\\\n',
        type="credited",
        user_id="\u00e9\U0001f600\x01",
        amount_text="10.50",
        provider_ref="r",
        test=False,
        data_text='{"a": 1.50}',
        recorded_at=when,
    )
    assert (
        body
        == b"\x01\x02"
        + (
            '[7, "medioot", "k\\"\\\\\\n", "credited", "\u00e9\U0001f600\\u0001", 10.50,'
            ' "r", false, {"a": 1.50}, "2026-01-02T01:04:05.000060Z"]'
        ).encode()
    )


def test_every_character_is_escaped_as_postgresql_escapes_it() -> None:
    # PostgreSQL's escape_json: \" \\ \b \f \n \r \t, other characters below 0x20 as \u00xx,
    # everything else as it is.
    short = {
        '"': '\\"',
        "\\": "\\\\",
        "\b": "\\b",
        "\f": "\\f",
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
    }
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        c = chr(code)
        escaped = short.get(c) or (f"\\u{code:04x}" if code < 0x20 else c)
        assert chain._text(c) == f'"{escaped}"'.encode(), hex(code)


def test_each_chain_version_has_its_hash() -> None:
    key = ChainKey(KEY)
    assert chain.expected_hash(chain.UNKEYED, b"m", key) == hashlib.sha256(b"m").digest()
    assert chain.expected_hash(chain.KEYED, b"m", key) == key.mac(b"m")
    assert chain.expected_hash(7, b"m", key) is None


def checkpoint() -> Checkpoint:
    return Checkpoint(
        format=FORMAT,
        taken_at="2026-11-29T00:00:00+00:00",
        boundary=1234,
        events=10,
        users=2,
        heads=heads_digest({"a": "00", "b": "11"}),
    ).signed(ChainKey(KEY))


def test_a_signed_checkpoint_checks_and_survives_its_file() -> None:
    again = decode(encode(checkpoint()))
    again.check(ChainKey(KEY))
    assert again == checkpoint()


@pytest.mark.parametrize(
    "change",
    [{"boundary": 1233}, {"events": 11}, {"users": 3}, {"heads": "0" * 64}, {"taken_at": "x"}],
)
def test_any_changed_field_breaks_the_signature(change: dict[str, object]) -> None:
    import msgspec

    altered = msgspec.structs.replace(checkpoint(), **change)
    with pytest.raises(CheckpointError, match="signature"):
        altered.check(ChainKey(KEY))


def test_another_key_does_not_check() -> None:
    with pytest.raises(CheckpointError, match="another chain key"):
        checkpoint().check(ChainKey(KEY + "x"))


def test_the_checkpoint_signature_is_not_a_chain_hash() -> None:
    # A key of its own: no chain hash can pass for a checkpoint signature, nor the other way.
    cp = checkpoint()
    assert cp.signature != ChainKey(KEY).mac(encode(cp)).hex()


@pytest.mark.parametrize("text", [b"", b"nope", b"[]", b'{"format": 1}', b'{"x": 1}'])
def test_what_is_not_a_checkpoint_is_one_clear_error(text: bytes) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        decode(text)


def test_the_heads_digest_does_not_depend_on_order() -> None:
    assert heads_digest({"a": "1", "b": "2"}) == heads_digest({"b": "2", "a": "1"})
    assert heads_digest({"a": "1", "b": "2"}) != heads_digest({"a": "2", "b": "1"})
    assert heads_digest({"a": "1b"}) != heads_digest({"a1": "b"})
