"""The operator pages through HTTP, without a browser: sessions (sign-in, expiry, sign-out,
keys removed or losing `read`), CSRF and Origin checks, redirects that stay on the site,
escaping, headers, and bad input answered on the page. The browser drives them in
test_pages_browser.py."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from itsdangerous import URLSafeTimedSerializer

from service import metrics
from service.app import create_app
from service.db import sessions
from service.settings import Settings
from tests import helpers

Client = TestClient  # type: ignore[type-arg]
PAGES = (
    "/ui/",
    "/ui/user?id=someone",
    "/ui/postbacks",
    "/ui/postbacks?user=someone",
    "/ui/postbacks/1",
    "/ui/receipt-offer?provider=medioot&id=1",
)
_TOKEN = re.compile(r'name="token" value="([^"]+)"')


async def sign_in_page(client: Client) -> str:
    resp = await client.get("/ui/sign-in")
    assert resp.status == 200
    match = _TOKEN.search(await resp.text())
    assert match is not None
    return match.group(1)


async def sign_in(client: Client, key: str = helpers.READ_KEY, **form: str) -> ClientResponse:
    token = await sign_in_page(client)
    data = {"token": token, "key": key, "next": "/ui/", **form}
    return await client.post("/ui/sign-in", data=data, allow_redirects=False)


def session_cookie(client: Client) -> str:
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/ui/")).get("ledger_session")
    return "" if cookie is None else cookie.value


async def status_with(client: Client, cookie: str, path: str = "/ui/") -> int:
    """The status of `path` for a browser holding only `cookie` (no redirect followed)."""
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as browser,
        browser.get(
            client.make_url(path),
            headers={"Cookie": f"ledger_session={cookie}"},
            allow_redirects=False,
        ) as resp,
    ):
        return resp.status


@pytest.fixture
async def other(settings: Settings) -> Any:
    """A second instance on the same database, as behind a load balancer."""
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.parametrize("path", PAGES)
async def test_no_page_without_a_session(client: Client, path: str) -> None:
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"].startswith("/ui/sign-in?next=")
    assert "Content-Security-Policy" in resp.headers
    # Even an API key is not a session: the pages take no Authorization header.
    resp = await client.get(path, headers=helpers.AUTH, allow_redirects=False)
    assert resp.status == 303


async def test_sign_in_sets_a_strict_cookie_and_returns_to_the_page_asked_for(
    client: Client,
) -> None:
    resp = await client.get("/ui/postbacks?outcome=rejected")
    assert resp.url.path == "/ui/sign-in"  # redirected, remembering where to come back
    text = await resp.text()
    assert 'value="/ui/postbacks?outcome=rejected"' in text
    token = _TOKEN.search(text).group(1)  # type: ignore[union-attr]
    assert (
        "HttpOnly" in resp.headers["Set-Cookie"] and "SameSite=Strict" in resp.headers["Set-Cookie"]
    )
    resp = await client.post(
        "/ui/sign-in",
        data={"token": token, "key": helpers.READ_KEY, "next": "/ui/postbacks?outcome=rejected"},
        allow_redirects=False,
    )
    assert resp.status == 303 and resp.headers["Location"] == "/ui/postbacks?outcome=rejected"
    cookie = resp.cookies["ledger_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/ui/"
    assert not cookie["secure"]  # plain http here: a Secure cookie would never come back
    assert helpers.READ_KEY not in cookie.value
    assert int(cookie["max-age"]) == 8 * 3600
    resp = await client.get("/ui/postbacks?outcome=rejected", allow_redirects=False)
    assert resp.status == 200 and "Postback log" in await resp.text()


async def test_the_cookie_is_secure_behind_a_trusted_tls_proxy_only(
    aiohttp_client: Any, database_url: str
) -> None:
    trusted = await aiohttp_client(
        create_app(helpers.settings(database_url, server={"trusted_proxies": ["127.0.0.1/32"]}))
    )
    token = await sign_in_page(trusted)
    data = {"token": token, "key": helpers.READ_KEY}
    resp = await trusted.post(
        "/ui/sign-in", data=data, headers={"X-Forwarded-Proto": "https"}, allow_redirects=False
    )
    assert resp.status == 303 and resp.cookies["ledger_session"]["secure"]
    untrusted = await aiohttp_client(create_app(helpers.settings(database_url)))
    token = await sign_in_page(untrusted)
    data = {"token": token, "key": helpers.READ_KEY}
    resp = await untrusted.post(
        "/ui/sign-in", data=data, headers={"X-Forwarded-Proto": "https"}, allow_redirects=False
    )
    assert resp.status == 303 and not resp.cookies["ledger_session"]["secure"]


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (helpers.NO_SCOPE_KEY, "a key without read"),
        ("not-a-key-at-all", "an unknown key"),
        ("", "no key"),
        ("x" * 2000, "a key too long to be one"),
    ],
)
async def test_only_a_read_key_signs_in(client: Client, key: str, why: str) -> None:
    before = metrics.OPERATOR_SIGN_INS.labels(outcome="refused")._value.get()
    resp = await sign_in(client, key)
    assert resp.status == 401, why
    assert "not accepted" in await resp.text()
    assert "ledger_session" not in resp.cookies
    assert await status_with(client, "", "/ui/") == 303
    assert metrics.OPERATOR_SIGN_INS.labels(outcome="refused")._value.get() == before + 1


async def test_a_read_and_spend_key_signs_in_too(client: Client) -> None:
    resp = await sign_in(client, helpers.SPEND_KEY)
    assert resp.status == 303
    page = await client.get("/ui/")
    assert page.status == 200 and "(shop)" in await page.text()


async def test_sign_in_needs_the_form_token_of_its_own_cookie(client: Client) -> None:
    # No sign-in cookie (a form posted from elsewhere): refused, however good the key.
    resp = await client.post(
        "/ui/sign-in", data={"token": "x" * 32, "key": helpers.READ_KEY}, allow_redirects=False
    )
    assert resp.status == 403 and "ledger_session" not in resp.cookies
    # The cookie, but another token.
    await sign_in_page(client)
    resp = await client.post(
        "/ui/sign-in", data={"token": "y" * 32, "key": helpers.READ_KEY}, allow_redirects=False
    )
    assert resp.status == 403 and "ledger_session" not in resp.cookies
    # The right token from another site.
    token = await sign_in_page(client)
    resp = await client.post(
        "/ui/sign-in",
        data={"token": token, "key": helpers.READ_KEY},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    )
    assert resp.status == 403 and "ledger_session" not in resp.cookies
    # Not a form at all.
    resp = await client.post(
        "/ui/sign-in",
        data=b"\xff\xfe",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        allow_redirects=False,
    )
    assert resp.status == 403


@pytest.mark.parametrize(
    "target",
    ["//evil.example/ui/", "https://evil.example/", "/ui/\\evil.example", "/v1/events", ""],
)
async def test_after_sign_in_only_a_page_of_ours(client: Client, target: str) -> None:
    resp = await sign_in(client, next=target)
    assert resp.status == 303 and resp.headers["Location"] == "/ui/"


async def test_a_session_works_on_every_instance_and_signing_out_ends_it_on_all(
    client: Client, other: Client
) -> None:
    await sign_in(client)
    cookie = session_cookie(client)
    assert cookie
    assert await status_with(other, cookie) == 200  # no state of its own: another instance

    # Sign-out needs the session's own token.
    page = await (await client.get("/ui/")).text()
    token = _TOKEN.search(page).group(1)  # type: ignore[union-attr]
    resp = await client.post("/ui/sign-out", data={"token": "forged"}, allow_redirects=False)
    assert resp.status == 403 and await status_with(client, cookie) == 200
    resp = await client.post(
        "/ui/sign-out",
        data={"token": token},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    )
    assert resp.status == 403 and await status_with(client, cookie) == 200

    resp = await client.post("/ui/sign-out", data={"token": token}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/ui/sign-in"
    assert session_cookie(client) == ""
    # A copy of the cookie kept from before does not outlive the sign-out, anywhere.
    assert await status_with(client, cookie) == 303
    assert await status_with(other, cookie) == 303


async def test_a_session_expires(aiohttp_client: Any, database_url: str) -> None:
    client = await aiohttp_client(
        create_app(helpers.settings(database_url, ui={"session_hours": 1 / 3600}))
    )
    resp = await sign_in(client)
    assert int(resp.cookies["ledger_session"]["max-age"]) == 1
    cookie = resp.cookies["ledger_session"].value
    assert await status_with(client, cookie) == 200
    await asyncio.sleep(2.2)
    assert await status_with(client, cookie) == 303


async def test_a_session_ends_with_its_key_or_its_read_scope(
    aiohttp_client: Any, database_url: str, client: Client
) -> None:
    await sign_in(client)
    cookie = session_cookie(client)
    keys = [{"name": "shop", "key": helpers.SPEND_KEY, "scopes": ["read", "spend"]}]
    removed = await aiohttp_client(create_app(helpers.settings(database_url, api_keys=keys)))
    assert await status_with(removed, cookie) == 303
    no_read = [{"name": "reader", "key": helpers.READ_KEY, "scopes": []}]
    demoted = await aiohttp_client(create_app(helpers.settings(database_url, api_keys=no_read)))
    assert await status_with(demoted, cookie) == 303
    rotated = [{"name": "reader", "key": "a-new-read-key-0002", "scopes": ["read"]}]
    replaced = await aiohttp_client(create_app(helpers.settings(database_url, api_keys=rotated)))
    assert await status_with(replaced, cookie) == 303
    assert await status_with(client, cookie) == 200


async def test_forged_and_tampered_cookies_are_no_session(client: Client) -> None:
    await sign_in(client)
    cookie = session_cookie(client)
    flipped = cookie[:-3] + ("A" if cookie[-3] != "A" else "B") + cookie[-2:]
    payload = {"k": "reader", "s": "x" * 24, "c": "y" * 24}
    # Signed with a secret that is not the key's: the name alone opens nothing.
    forged = URLSafeTimedSerializer(b"guess", salt="operator-session").dumps(payload)
    for bad in (flipped, forged, "garbage", "a" * 5000, cookie + "x"):
        assert await status_with(client, bad) == 303, bad[:40]


async def test_hostile_values_are_shown_as_text(client: Client) -> None:
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    params = helpers.medioot(hostile, hostile + "-t", "1")
    assert (await client.get("/postbacks/medioot", params=params)).status == 200
    bad = {**helpers.medioot(hostile, "</td><svg onload=alert(3)>", "1"), "signature": "0" * 32}
    assert (await client.get("/postbacks/medioot", params=bad)).status == 403
    await sign_in(client)
    log = await (await client.get("/ui/postbacks", params={"user": hostile})).text()
    user = await (await client.get("/ui/user", params={"id": hostile})).text()
    postback_id = re.search(r'href="/ui/postbacks/(\d+)"', log).group(1)  # type: ignore[union-attr]
    detail = await (await client.get(f"/ui/postbacks/{postback_id}")).text()
    for page in (log, user, detail):
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "<svg onload" not in page and "<script" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Bad signature" in log and "&lt;/td&gt;&lt;svg onload=alert(3)&gt;" in log


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/ui/postbacks?since=yesterday", "since must be a time"),
        ("/ui/postbacks?until=2026-13-01T00:00", "until must be a time"),
        ("/ui/postbacks?since=2026-11-29T10:00&until=2026-11-29T09:00", "later than since"),
        ("/ui/postbacks?outcome=lost", "outcome must be one of"),
        ("/ui/postbacks?before=%25%25%25", "cursor"),
        ("/ui/postbacks?user=" + "u" * 300, "at most 255"),
        ("/ui/user?id=" + "u" * 300, "at most 255"),
        ("/ui/user?id=x&events_before=nope", "cursor"),
        ("/ui/user?id=x&postbacks_before=nope", "cursor"),
        ("/ui/receipt-offer?provider=adgate&id=x&after=-1", "cursor"),
    ],
)
async def test_filters_that_do_not_parse_answer_on_the_page(
    client: Client, path: str, message: str
) -> None:
    await sign_in(client)
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 400, path
    text = await resp.text()
    assert resp.content_type == "text/html" and message in text, text[-600:]


@pytest.mark.parametrize(
    "path",
    [
        "/ui/postbacks/abc",
        "/ui/postbacks/99999999999999999999999",
        "/ui/postbacks/0",
        "/ui/receipt-offer?provider=adgate&id=none",
        "/ui/receipt-offer",
        "/ui/no-such-page",
    ],
)
async def test_what_does_not_exist_is_a_404_page(client: Client, path: str) -> None:
    await sign_in(client)
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 404, path


async def test_every_ui_answer_forbids_scripts_and_framing(client: Client) -> None:
    await sign_in(client)
    for path in ("/ui/", "/ui/postbacks", "/ui/static/ui.css", "/ui/sign-in", "/ui/nothing"):
        resp = await client.get(path, allow_redirects=False)
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp, path
        assert "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    page = await client.get("/ui/")
    assert page.headers["Cache-Control"] == "no-store"
    text = await page.text()
    assert (
        "<script" not in text
        and " style=" not in text
        and "http://" not in text.replace(str(client.make_url("")), "")
    )


async def test_the_user_page_with_no_wallet_still_lists_refusals(client: Client) -> None:
    user = helpers.unique("ghost")
    bad = {**helpers.medioot(user, helpers.unique("t"), "5"), "signature": "f" * 32}
    assert (await client.get("/postbacks/medioot", params=bad)).status == 403
    await sign_in(client)
    text = await (await client.get("/ui/user", params={"id": user})).text()
    assert "No wallet" in text and "Bad signature" in text


async def test_signed_out_sessions_are_forgotten_once_expired(pool: Any) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    await sessions.end(pool, "gone-1", now - dt.timedelta(seconds=1))
    await sessions.end(pool, "live-1", now + dt.timedelta(hours=1))
    await sessions.end(pool, "live-1", now + dt.timedelta(hours=1))  # twice: once
    assert await sessions.forget_expired(pool) >= 1
    assert not await sessions.ended(pool, "gone-1")
    assert await sessions.ended(pool, "live-1")


async def test_the_user_page_shows_available_exactly_however_many_digits(client: Client) -> None:
    # 35 significant digits: more than Decimal's default context keeps.
    user = helpers.unique("exact")
    params = helpers.medioot(user, helpers.unique("t"), "123456789012345.12345678901234567891")
    assert (await client.get("/postbacks/medioot", params=params)).status == 200
    hold = await client.post(
        f"/v1/wallets/{user}/holds",
        json={"amount": "0.00000000000000000001"},
        headers={**helpers.SPEND_AUTH, "Idempotency-Key": helpers.unique("k")},
    )
    assert hold.status == 201
    await sign_in(client)
    text = await (await client.get("/ui/user", params={"id": user})).text()
    assert '<dd id="available">123456789012345.12345678901234567890</dd>' in text
    assert '<dd id="balance">123456789012345.12345678901234567891</dd>' in text
