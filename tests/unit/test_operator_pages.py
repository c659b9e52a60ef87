"""Pure parts of the operator pages: words, where sign-in may send a browser, percentages, and
the postback log's filters and cursors (shared with the API)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.events import EventType, Outcome
from service.providers.base import identify
from service.web import words
from service.web.api import decode_log_cursor, encode_log_cursor, postback_filter
from service.web.middlewares import ApiError
from service.web.pages import _next, _percent, summary_lines


def test_every_outcome_and_event_type_has_words() -> None:
    for outcome in Outcome:
        assert words.outcome(outcome.value) != outcome.value
    for event_type in EventType:
        assert words.event(event_type.value) != event_type.value
    assert words.outcome("from-a-newer-version") == "from-a-newer-version"


def test_a_shed_postback_is_not_a_database_outage() -> None:
    assert words.outcome("shed") == "Not recorded: overloaded, shed (the wall retries)"
    assert words.outcome("shed") != words.outcome("unavailable")
    assert words.refused("shed")
    assert words.refused("unavailable")


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        ("signature", "Bad signature"),
        ("token", "Wrong URL token"),
        ("source_ip", "Address not allowed"),
        ("replay", "Signature reused with other values"),
        (None, "Refused: not authenticated"),
    ],
)
def test_an_authentication_failure_says_why(reason: str | None, said: str) -> None:
    assert words.outcome("rejected", reason) == said


def test_refused_outcomes_and_signs() -> None:
    assert words.refused("rejected") and words.refused("invalid") and words.refused("conflict")
    assert not words.refused("credited") and not words.refused("duplicate")
    assert [words.sign(t) for t in ("credited", "reversed", "debited", "hold_placed")] == [
        "+",
        "-",
        "-",
        "",
    ]


@pytest.mark.parametrize(
    ("asked", "went"),
    [
        ("/ui/postbacks?outcome=rejected", "/ui/postbacks?outcome=rejected"),
        ("/ui/", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
        ("https://evil.example/ui/", "/ui/"),
        ("/ui/\\\\evil.example", "/ui/"),
        ("/v1/events", "/ui/"),
        ("", "/ui/"),
        ("/ui/" + "a" * 3000, "/ui/"),
    ],
)
def test_sign_in_only_returns_to_a_page_of_ours(asked: str, went: str) -> None:
    assert _next(asked) == went


def test_percentages_are_exact_decimals() -> None:
    assert _percent(0, 0) == "none"
    assert _percent(1, 3) == "33.3 %"
    assert _percent(2, 2) == "100.0 %"


@given(
    st.datetimes(
        min_value=dt.datetime(1970, 1, 1),
        max_value=dt.datetime(9999, 1, 1),
        timezones=st.just(dt.UTC),
    ),
    st.integers(min_value=1, max_value=2**63 - 1),
)
def test_a_log_cursor_gives_back_exactly_where_the_page_ended(at: dt.datetime, pid: int) -> None:
    assert decode_log_cursor(encode_log_cursor(at, pid)).before == (at, pid)


def test_a_plain_number_is_a_postback_id() -> None:
    assert decode_log_cursor("42").before_id == 42


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"since": "2026-11-29T08:00:00"}, "invalid_since"),
        ({"until": "tomorrow"}, "invalid_until"),
        ({"since": "2026-11-29T08:00:00Z", "until": "2026-11-29T08:00:00Z"}, "invalid_until"),
        ({"outcome": "lost"}, "invalid_outcome"),
        ({"user": "x" * 256}, "invalid_user"),
        ({"transaction": "a\x00b"}, "invalid_transaction"),
        ({"before": "not-a-cursor!"}, "invalid_cursor"),
        ({"since": "9" * 41}, "invalid_since"),
    ],
)
def test_filters_that_do_not_parse_name_their_parameter(query: dict[str, str], code: str) -> None:
    with pytest.raises(ApiError) as raised:
        postback_filter(query)
    assert raised.value.status == 400 and raised.value.code == code


def test_filters_parse_offsets_and_a_form_s_naive_utc() -> None:
    where = postback_filter({"since": "2026-11-29T10:00:00+02:00", "user": "u"})
    assert where.since == dt.datetime(2026, 11, 29, 8, tzinfo=dt.UTC) and where.user_id == "u"
    unescaped = postback_filter({"since": "2026-11-29T10:00:00 02:00"})  # "+" read as a space
    assert unescaped.since == dt.datetime(2026, 11, 29, 8, tzinfo=dt.UTC)
    form = postback_filter({"since": "2026-11-29T08:00"}, naive_utc=True)
    assert form.since == dt.datetime(2026, 11, 29, 8, tzinfo=dt.UTC)


def test_identify_reads_user_and_transaction_whatever_their_case() -> None:
    params = {"SubID": "u1", "TransID": "t" * 300, "other": "x"}
    user, transaction = identify(params, ("subid", "transid"))
    assert user == "u1" and transaction == "t" * 255
    assert identify({"subid": ""}, ("subid", "transid")) == (None, None)


def test_a_wall_s_summary_lists_outcomes_in_order_and_each_refusal_reason_apart() -> None:
    rows = [
        {"outcome": "rejected", "reason": "source_ip", "n": 2},
        {"outcome": "credited", "reason": None, "n": 5},
        {"outcome": "rejected", "reason": "signature", "n": 1},
        {"outcome": "credited", "reason": None, "n": 1},  # two instances' rows: added up
        {"outcome": "from-a-newer-version", "reason": None, "n": 1},
    ]
    assert summary_lines(rows) == [
        ("credited", None, 6),
        ("rejected", "signature", 1),
        ("rejected", "source_ip", 2),
        ("from-a-newer-version", None, 1),
    ]
