"""Amounts: exact decimals, parsed from the text the wall sent, never rounded."""

from __future__ import annotations

import re
from decimal import Context, Decimal, Inexact

# Plain decimal notation only: no sign, exponent, NaN or Infinity. Fifteen integer digits keep
# every amount below 10^15 (the limit for every wall); the fraction is bounded so that no input
# can make the database work on a number of absurd size. Leading zeros are harmless and allowed.
_AMOUNT = re.compile(r"0*([0-9]{1,15})(?:\.([0-9]{1,20}))?")


ZERO = Decimal(0)
# Amounts carry up to 35 significant digits and sums grow from there; the default context
# (28 digits) would round them. This one is wide enough for any ledger and traps rounding.
EXACT = Context(prec=200, traps=[Inexact])


class AmountError(ValueError):
    pass


def parse_amount(text: str) -> Decimal:
    """The exact value of `text`, or AmountError naming why it is not an amount."""
    if not _AMOUNT.fullmatch(text):
        if text.strip() != text or not text:
            raise AmountError("is not a decimal number")
        if text.startswith("-"):
            raise AmountError("must not be negative")
        raise AmountError("must be a plain decimal number below 10^15 (at most 20 decimals)")
    return Decimal(text)


_LIMIT = Decimal(10) ** 15


def check_amount(value: Decimal) -> Decimal:
    """The same rules for an amount that arrived already decoded (a JSON number)."""
    if not value.is_finite():
        raise AmountError("must be a finite number")
    if value.is_signed() and not value.is_zero():
        raise AmountError("must not be negative")
    if value.copy_abs() >= _LIMIT:
        raise AmountError("must be below 10^15")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -20:
        raise AmountError("has more than 20 decimals")
    if value.is_zero():
        # 0E+999999 is zero, but no database column takes that exponent.
        return value.copy_abs() if isinstance(exponent, int) and exponent <= 0 else Decimal(0)
    return value


def format_amount(value: Decimal) -> str:
    """The JSON form of an amount: a string holding the exact decimal, never exponent notation."""
    if value.is_zero():
        value = value.copy_abs()  # no "-0.00"
    return format(value, "f")
