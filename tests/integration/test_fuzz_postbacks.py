"""Fuzzing every postback endpoint, bounded (the long run is ops/chaos/fuzz.py).

hypothesis drives the fuzzer's own grammar (`ops/chaos/fuzzlib.py`) through a `Source` that
draws every choice, so a failure shrinks to a small request. Each example is one item: a
hostile request (random methods, paths, parameters, bodies, encodings, headers, malformed HTTP,
X-Forwarded-For spoofing) or a valid postback of one of the three walls, sent over raw
connections to the service on a real port, from 127.0.0.1 (an untrusted peer) or 127.0.0.2
(the trusted proxy). After every example: no answer is a 5xx, every valid postback was answered
200, and the database holds exactly the events of the valid postbacks sent so far, with every
wallet equal to them (`Ledger.check`): no wallet moved for a request without a valid signature,
token and allowed address.

schemathesis on /v1/ is tests/integration/test_openapi.py.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ops.chaos.fuzzlib import (
    ALLOWED_CLIENTS,
    Expect,
    Grammar,
    Ledger,
    Pair,
    RandomSource,
    Req,
    Target,
    send_item,
)
from service.app import create_app
from service.settings import Settings
from tests import helpers

TARGET = Target(
    medioot_secret=helpers.MEDIOOT_SECRET,
    inbrain_secret="test-fuzz-inbrain-secret",
    adgate_token="test-fuzz-adgate-token_0123456789",
)
FUZZ = [
    "path",
    "medioot",
    "medioot-near",
    "inbrain",
    "inbrain-near",
    "adgate",
    "raw",
    "shift",
    "deep",
]
EXAMPLES = 35  # per family: about 300 examples in all, well under a minute


class Draws:
    """A fuzzlib Source whose every choice is a hypothesis draw (shrinking toward the first
    option, "no" and zero)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def below(self, n: int) -> int:
        value: int = self.data.draw(st.integers(0, n - 1))
        return value

    def chance(self, percent: int) -> bool:
        value: int = self.data.draw(st.integers(0, 99))
        return value >= 100 - percent

    def raw(self, n: int) -> bytes:
        value: bytes = self.data.draw(st.binary(min_size=n, max_size=n))
        return value


@pytest.fixture(scope="module")
def state() -> tuple[Grammar, Ledger]:
    """One grammar and one ledger for the module's database: every example adds to them."""
    return Grammar(TARGET, "t"), Ledger()


@pytest.fixture
def fuzz_settings(database_url: str) -> Settings:
    return helpers.settings(database_url, server=TARGET.server(), providers=TARGET.providers())


@pytest.fixture
async def pair(aiohttp_client: Any, fuzz_settings: Settings) -> AsyncIterator[Pair]:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(fuzz_settings))
    assert client.host == "127.0.0.1"
    connections = Pair(client.host, client.port)
    try:
        yield connections
    finally:
        connections.close()


async def run(
    pair: Pair, pool: asyncpg.Pool, state: tuple[Grammar, Ledger], reqs: list[Req]
) -> None:
    grammar, ledger = state
    replies = await send_item(pair, grammar, ledger, reqs)
    for req, reply in zip(reqs, replies, strict=True):
        seen = f"{reply.status or reply.error} {reply.body[:300]!r} for {req.describe(2000)}"
        assert reply.status is None or reply.status < 500, f"a 5xx: {seen}"
        assert reply.error != "timeout", f"no answer: {seen}"
        if req.statuses:
            assert reply.status in req.statuses, f"must be {req.statuses}: {seen}"
        if req.valid:
            body = reply.body.decode("utf-8", "replace").strip()
            assert reply.status == 200, f"a valid postback was refused: {seen}"
            assert not req.answer or body == req.answer, f"answered {body!r}: {seen}"
    check = await ledger.check(pool)
    assert not check.problems, "\n".join(check.problems[:5])


@pytest.mark.parametrize("family", FUZZ)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
async def test_fuzzed_postbacks_get_no_5xx_and_move_no_wallet(
    pair: Pair, pool: asyncpg.Pool, state: tuple[Grammar, Ledger], family: str, data: Any
) -> None:
    grammar, _ = state
    await run(pair, pool, state, grammar.item(Draws(data), family))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data(), family=st.sampled_from(["valid", "valid", "replay", "resend"]))
async def test_valid_postbacks_move_exactly_their_wallets(
    pair: Pair, pool: asyncpg.Pool, state: tuple[Grammar, Ledger], family: str, data: Any
) -> None:
    """Signed Medioot and inBrain postbacks in every allowed encoding, AdGate receipt lifecycles
    through the trusted proxy, credits with their reversals, conflicts and exact repeats."""
    grammar, _ = state
    await run(pair, pool, state, grammar.item(Draws(data), family))


