"""service/web/api.py cursors and service/web/auth.py key lookup: the API's pure helpers."""

from __future__ import annotations

import base64

import pytest

from service.settings import ApiKey
from service.web.api import decode_cursor, encode_cursor
from service.web.auth import ApiKeys
from service.web.middlewares import ApiError

MAX_POSITION = 2**63 - 1


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def refused(text: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        decode_cursor(text)
    assert info.value.status == 400
    assert info.value.code == "invalid_cursor"
    return info.value


# --- cursors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 1, 42, 10**12, MAX_POSITION])
def test_cursor_round_trip(position: int) -> None:
    cursor = encode_cursor(position)
    assert decode_cursor(cursor) == position


@pytest.mark.parametrize("position", [0, 7, 123456789, MAX_POSITION])
def test_cursor_is_opaque_url_safe_text(position: int) -> None:
    cursor = encode_cursor(position)
    assert cursor != str(position)
    assert "=" not in cursor
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_cursors_of_different_positions_differ() -> None:
    assert len({encode_cursor(p) for p in range(200)}) == 200


@pytest.mark.parametrize(
    ("text", "position"), [("0", 0), ("42", 42), ("0042", 42), (str(MAX_POSITION), MAX_POSITION)]
)
def test_plain_numbers_are_accepted(text: str, position: int) -> None:
    assert decode_cursor(text) == position


def test_padded_cursor_is_accepted() -> None:
    padded = base64.urlsafe_b64encode(b"p42").decode()
    assert decode_cursor(padded) == 42


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "!!!",
        "p42",
        "=",
        "cD",  # "p" with no digits
        "\u00e9t\u00e9",
        "%00",
    ],
)
def test_garbage_is_refused(text: str) -> None:
    refused(text)


@pytest.mark.parametrize("text", ["-1", "-42", b64("p-1"), b64("p-42")])
def test_negative_is_refused(text: str) -> None:
    refused(text)


@pytest.mark.parametrize(
    "text",
    [
        str(MAX_POSITION + 1),
        "9" * 19,
        "1" * 20,
        "9" * 1000,
        b64(f"p{MAX_POSITION + 1}"),
        b64("p" + "9" * 19),
        b64("p" + "1" * 20),
    ],
)
def test_too_large_is_refused(text: str) -> None:
    refused(text)


@pytest.mark.parametrize(
    "text",
    [
        b64("hello"),
        b64("42"),
        b64("P42"),
        b64("p42x"),
        b64(" p42"),
        b64("p42\n"),
        b64("q42"),
        b64("p\u0664\u0662"),  # ARABIC-INDIC DIGITS FOUR, TWO
        base64.urlsafe_b64encode(b"p4\xff").decode(),
    ],
)
def test_other_base64_is_refused(text: str) -> None:
    refused(text)


@pytest.mark.parametrize("text", ["\u00b2", "1\u00b2", "\u2460"])
def test_digit_like_characters_are_a_400_not_a_crash(text: str) -> None:
    # str.isdigit() holds for SUPERSCRIPT TWO and CIRCLED DIGIT ONE, but int() refuses them.
    refused(text)


@pytest.mark.parametrize("text", ["\u0664\u0662", "\uff14\uff12"])
def test_non_ascii_decimal_digits_are_refused(text: str) -> None:
    # Arabic-Indic and fullwidth digits: no cursor this API handed out looks like this.
    refused(text)


@pytest.mark.parametrize("text", ["c.D.E", "c D E", "cDE!", "c\nDE"])
def test_characters_outside_base64url_are_refused(text: str) -> None:
    # encode_cursor(1) is "cDE"; the same letters with junk between them are malformed.
    assert encode_cursor(1) == "cDE"
    refused(text)


# --- ApiKeys.find --------------------------------------------------------------------------------

READER = ApiKey(name="reader", key="reader-key-0001", scopes=["read"])
OTHER = ApiKey(name="other", key="other-key-00002", scopes=[])
KEYS = ApiKeys([READER, OTHER])


def test_right_key_is_found() -> None:
    found = KEYS.find("reader-key-0001")
    assert found is not None
    assert found.name == "reader"
    assert found.scopes == frozenset({"read"})


def test_each_key_finds_its_own_entry() -> None:
    found = KEYS.find("other-key-00002")
    assert found is not None
    assert found.name == "other"
    assert found.scopes == frozenset()


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "wrong-key",
        "reader-key-000",  # a prefix
        "reader",  # a shorter prefix
        "reader-key-00011",  # an extension
        "READER-KEY-0001",
        " reader-key-0001",
        "reader-key-0001\n",
        "\ud800",
    ],
)
def test_other_text_finds_nothing(presented: str) -> None:
    assert KEYS.find(presented) is None


def test_no_keys_configured() -> None:
    assert ApiKeys([]).find("reader-key-0001") is None
