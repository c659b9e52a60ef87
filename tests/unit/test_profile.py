"""service/providers/profile.py: the wall-profile engine, pure (no HTTP, no database).

Every signature is computed here independently with hashlib/hmac from the documented recipe, so
the engine is checked against the recipe, not against itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from service.domain.events import EventType, Outcome, Signed
from service.domain.settlement import WHOLE
from service.providers import profile as engine
from service.providers.base import Acknowledged, Inbound, Invalid, Unauthenticated
from service.providers.registry import protocol_names
from service.settings import ConfigError, Provider, Server, parse

SECRET = "s3cret-key"
PUBLIC_URL = "https://ledger.example.com"

BASE: dict[str, Any] = {
    "user": "snuid",
    "transaction": "id",
    "amount": "currency",
    "params": ["offer_id"],
    "signature": {"template": "{id}:{snuid}:{currency}:{secret}", "param": "verifier"},
}


def wall(
    profile: dict[str, Any], *, secrets: list[str] | None = None, protocol: str = "custom"
) -> tuple[engine.ProfileWall, Provider]:
    provider = Provider(
        name="w", protocol=protocol, secrets=secrets or [SECRET], profile=profile or None
    )
    server = Server(public_url=PUBLIC_URL)
    compiled = engine.profile_of(provider, server, "providers[0]")
    return engine.ProfileWall.of(compiled, PUBLIC_URL), provider


def with_signature(**signature: Any) -> dict[str, Any]:
    return {**BASE, "signature": signature}


def get(query: dict[str, str], path: str = "/postbacks/w", **extra: Any) -> Inbound:
    qs = urlencode(query)
    return Inbound(
        method="GET",
        query=tuple(query.items()),
        content_type="",
        body=b"",
        client_ip=None,
        raw_path=f"{path}?{qs}" if qs else path,
        **extra,
    )


def post(
    body: bytes, content_type: str, query: dict[str, str] | None = None, **extra: Any
) -> Inbound:
    return Inbound(
        method="POST",
        query=tuple((query or {}).items()),
        content_type=content_type,
        body=body,
        client_ip=None,
        raw_path="/postbacks/w" + (f"?{urlencode(query)}" if query else ""),
        **extra,
    )


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def query(user: str = "u1", tx: str = "t1", amount: str = "10.50", **extra: str) -> dict[str, str]:
    q = {"snuid": user, "id": tx, "currency": amount, "offer_id": "o-7", **extra}
    q.setdefault("verifier", md5(f"{tx}:{user}:{amount}:{SECRET}"))
    return q


# --- template, hash -------------------------------------------------------------------------------


def test_template_md5_credit() -> None:
    w, provider = wall(BASE)
    p = w.normalise(provider, get(query()))
    assert (p.provider, p.key, p.type, p.user_id, p.amount, p.provider_ref) == (
        "w",
        "credit:t1",
        EventType.CREDITED,
        "u1",
        Decimal("10.50"),
        "t1",
    )
    assert p.data == {"offer_id": "o-7"}
    assert p.signed == Signed.of(md5(f"t1:u1:10.50:{SECRET}"), "t1", "u1", "10.50")
    assert not p.test


def test_hex_signature_in_either_case() -> None:
    w, provider = wall(BASE)
    q = query()
    q["verifier"] = q["verifier"].upper()
    assert w.normalise(provider, get(q)).key == "credit:t1"


@pytest.mark.parametrize("field", ["snuid", "id", "currency"])
def test_any_signed_value_changed_is_refused(field: str) -> None:
    w, provider = wall(BASE)
    q = query()
    q[field] = q[field] + "0"
    with pytest.raises(Unauthenticated) as info:
        w.normalise(provider, get(q))
    assert (info.value.reason, info.value.status) == ("signature", 403)


def test_missing_signature_is_refused() -> None:
    w, provider = wall(BASE)
    q = query()
    del q["verifier"]
    with pytest.raises(Unauthenticated, match="missing signature"):
        w.normalise(provider, get(q))


@pytest.mark.parametrize("field", ["snuid", "id", "currency"])
def test_missing_mapped_field_is_invalid(field: str) -> None:
    w, provider = wall(BASE)
    q = query()
    del q[field]
    with pytest.raises(Invalid, match=f"missing parameter: {field}"):
        w.normalise(provider, get(q))


@pytest.mark.parametrize("amount", ["abc", "1e3", "NaN", "-5", " 1", "1.123456789012345678901"])
def test_bad_amount_is_invalid(amount: str) -> None:
    w, provider = wall(BASE)
    with pytest.raises(Invalid, match="currency"):
        w.normalise(provider, get(query(amount=amount)))


@pytest.mark.parametrize(
    ("algorithm", "function"),
    [("md5", hashlib.md5), ("sha1", hashlib.sha1), ("sha256", hashlib.sha256),
     ("sha512", hashlib.sha512)],
)  # fmt: skip
@pytest.mark.parametrize("encoding", ["hex", "base64", "base64url"])
def test_template_hash_vectors(algorithm: str, function: Any, encoding: str) -> None:
    w, provider = wall(
        with_signature(
            algorithm=algorithm,
            encoding=encoding,
            template="{{{snuid}}}|{id}|{currency}{secret}",
            param="verifier",
        )
    )
    digest = function(f"{{u1}}|t1|10.50{SECRET}".encode()).digest()
    signature = {
        "hex": digest.hex(),
        "base64": base64.b64encode(digest).decode(),
        "base64url": base64.urlsafe_b64encode(digest).decode().rstrip("="),
    }[encoding]
    assert w.normalise(provider, get(query(verifier=signature))).key == "credit:t1"
    if encoding != "hex":  # base64 is case-sensitive
        with pytest.raises(Unauthenticated):
            w.normalise(provider, get(query(verifier=signature.swapcase())))


def test_wrong_encoding_is_refused() -> None:
    w, provider = wall(with_signature(template="{id}{secret}", param="verifier", encoding="base64"))
    hex_signature = md5(f"t1{SECRET}")
    with pytest.raises(Unauthenticated):
        w.normalise(provider, get(query(verifier=hex_signature)))


# --- hmac, header, url, sorted query, body --------------------------------------------------------


def test_hmac_template_in_a_header() -> None:
    w, provider = wall(
        with_signature(
            kind="hmac", algorithm="sha256", template="{snuid}.{id}.{currency}", header="X-Sig"
        )
    )
    mac = hmac.new(SECRET.encode(), b"u1.t1.10.50", hashlib.sha256).hexdigest()
    q = query()
    del q["verifier"]
    p = w.normalise(provider, get(q, headers=(("x-sig", mac),)))
    assert p.signed == Signed.of(mac, "u1", "t1", "10.50")
    with pytest.raises(Unauthenticated):
        w.normalise(provider, get(q, headers=(("X-Other", mac),)))


def test_hash_over_the_url() -> None:
    w, provider = wall(with_signature(kind="hash", algorithm="sha1", over="url", param="hash"))
    path_qs = "/postbacks/w?snuid=u%201&id=t1&currency=10.50"
    signature = hashlib.sha1(f"{PUBLIC_URL}{path_qs}{SECRET}".encode()).hexdigest()
    pairs = (("snuid", "u 1"), ("id", "t1"), ("currency", "10.50"), ("hash", signature))
    inbound = Inbound("GET", pairs, "", b"", None, raw_path=f"{path_qs}&hash={signature}")
    p = w.normalise(provider, inbound)
    assert p.user_id == "u 1"
    assert p.signed == Signed.of(signature, f"{PUBLIC_URL}{path_qs}")
    # The signature leading the query is removed with its "&".
    raw = f"/postbacks/w?hash={signature}&{path_qs.partition('?')[2]}"
    assert w.normalise(provider, Inbound("GET", pairs, "", b"", None, raw_path=raw)).user_id
    # The host is the configured public URL's, whatever the request said: a changed path fails.
    raw = f"/postbacks/x?{path_qs.partition('?')[2]}&hash={signature}"
    with pytest.raises(Unauthenticated):
        w.normalise(provider, Inbound("GET", pairs, "", b"", None, raw_path=raw))


def test_url_removes_a_leading_signature_parameter() -> None:
    assert engine.url_without("/p?sig=1&a=2&b=3", "sig") == "/p?a=2&b=3"
    assert engine.url_without("/p?a=2&sig=1&b=3", "sig") == "/p?a=2&b=3"
    assert engine.url_without("/p?a=2&b=3&SIG=1", "sig") == "/p?a=2&b=3"
    assert engine.url_without("/p?sig=1", "sig") == "/p"
    assert engine.url_without("/p", "sig") == "/p"


def test_hmac_over_the_sorted_query_php_style() -> None:
    w, provider = wall(
        with_signature(kind="hmac", algorithm="sha512", over="sorted_query", param="sig")
    )
    q = {"snuid": "a b~c", "id": "t1", "currency": "5", "offer_id": "é&x"}
    signed = "currency=5&id=t1&offer_id=%C3%A9%26x&snuid=a+b%7Ec"  # PHP http_build_query
    mac = hmac.new(SECRET.encode(), signed.encode(), hashlib.sha512).hexdigest()
    p = w.normalise(provider, get({**q, "sig": mac}))
    assert p.signed == Signed.of(mac, signed)
    assert WHOLE not in p.data


def test_hmac_over_the_body_of_a_json_post() -> None:
    w, provider = wall(
        {
            **with_signature(kind="hmac", algorithm="sha256", over="body", header="X-Hub"),
            "methods": ["POST"],
        }
    )
    body = json.dumps({"snuid": "u1", "id": "t1", "currency": 7.25}).encode()
    mac = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    w2, provider2 = wall(
        {
            **with_signature(
                kind="hmac", algorithm="sha256", over="body", header="X-Hub", encoding="base64"
            ),
            "methods": ["POST"],
        }
    )
    p = w2.normalise(provider2, post(body, "application/json", headers=(("X-Hub", mac),)))
    assert (p.user_id, p.amount) == ("u1", Decimal("7.25"))
    with pytest.raises(Unauthenticated):
        w.normalise(provider, post(body, "application/json", headers=(("X-Hub", mac),)))
    with pytest.raises(Invalid, match="method GET"):
        w.normalise(provider, get(query()))


def test_secret_kind_compares_the_secret_and_signs_nothing() -> None:
    w, provider = wall(with_signature(kind="secret", param="key"))
    q = query()
    del q["verifier"]
    p = w.normalise(provider, get({**q, "key": SECRET}))
    assert p.signed is None
    with pytest.raises(Unauthenticated, match="invalid secret"):
        w.normalise(provider, get({**q, "key": SECRET + "x"}))


def test_post_form_is_read_like_a_query() -> None:
    w, provider = wall({**BASE, "methods": ["POST"]})
    p = w.normalise(
        provider, post(urlencode(query()).encode(), "application/x-www-form-urlencoded")
    )
    assert p.key == "credit:t1"


# --- statuses, reversals --------------------------------------------------------------------------

STATUSES: dict[str, Any] = {
    **BASE,
    "status": "state",
    "credit": ["1"],
    "reversal": ["2"],
    "test": ["9"],
    "pending": ["0"],
}


def test_statuses() -> None:
    w, provider = wall(STATUSES)
    assert w.normalise(provider, get(query(state="1"))).type is EventType.CREDITED
    reversal = w.normalise(provider, get(query(state="2")))
    assert (reversal.type, reversal.key) == (EventType.REVERSED, "reversal:t1")
    # The template signs the amount: the reversal takes back what it names.
    assert WHOLE not in reversal.data
    test = w.normalise(provider, get(query(state="9")))
    assert (test.test, test.key) == (True, "test-credit:t1")
    with pytest.raises(Acknowledged) as info:
        w.normalise(provider, get(query(state="0")))
    assert (info.value.outcome, info.value.status, info.value.detail) == (
        Outcome.IGNORED,
        200,
        "pending: nothing credited yet",
    )
    with pytest.raises(Invalid, match="state must be one of 1, 2, 9, 0"):
        w.normalise(provider, get(query(state="7")))
    with pytest.raises(Invalid, match="missing parameter: state"):
        w.normalise(provider, get(query()))


def test_without_credit_values_every_other_status_credits() -> None:
    w, provider = wall({**STATUSES, "credit": []})
    assert w.normalise(provider, get(query(state="anything"))).type is EventType.CREDITED
    assert w.normalise(provider, get(query())).type is EventType.CREDITED
    assert w.normalise(provider, get(query(state="2"))).type is EventType.REVERSED
    assert w.normalise(provider, get(query(state="9"))).test


def test_a_reversal_of_an_unsigned_amount_takes_the_whole_credit() -> None:
    w, provider = wall({**STATUSES, "signature": {"template": "{id}{secret}", "param": "verifier"}})
    q = query(state="2", verifier=md5(f"t1{SECRET}"))
    assert w.normalise(provider, get(q)).data[WHOLE] is True
    assert WHOLE not in w.normalise(provider, get({**q, "state": "1"})).data


def test_negative_amount_reverses_only_when_allowed() -> None:
    w, provider = wall({**BASE, "negative_reverses": True})
    p = w.normalise(provider, get(query(amount="-3.5")))
    assert (p.type, p.amount, p.key) == (EventType.REVERSED, Decimal("3.5"), "reversal:t1")
    assert p.signed == Signed.of(md5(f"t1:u1:-3.5:{SECRET}"), "t1", "u1", "-3.5")
    w, provider = wall(BASE)
    with pytest.raises(Invalid, match="currency must not be negative"):
        w.normalise(provider, get(query(amount="-3.5")))


def test_reversal_prefix_is_stripped() -> None:
    w, provider = wall({**STATUSES, "reversal_prefix": "r-"})
    p = w.normalise(provider, get(query(tx="r-t1", state="2")))
    assert (p.key, p.provider_ref) == ("reversal:t1", "t1")
    assert w.normalise(provider, get(query(tx="r-t1", state="1"))).key == "credit:r-t1"


def test_reversal_endpoint() -> None:
    w, provider = wall({**BASE, "reversal_endpoint": True})
    assert w.reversal_endpoint
    assert w.normalise(provider, get(query())).type is EventType.CREDITED
    p = w.normalise(provider, get(query(), reversal=True))
    assert (p.type, p.key) == (EventType.REVERSED, "reversal:t1")


# --- rotation, answers ----------------------------------------------------------------------------


def used(position: str) -> float:
    labels = {"provider": "w", "secret": position}
    return REGISTRY.get_sample_value("ledger_postback_secret_used_total", labels) or 0.0


def test_every_secret_is_accepted_and_counted() -> None:
    w, provider = wall(BASE, secrets=["new-secret", SECRET])
    before = used("1"), used("2")
    w.normalise(provider, get(query()))  # signed with the old one
    new = query(verifier=md5("t1:u1:10.50:new-secret"))
    w.normalise(provider, get(new))
    w.normalise(provider, get(new))
    assert (used("1"), used("2")) == (before[0] + 2, before[1] + 1)


def test_answers_follow_the_profile() -> None:
    w, _ = wall(
        {
            **BASE,
            "answers": {
                "ok": {
                    "status": 200,
                    "body": '{"ok":"{transaction}"}',
                    "content_type": "application/json",
                },
                "refused": {"status": 401, "body": "0"},
            },
        }
    )  # fmt: skip
    answer = w.answering(get(query(tx='a"b')))
    assert answer(Outcome.CREDITED, "") == engine.Answer(200, '{"ok":"a\\"b"}', "application/json")
    assert answer(Outcome.REJECTED, "invalid signature").body == "0"
    assert answer(Outcome.REJECTED, "x").status == 401
    assert answer(Outcome.DUPLICATE, "") == engine.Answer(200, "OK")
    assert answer(Outcome.INVALID, "missing parameter: id") == engine.Answer(
        400, "missing parameter: id"
    )
    assert answer(Outcome.UNAVAILABLE, "").status == 503
    assert answer(Outcome.SHED, "").status == 503


def test_signature_is_never_logged() -> None:
    w, _ = wall(BASE)
    assert w.loggable(get(query())) == {
        "snuid": "u1",
        "id": "t1",
        "currency": "10.50",
        "offer_id": "o-7",
    }


# --- configuration --------------------------------------------------------------------------------


def config_error(profile: Any, **provider: Any) -> str:
    raw = {"name": "w", "protocol": "custom", "secret": SECRET, "profile": profile, **provider}
    with pytest.raises(ConfigError) as info:
        parse({"providers": [raw]}, {})
    message = str(info.value)
    assert "\n" not in message and SECRET not in message
    return message


@pytest.mark.parametrize(
    ("profile", "provider", "expected"),
    [
        ({**BASE, "bogus": 1}, {}, "providers[0].profile: Object contains unknown field `bogus`"),
        (
            {**BASE, "signature": {**BASE["signature"], "salt": "x"}},
            {},
            "providers[0].profile.signature: Object contains unknown field `salt`",
        ),
        (None, {}, "providers[0].profile: protocol custom needs"),
        ({"user": "u"}, {}, "providers[0].profile: Object missing required field `transaction`"),
        (
            with_signature(template="{id}{nope}{secret}", param="verifier"),
            {},
            "providers[0].profile.signature.template: {nope} is neither mapped",
        ),
        (BASE, {"secret": ""}, "providers[0].secret: the profile's signature (kind hash) needs"),
        (
            with_signature(over="url", param="verifier"),
            {},
            "server.public_url: needed by signature.over = url",
        ),
        (
            with_signature(template="{id}{secret}", algorithm="crc32", param="v"),
            {},
            "providers[0].profile.signature.algorithm: 'crc32' is not one of",
        ),
        (
            with_signature(template="{id}{secret}", encoding="b32", param="v"),
            {},
            "providers[0].profile.signature.encoding: 'b32' is not one of",
        ),
        (
            with_signature(template="{id}{secret}", over="path", param="v"),
            {},
            "providers[0].profile.signature.over: 'path' is not one of",
        ),
        (
            with_signature(template="{id}{secret}", kind="rsa", param="v"),
            {},
            "providers[0].profile.signature.kind: 'rsa' is not one of",
        ),
        (with_signature(template="{id}", param="v"), {}, "a hash needs {secret}"),
        (
            with_signature(kind="hmac", template="{id}{secret}", param="v"),
            {},
            "an hmac is keyed with the secret",
        ),
        (
            with_signature(template="{id}{secret}"),
            {},
            "providers[0].profile.signature.param: give exactly one of",
        ),
        (
            with_signature(template="{id}{secret}", param="v", header="X-V"),
            {},
            "providers[0].profile.signature.param: give exactly one of",
        ),
        (
            with_signature(template="{id{secret}", param="v"),
            {},
            "providers[0].profile.signature.template:",
        ),
        ({**BASE, "methods": ["PUT"]}, {}, "providers[0].profile.methods[0]: 'PUT'"),
        ({**BASE, "credit": ["1"]}, {}, "providers[0].profile.credit: needs `status`"),
        (
            {**BASE, "status": "s", "credit": ["1"], "reversal": ["1"]},
            {},
            "providers[0].profile.reversal: status '1' is also in credit",
        ),
        (
            {**BASE, "allowed_ips": ["nope"]},
            {},
            "providers[0].profile.allowed_ips[0]: 'nope' is not an IP",
        ),
    ],
)
def test_configuration_errors(profile: Any, provider: dict[str, Any], expected: str) -> None:
    assert expected in config_error(profile, **provider)


def test_protocols_include_custom_and_the_builtins() -> None:
    assert {"medioot", "inbrain", "adgate_receipts", "custom", "kiwiwall"} <= set(protocol_names())
    with pytest.raises(ConfigError, match="protocol: 'nope' is not one of"):
        parse({"providers": [{"name": "w", "protocol": "nope", "secret": SECRET}]}, {})


def test_a_seed_protocol_takes_no_profile() -> None:
    raw = {"name": "w", "protocol": "inbrain", "secret": SECRET, "profile": BASE}
    with pytest.raises(ConfigError, match=r"providers\[0\].profile: protocol inbrain"):
        parse({"providers": [raw]}, {})


@pytest.mark.parametrize("name", engine.builtin_names())
def test_every_builtin_profile_is_valid(name: str) -> None:
    raw = engine._builtin(name)
    compiled = engine.compile_profile(engine.decode(raw, name), name, PUBLIC_URL)
    assert compiled.profile.setup.secret_from or compiled.signature.kind == "none"


def test_overrides_merge_key_by_key() -> None:
    base = {"a": 1, "signature": {"kind": "hash", "param": "sig"}, "params": ["x"]}
    assert engine.merged(base, {"signature": {"param": "s"}, "params": ["y"]}) == {
        "a": 1,
        "signature": {"kind": "hash", "param": "s"},
        "params": ["y"],
    }
    w, _ = wall({"signature": {"param": "sig2"}}, protocol="kiwiwall")
    assert w.compiled.signature.template == "{sub_id}:{amount}:{secret}"
    assert w.compiled.signature_param == "sig2"


# --- kiwiwall -------------------------------------------------------------------------------------


def kiwi(user: str, tx: str, amount: str, status: str = "1") -> dict[str, str]:
    return {
        "status": status,
        "trans_id": tx,
        "sub_id": user,
        "amount": amount,
        "offer_id": "42",
        "signature": md5(f"{user}:{amount}:{SECRET}"),
    }


def test_kiwiwall_credit_and_chargeback() -> None:
    w, provider = wall({}, protocol="kiwiwall")
    credit = w.normalise(provider, get(kiwi("u1", "k1", "100")))
    assert (credit.key, credit.amount, credit.data) == (
        "credit:k1",
        Decimal(100),
        {"offer_id": "42"},
    )
    reversal = w.normalise(provider, get(kiwi("u1", "k1", "-100", status="2")))
    assert (reversal.type, reversal.amount, reversal.key) == (
        EventType.REVERSED,
        Decimal(100),
        "reversal:k1",
    )
    assert WHOLE not in reversal.data  # the amount is signed
    assert w.answer(Outcome.CREDITED, "") == engine.Answer(200, "1")
    assert w.answer(Outcome.REJECTED, "invalid signature") == engine.Answer(403, "0")
    assert w.compiled.profile.allowed_ips == ["34.193.235.172"]
    with pytest.raises(Unauthenticated):
        w.normalise(provider, get({**kiwi("u1", "k1", "100"), "amount": "1000"}))


# --- the builder and the engine agree (simulate) --------------------------------------------------

# `{secret}` in a template is the secret, so no generated parameter is named so.
NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(
    lambda name: name != "secret"
)
VALUE = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
AMOUNT = st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False).map(str)


@st.composite
def profiles(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(NAME, min_size=5, max_size=5, unique=True))
    user, tx, amount, extra, sig_param = names
    kind = draw(st.sampled_from(["hash", "hmac"]))
    over = draw(st.sampled_from(["template", "url", "sorted_query", "body"]))
    method = "POST" if over == "body" else draw(st.sampled_from(["GET", "POST"]))
    signature: dict[str, Any] = {
        "kind": kind,
        "algorithm": draw(st.sampled_from(list(engine.ALGORITHMS))),
        "over": over,
        "encoding": draw(st.sampled_from(engine.ENCODINGS)),
    }
    if draw(st.booleans()):
        signature["header"] = "X-" + sig_param
    else:
        signature["param"] = sig_param
    if over == "template":
        fields = draw(st.lists(st.sampled_from([user, tx, amount, extra]), min_size=1, max_size=5))
        separator = draw(st.sampled_from(["", ":", "|", "{{", "}}-"]))
        pieces = [f"{{{f}}}" for f in fields]
        if kind == "hash":
            pieces.insert(draw(st.integers(0, len(pieces))), "{secret}")
        signature["template"] = separator.join(pieces)
    return {
        "methods": [method],
        "user": user,
        "transaction": tx,
        "amount": amount,
        "params": [extra],
        "signature": signature,
        "simulate": {"values": {extra: "x"}, "body": draw(st.sampled_from(["form", "json"]))},
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profiles(), VALUE, VALUE, AMOUNT, VALUE, st.data())
def test_what_simulate_signs_the_engine_accepts_and_any_change_is_refused(
    profile: dict[str, Any], user: str, tx: str, amount: str, extra: str, data: st.DataObject
) -> None:
    w, provider = wall(profile)
    built = engine.build(
        w.compiled,
        name="w",
        secret=SECRET,
        user=user,
        amount=amount,
        transaction=tx,
        public_url=PUBLIC_URL,
        values={profile["params"][0]: extra},
    )
    postback = w.normalise(provider, built.inbound())
    assert (postback.user_id, postback.provider_ref, postback.amount) == (user, tx, Decimal(amount))

    # Change one signed value: the signature no longer matches.
    c = w.compiled
    if c.signature.over == "template":
        signed_names = sorted({n or "" for k, n in c.template if k == "param"})
    else:
        signed_names = [c.user, c.transaction, c.amount, c.params[0]]
    target = data.draw(st.sampled_from(signed_names))
    values = {c.user: user, c.transaction: tx, c.amount: amount, c.params[0]: extra}
    changed = values[target] + data.draw(st.sampled_from(["0", "a", " ", "é"]))
    forged = engine.build(
        w.compiled,
        name="w",
        secret=SECRET,
        user=changed if target == c.user else user,
        amount=changed if target == c.amount else amount,
        transaction=changed if target == c.transaction else tx,
        public_url=PUBLIC_URL,
        values={c.params[0]: changed if target == c.params[0] else extra},
    )
    # The forger keeps the genuine signature on the changed values.
    genuine = _signature_of(built, c)
    with pytest.raises(Unauthenticated):
        w.normalise(provider, _with_signature(forged, c, genuine).inbound())


def _signature_of(built: engine.Built, c: engine.Compiled) -> str:
    if c.signature_header:
        return built.headers[c.signature_header]
    inbound = built.inbound()
    from service.providers.base import named, raw_pairs

    return named(raw_pairs(inbound))[c.signature_param]


def _with_signature(built: engine.Built, c: engine.Compiled, signature: str) -> engine.Built:
    if c.signature_header:
        return engine.Built(
            built.method,
            built.path,
            {c.signature_header: signature},
            built.body,
            built.content_type,
        )
    old = _signature_of(built, c)
    path, body = built.path, built.body
    if f"={quote(old, safe='')}" in path:
        path = path.replace(f"={quote(old, safe='')}", f"={quote(signature, safe='')}")
    elif built.content_type == "application/json":
        decoded = json.loads(body)
        decoded[c.signature_param] = signature
        body = json.dumps(decoded).encode()
    else:
        from urllib.parse import parse_qsl

        pairs = [
            (n, signature if n == c.signature_param else v)
            for n, v in parse_qsl(body.decode(), keep_blank_values=True)
        ]
        body = urlencode(pairs).encode()
    return engine.Built(built.method, path, built.headers, body, built.content_type)


def test_an_empty_credit_value_lets_an_absent_status_credit() -> None:
    w, provider = wall({**STATUSES, "credit": ["1", ""]})
    assert w.normalise(provider, get(query())).type is EventType.CREDITED
    assert w.normalise(provider, get(query(state=""))).type is EventType.CREDITED
    assert w.normalise(provider, get(query(state="2"))).type is EventType.REVERSED
    with pytest.raises(Invalid, match=r"state must be one of 1, \(absent\), 2"):
        w.normalise(provider, get(query(state="7")))


def test_a_link_parameter_pairs_a_reversal_with_the_credit_it_names() -> None:
    profile = {**STATUSES, "link": "ref", "signature": {**BASE["signature"]}}
    profile["signature"]["template"] = "{id}:{snuid}:{currency}:{ref}:{secret}"
    w, provider = wall(profile)
    q = query(state="2", ref="t0")
    q["verifier"] = md5(f"t1:u1:10.50:t0:{SECRET}")
    reversal = w.normalise(provider, get(q))
    assert (reversal.type, reversal.data["link"]) == (EventType.REVERSED, "t0")


def test_an_unsigned_link_parameter_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigError, match=r"link: ref must be covered by the signature"):
        wall({**STATUSES, "link": "ref"})