async def test_captured_postbacks_reshaped_or_replayed_move_at_most_what_the_rules_allow(
    pair: Pair, pool: asyncpg.Pool, state: tuple[Grammar, Ledger]
) -> None:
    """Seeded items of the two families built from one captured postback, many enough to hold
    every case: boundary shifts (403, nothing moves), and replays with the unsigned fields
    changed, among them reversals larger than their credit (they take back the credit only),
    conflicts (a second reversal, another user's) and reversals that never pair; and the
    captured URLs that tried to pre-empt or undo a chargeback (`captured_cases`)."""
    grammar, _ = state
    reversals_above_credit = 0
    cases: Counter[str] = Counter()
    for i in range(120):
        reqs = grammar.item(
            RandomSource(random.Random(f"captured/{i}")), ("shift", "replay")[i % 2]
        )
        await run(pair, pool, state, reqs)
        credits = {e.link: e for r in reqs for e in r.expects if e.linked and e.delta > 0}
        reversals_above_credit += sum(
            1
            for r in reqs
            for e in r.expects
            if e.linked and e.delta < 0 and e.link in credits and e.amount > credits[e.link].amount
        )
        cases.update(captured_cases(reqs))
    assert reversals_above_credit > 0  # the case the rules bound was sent, and checked
    assert set(cases) == set(CAPTURED_CASES), cases  # each was sent, and checked


CAPTURED_CASES = {
    "flipped credit, then its chargeback": "a Medioot credit URL resent with status=2 (and maybe"
    " another uuid) takes back its own credit; the real chargeback under its own transid after"
    " it is a DUP",
    "flipped chargeback": "a chargeback URL under its own transid resent with status=1: a"
    " conflict (DUP), nothing moves",
    "inBrain reversal for nothing": "an inBrain reversal forged from a credit's body with"
    " Reward 0 or 0.01, then the real reversal (a conflict: the forged one took the whole credit)",
    "inBrain test reversal": "an inBrain reversal forged with IsTest, then the real reversal (it"
    " takes back the whole credit)",
}


def captured_cases(reqs: list[Req]) -> set[str]:
    """Which of CAPTURED_CASES an item of the replay family holds, from what `Model` said of
    each request (the event it records, or would have recorded)."""
    found = set()
    events = [(r, (r.expects or r.unrecorded or (None,))[0]) for r in reqs]
    for i, (r, e) in enumerate(events):
        if e is None:
            continue
        later = [(x, f) for x, f in events[i + 1 :] if f is not None and x.family[:6] == "valid-"]
        if r.family == "replay-medioot" and r.expects and e.delta < 0:
            if any(
                x.unrecorded and f.delta < 0 and f.key.endswith("-rv") and x.answer == "DUP"
                for x, f in later
            ):
                found.add("flipped credit, then its chargeback")
        if r.family == "replay-medioot" and r.unrecorded and e.delta > 0 and e.key.endswith("-rv"):
            found.add("flipped chargeback")
        if r.family == "replay-inbrain" and r.expects and e.key.startswith(("reversal:", "test-")):
            if not any(f.key.startswith("reversal:") for _, f in later):
                continue
            if e.test and e.key.startswith("test-reversal:"):
                found.add("inBrain test reversal")
            elif not e.test and e.amount <= Decimal("0.01"):
                found.add("inBrain reversal for nothing")
    return found


async def test_the_fuzz_configuration_admits_valid_adgate_only_through_the_proxy(
    pair: Pair, pool: asyncpg.Pool, state: tuple[Grammar, Ledger]
) -> None:
    """The oracle's premise: an allowed client behind the trusted proxy passes; the same
    X-Forwarded-For from an untrusted peer, or the proxy without it, does not."""
    grammar, ledger = state
    target = (
        f"/postbacks/{TARGET.adgate}/{TARGET.adgate_token}"
        "?s1=premise-user&shm_event_id=premise-1&shm_upload_offer_id=premise-o"
        "&shm_status=APPROVED&points=5"
    ).encode()
    forwarded = [(b"X-Forwarded-For", ALLOWED_CLIENTS[0].encode())]
    expect = Expect(TARGET.adgate, "event:premise-1", "premise-user", Decimal(5), 1)
    spoof = Req("premise", b"GET", target, list(forwarded), request_id="f-premise-1")
    bare = Req("premise", b"GET", target, via_proxy=True, request_id="f-premise-2")
    real = Req(
        "valid-premise",
        b"GET",
        target,
        list(forwarded),
        via_proxy=True,
        valid=True,
        expects=(expect,),
        answer="OK",
        request_id="v-premise",
    )
    replies = await send_item(pair, grammar, ledger, [spoof, bare, real])
    assert [r.status for r in replies] == [403, 403, 200]
    amount = await pool.fetchval("SELECT amount FROM events WHERE key = 'event:premise-1'")
    assert amount == 5
    assert not (await ledger.check(pool)).problems


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("wall", ["medioot", "inbrain", "adgate"])
async def test_a_body_that_cannot_be_decoded_is_a_4xx_not_a_500(
    pair: Pair, wall: str, encoding: str
) -> None:
    """Found by the fuzzer: `Content-Encoding: gzip` (or deflate) on a body that is not
    compressed. The contract says no input gets a 500; a body the server cannot read is the
    caller's mistake."""
    path = f"/postbacks/{wall}"
    if wall == "adgate":
        path += f"/{TARGET.adgate_token}"
    req = Req(
        "regression",
        b"POST",
        path.encode(),
        [(b"Content-Type", b"application/json"), (b"Content-Encoding", encoding.encode())],
        b'{"not": "compressed"}',
        request_id="f-regression",
    )
    reply = await pair.send(req)
    assert reply.status is not None and 400 <= reply.status < 500, f"{reply.status} {reply.body!r}"
