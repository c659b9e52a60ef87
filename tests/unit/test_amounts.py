"""service/domain/amounts.py: exact parsing of amounts and their JSON text."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from service.domain.amounts import AmountError, format_amount, parse_amount

TWENTY_DECIMALS = "1." + "12345678901234567890"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", Decimal("0")),
        ("10.50", Decimal("10.50")),
        ("007", Decimal("7")),
        ("999999999999999.99", Decimal("999999999999999.99")),
        (TWENTY_DECIMALS, Decimal(TWENTY_DECIMALS)),
        ("0.00000000000000000001", Decimal("1E-20")),
    ],
)
def test_valid_amounts_are_exact(text: str, expected: Decimal) -> None:
    value = parse_amount(text)
    assert isinstance(value, Decimal)
    assert value == expected
    assert value.is_finite()


def test_scale_is_kept() -> None:
    value = parse_amount("10.50")
    assert value.as_tuple().exponent == -2
    assert str(value) == "10.50"


def test_twenty_decimals_keep_every_digit() -> None:
    value = parse_amount(TWENTY_DECIMALS)
    assert value.as_tuple().exponent == -20
    assert str(value) == TWENTY_DECIMALS


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1",
        "1 ",
        "-4",
        "+1",
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "1e3",
        "1E3",
        "1e999999",
        "abc",
        "1,5",
        "1.",
        ".5",
        "1_000",
        "1.2.3",
        "1\n",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: Decimal() would take it, the contract does not
        "1" * 16,
        "1000000000000000",
        "1." + "1" * 21,
    ],
)
def test_invalid_amounts_raise(text: str) -> None:
    with pytest.raises(AmountError):
        parse_amount(text)


def test_amount_error_is_a_value_error_with_a_reason() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_amount("-4")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("0E-10"), "0.0000000000"),
        (Decimal("1E+3"), "1000"),
        (Decimal("1E-20"), "0.00000000000000000001"),
        (Decimal("10.50"), "10.50"),
        (Decimal("-5.25"), "-5.25"),
        (Decimal("-0"), "0"),
        (Decimal("0"), "0"),
    ],
)
def test_format_amount_never_uses_exponent_notation(value: Decimal, expected: str) -> None:
    text = format_amount(value)
    assert text == expected
    assert "e" not in text.lower()


def test_format_amount_never_gives_negative_zero() -> None:
    # -Decimal("0.00") is the effect of reversing a zero amount; "-0" is already mapped to "0".
    assert not format_amount(Decimal("-0.00")).startswith("-")


@st.composite
def amounts(draw: st.DrawFn) -> Decimal:
    """Any amount the contract allows, built from digits: up to 15 integer digits, 20 decimals."""
    whole = draw(st.text("0123456789", min_size=1, max_size=15))
    fraction = draw(st.text("0123456789", min_size=0, max_size=20))
    return Decimal(f"{whole}.{fraction}" if fraction else whole)


@given(amounts())
def test_parse_of_format_round_trips(value: Decimal) -> None:
    parsed = parse_amount(format_amount(value))
    assert parsed == value
    assert parsed.as_tuple() == value.as_tuple()


@given(
    st.integers(min_value=0, max_value=10**15 - 1),
    st.integers(min_value=-20, max_value=14),
)
def test_exponent_forms_round_trip_as_plain_text(coefficient: int, exponent: int) -> None:
    # Decimal((0, digits, exponent)) is how 1E+3 or 0E-10 arise: from arithmetic, not from text.
    digits = tuple(int(d) for d in str(coefficient))
    value = Decimal((0, digits, exponent))
    assume(value < 10**15)
    text = format_amount(value)
    assert "E" not in text and "e" not in text
    assert parse_amount(text) == value
