"""service/profiles/medioot.toml against the hand-written module it replaced
(medioot_reference.py): for the same request,
the same Postback (key, type, user, amount, provider_ref, data, signed digests) or the same
refusal (class, reason, detail), the same answers and the same log parameters."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.events import Outcome, Postback
from service.providers import profile as engine
from service.providers.base import Inbound, Refused, Unauthenticated
from service.settings import Provider
from tests.helpers import MEDIOOT_SECRET, md5
from tests.helpers import medioot as signed
from tests.unit import medioot_reference as medioot

PROVIDER = Provider(name="medioot-app", protocol="medioot", secret=MEDIOOT_SECRET)
ROTATED = Provider(name="medioot-app", protocol="medioot", secrets=["new-secret", MEDIOOT_SECRET])
FORM = "application/x-www-form-urlencoded"
WALL = engine.ProfileWall.of(
    engine.compile_profile(engine.decode(engine._builtin("medioot"), "medioot"), "medioot")
)
EXTRAS = {
    "payout": "0.35",
    "userIp": "203.0.113.9",
    "campaign_id": "c-77",
    "offer_type": "cpa",
    "country": "DE",
    "uuid": "click-123",
    "offer_name": "Install & open",
}


def get(params: dict[str, str] | list[tuple[str, str]]) -> Inbound:
    pairs = tuple(params.items()) if isinstance(params, dict) else tuple(params)
    return Inbound(method="GET", query=pairs, content_type="", body=b"", client_ip=None)


def post(body: bytes, content_type: str, query: tuple[tuple[str, str], ...] = ()) -> Inbound:
    return Inbound(method="POST", query=query, content_type=content_type, body=body, client_ip=None)


def outcome(
    normalise: Callable[[Provider, Inbound], Postback], provider: Provider, inbound: Inbound
) -> Postback | tuple[object, ...]:
    """The Postback, or what describes the refusal: class, status, outcome, reason, detail."""
    try:
        result = normalise(provider, inbound)
    except Refused as exc:
        reason = exc.reason if isinstance(exc, Unauthenticated) else None
        return (type(exc).__name__, exc.status, exc.outcome, reason, exc.detail)
    return result


def assert_same(inbound: Inbound, provider: Provider = PROVIDER) -> Postback | tuple[object, ...]:
    module = outcome(medioot.normalise, provider, inbound)
    assert outcome(WALL.normalise, provider, inbound) == module
    assert WALL.loggable(inbound) == medioot.loggable(inbound)
    return module


def _nul(params: dict[str, str], field: str) -> dict[str, str]:
    params = {**params, field: params[field] + "\x00"}
    params["signature"] = md5(params["subid"] + params["transid"] + "3" + MEDIOOT_SECRET)
    return params


CASES: list[Inbound] = [
    get(signed("user-1", "T100", "10.50", "1", **EXTRAS)),
    get(signed("user-1", "T100", "10.50", "2", **EXTRAS)),
    get(signed("u", "T1", "5", country="", offer_name="Game", extra_thing="x")),
    get(signed("u", "T1", "0")),
    get(signed("u", "T1", "007.10")),
    get({**signed("u", "T1", "5"), "signature": signed("u", "T1", "5")["signature"].upper()}),
    get(
        {"subid": "1001", "transid": "5", "reward": "82312.50", "status": "1"}
        | {"signature": signed("1001", "58231", "2.50")["signature"]}
    ),
    get({**signed("u", "T1", "10.50"), "reward": "10.5"}),
    get({**signed("u", "T1", "3"), "signature": ""}),
    get({**signed("u", "T1", "3"), "signature": "not-hex"}),
    get({**signed("u", "T1", "3"), "signature": "\u00e9" * 32}),
    get(signed("u", "T1", "3", secret="another-secret")),
    get({**signed("u", "T1", "abc"), "signature": "0" * 32}),
    get({**signed("u", "T1", "5", "3"), "signature": "0" * 32}),
    get(
        {
            "subId": "u",
            "transId": "T1",
            "Reward": "3",
            "STATUS": "1",
            "SIGNATURE": signed("u", "T1", "3")["signature"],
            "UUID": "click-9",
            "USERIP": "192.0.2.1",
        }
    ),
    get({}),
    get({"status": "1"}),
    *(
        get({k: v for k, v in signed("u", "T1", "3").items() if k not in missing})
        for missing in (
            ("subid",),
            ("transid",),
            ("reward",),
            ("status",),
            ("signature",),
            ("transid", "reward"),
            ("status", "signature"),
            ("subid", "status", "signature"),
        )
    ),
    *(get(signed("u", "T1", "3", status)) for status in ("3", "0", "", " 1", "01", "credit")),
    *(
        get(signed("u", "T1", reward))
        for reward in ("NaN", "-4", "1e999999", "Infinity", "abc", "1,5", "1000000000000000", " 1")
    ),
    *(
        get([*signed("u", "T1", "3", uuid="c1").items(), (name, "x")])
        for name in ("subid", "reward", "status", "uuid", "SubId", "Signature")
    ),
    post(urlencode({"reward": "3"}).encode(), FORM, tuple(signed("u", "T1", "3").items())),
    *(
        get(_nul(signed("u", "T1", "3", uuid="c1", offer_name="o"), f))
        for f in ("subid", "transid", "uuid", "offer_name")
    ),
    get([*signed("u", "T1", "3").items(), ("off\x00er", "x")]),
    get({**signed("u", "T1", "3"), "subid": "u\ud800"}),
    get(signed("u", "T1", "3", offer_name="o\ud800")),
    get(signed("u" * 256, "T1", "3")),
    get(signed("u" * 255, "T1", "3")),
    get(signed("u", "T" * 256, "3")),
    get(signed("u", "T" * 255, "3")),
    get(signed("u", "T1", "3", offer_name="o" * 2001)),
    get(signed("u", "T1", "3", offer_name="o" * 2000)),
    get(signed("u" * 256, "T" * 256, "3", offer_name="o" * 2001)),
    get(signed("u" * 256, "T1", "3", offer_name="o" * 2001)),
    get([*signed("u", "T1", "3").items(), ("a\nb", "1"), ("A\nB", "2")]),
    post(
        json.dumps({**signed("u", "T1", "3"), "bad\nname": {"x": 1}}).encode(), "application/json"
    ),
    post(urlencode(signed("u", "T1", "10.50", "1", uuid="c1")).encode(), FORM),
    post(urlencode(signed("u", "T1", "2", "2")).encode(), f"{FORM}; charset=UTF-8"),
    post(b"subid=\xff&transid=1", FORM),
    post(json.dumps(signed("u", "T1", "10.50", "1", uuid="c1")).encode(), "application/json"),
    post(
        b'{"subid": "u", "transid": "T1", "reward": 10.50, "status": 1, "signature": "'
        + md5("uT110.50" + MEDIOOT_SECRET).encode()
        + b'"}',
        "application/json; charset=utf-8",
    ),
    post(
        b'{"subid": "u", "transid": "T1", "reward": 10.5, "status": 1, "signature": "'
        + md5("uT110.50" + MEDIOOT_SECRET).encode()
        + b'"}',
        "application/json",
    ),
    post(json.dumps({**signed("u", "T1", "3"), "uuid": None}).encode(), "application/json"),
    post(json.dumps({**signed("u", "T1", "3"), "uuid": True}).encode(), "application/json"),
    *(post(body, "application/json") for body in (b"[1, 2]", b"null", b"{", b"\xff\xfe")),
    post(
        json.dumps(signed("u", "T1", "3"))[:-1].encode() + b', "reward": "3"}', "application/json"
    ),
    *(
        post(urlencode(signed("u", "T1", "3")).encode(), ctype)
        for ctype in ("text/plain", "", "multipart/form-data; boundary=x")
    ),
    post(b"", "text/plain", tuple(signed("u", "T1", "3").items())),
    post(b"{", "application/json", tuple(signed("u", "T1", "3").items())),
]


@pytest.mark.parametrize("inbound", CASES)
def test_the_profile_normalises_as_the_module(inbound: Inbound) -> None:
    assert_same(inbound)
    assert_same(inbound, ROTATED)


def test_the_cases_cover_credits_reversals_and_every_refusal() -> None:
    results = [assert_same(inbound) for inbound in CASES]
    kinds = {r.type.value if isinstance(r, Postback) else r[0] for r in results}
    assert kinds == {"credited", "reversed", "Invalid", "Unauthenticated"}


_TEXT = st.text(alphabet="aT1.05-\u00e9 \x00", max_size=6)
_NAMES = st.sampled_from(
    ["subid", "SubId", "transid", "reward", "status", "signature", "uuid", "userIp", "other"]
)


@settings(max_examples=300, deadline=None)
@given(
    subid=_TEXT,
    transid=_TEXT,
    reward=st.sampled_from(["1", "10.50", "10.5", "0", "-1", "x", ""]) | _TEXT,
    status=st.sampled_from(["1", "2", "3", ""]),
    sign=st.booleans(),
    extra=st.lists(st.tuples(_NAMES, _TEXT), max_size=3),
    drop=st.sets(st.sampled_from(["subid", "transid", "reward", "status", "signature"])),
)
def test_the_profile_agrees_on_any_request(
    subid: str,
    transid: str,
    reward: str,
    status: str,
    sign: bool,
    extra: list[tuple[str, str]],
    drop: set[str],
) -> None:
    params = (
        signed(subid, transid, reward, status)
        if sign
        else {
            "subid": subid,
            "transid": transid,
            "reward": reward,
            "status": status,
            "signature": md5(subid + reward),
        }
    )
    pairs = [(n, v) for n, v in params.items() if n not in drop] + extra
    assert_same(get(pairs))
    assert_same(post(urlencode(pairs).encode(), FORM))


@pytest.mark.parametrize("outcome", list(Outcome))
@pytest.mark.parametrize("detail", ["", "missing parameter: subid", "invalid signature"])
def test_the_profile_answers_as_the_module(outcome: Outcome, detail: str) -> None:
    assert WALL.answer(outcome, detail) == medioot.answer(outcome, detail)
    inbound = get(signed("u", "T1", "3"))
    assert WALL.answering(inbound)(outcome, detail) == medioot.answer(outcome, detail)


def test_the_profile_keeps_the_same_secrets_out_of_the_log() -> None:
    assert WALL.SECRET_PARAMS == medioot.SECRET_PARAMS


@pytest.mark.parametrize("reverse", [False, True])
def test_a_simulated_postback_is_one_the_module_accepts(reverse: bool) -> None:
    built = engine.build(
        WALL.compiled,
        name="medioot-app",
        secret=MEDIOOT_SECRET,
        user="user 1",
        amount="12.50",
        transaction="tx/1",
        reverse=reverse,
    )
    inbound = built.inbound()
    postback = assert_same(inbound)
    assert isinstance(postback, Postback)
    assert postback.key == f"{'reversal' if reverse else 'credit'}:tx/1"
    assert built.method == "GET"
