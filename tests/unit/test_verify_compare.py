"""service/verify.py: comparing the recomputed wallets with the projection, and the summary."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from service.domain.wallet import Wallet
from service.verify import Report, compare


def wallet(balance: str, credited: str, reversed_: str, count: int) -> Wallet:
    return Wallet(Decimal(balance), Decimal(credited), Decimal(reversed_), event_count=count)


def row(balance: str, credited: str, reversed_: str, count: int) -> dict[str, Any]:
    # What the projection query returns: numeric columns come back with the database's scale.
    return {
        "balance": Decimal(balance),
        "total_credited": Decimal(credited),
        "total_reversed": Decimal(reversed_),
        "total_debited": Decimal(0),
        "event_count": count,
    }


def test_nothing_to_compare() -> None:
    assert compare({}, {}) == []


def test_agreeing_wallets() -> None:
    computed = {"u1": wallet("6.25", "10.50", "4.25", 2), "u2": wallet("0", "0", "0", 1)}
    stored = {"u1": row("6.25", "10.50", "4.25", 2), "u2": row("0", "0", "0", 1)}
    assert compare(computed, stored) == []


def test_scale_alone_is_not_a_difference() -> None:
    assert compare({"u1": wallet("5", "5", "0", 1)}, {"u1": row("5.00", "5.0", "0.000", 1)}) == []


def test_wallet_missing_from_the_projection() -> None:
    differences = compare({"u1": wallet("5", "5", "0", 1)}, {})
    assert len(differences) == 1
    assert "'u1'" in differences[0]
    assert "missing from the projection" in differences[0]


def test_wallet_in_the_projection_without_events() -> None:
    differences = compare({}, {"ghost": row("5", "5", "0", 1)})
    assert differences
    assert all("'ghost'" in line for line in differences)
    assert any("balance" in line and "5" in line for line in differences)
    assert any("event_count" in line for line in differences)


def test_empty_wallet_in_the_projection_without_events_agrees() -> None:
    assert compare({}, {"idle": row("0", "0", "0", 0)}) == []


def test_differing_balance_names_both_values() -> None:
    differences = compare(
        {"u1": wallet("6.25", "10.50", "4.25", 2)}, {"u1": row("7.25", "10.50", "4.25", 2)}
    )
    assert differences == ["wallet 'u1': balance is 7.25 in the projection, 6.25 from the events"]


def test_differing_event_count_is_shown_as_a_number() -> None:
    differences = compare({"u1": wallet("1", "1", "0", 1)}, {"u1": row("1", "1", "0", 2)})
    assert differences == ["wallet 'u1': event_count is 2 in the projection, 1 from the events"]


def test_values_are_shown_without_exponent_notation() -> None:
    differences = compare(
        {"u1": wallet("1E+3", "1E+3", "0", 1)}, {"u1": row("0E-10", "1000", "0", 1)}
    )
    assert differences == [
        "wallet 'u1': balance is 0.0000000000 in the projection, 1000 from the events"
    ]


def test_every_differing_field_is_reported() -> None:
    differences = compare({"u1": wallet("1", "2", "1", 2)}, {"u1": row("9", "9", "9", 9)})
    assert len(differences) == 4
    for name in ("balance", "total_credited", "total_reversed", "event_count"):
        assert any(name in line for line in differences)


def test_differences_are_sorted_by_user_and_one_line_each() -> None:
    computed = {"b": wallet("1", "1", "0", 1), "a": wallet("1", "1", "0", 1)}
    differences = compare(computed, {})
    assert differences == [
        "wallet 'a': missing from the projection",
        "wallet 'b': missing from the projection",
    ]


def test_user_ids_with_newlines_stay_on_one_line() -> None:
    differences = compare({"evil\nuser": wallet("1", "1", "0", 1)}, {})
    assert len(differences) == 1
    assert "\n" not in differences[0]


def test_report_ok_summary() -> None:
    report = Report(events=12, wallets=3, offers=2)
    assert report.ok
    assert report.summary() == "verify: ok: 3 wallets and 2 receipt offers agree with 12 events"


def test_report_failed_summary() -> None:
    report = Report(events=12, wallets=3, differences=["wallet 'u1': missing", "wallet 'u2': x"])
    assert not report.ok
    summary = report.summary()
    assert summary.startswith("verify: FAILED")
    assert "2 differences" in summary
    assert "3 wallets" in summary
    assert "12 events" in summary
    assert "\n" not in summary


def test_empty_report_is_ok() -> None:
    assert Report().ok
    assert Report().summary() == "verify: ok: 0 wallets and 0 receipt offers agree with 0 events"
