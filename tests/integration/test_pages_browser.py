"""The operator pages in a real browser (headless Chromium): what support sees and does.

Postbacks are sent to the service over HTTP as the walls send them, then the pages are read
as a person reads them: text, links, forms. With LEDGER_SCREENSHOTS=1 the tests also write
the README's screenshots into docs/screenshots/.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.domain.receipt_offers import APPROVED, AWARD_PENDING, MANUAL_REVIEW
from service.settings import Settings
from tests import helpers
from tests.browser import PHONE, Tab, new_page, screenshot
from tests.helpers import MEDIOOT_SECRET, NO_SCOPE_KEY, READ_KEY, SPEND_AUTH, medioot, unique
from tests.integration.test_postbacks_adgate import params as adgate_params

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

expect = pytest.importorskip(
    "playwright.async_api",
    reason="browser tests: the playwright package is missing (.ci/run installs it)",
).expect
pytestmark = pytest.mark.asyncio(loop_scope="module")

Client = TestClient[web.Request, web.Application]

EU_SECRET = "test-medioot-eu-secret"
ADGATE_TOKEN = "adgate-url-token_0123456789"
PUBLIC_URL = "https://walls.example.com"
STORY_USER = "user-48213"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return helpers.settings(
        database_url,
        server={"public_url": PUBLIC_URL},
        providers=[
            {"name": "medioot", "protocol": "medioot", "secret": MEDIOOT_SECRET},
            # The same protocol behind an address list: a postback from 127.0.0.1 is refused.
            {
                "name": "medioot-eu",
                "protocol": "medioot",
                "secret": EU_SECRET,
                "allowed_ips": ["203.0.113.7"],
            },
            {"name": "adgate", "protocol": "adgate_receipts", "url_token": ADGATE_TOKEN},
        ],
    )


@pytest_asyncio.fixture(loop_scope="module")
async def client(settings: Settings) -> AsyncIterator[Client]:
    """The app on a real 127.0.0.1 port, in the module's event loop (the browser's)."""
    app_client: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await app_client.start_server()
    try:
        yield app_client
    finally:
        await app_client.close()


# --- sending what the walls send ------------------------------------------------------------------


async def wall(client: Client, query: dict[str, str], provider: str = "medioot") -> int:
    resp = await client.get(f"/postbacks/{provider}", params=query)
    await resp.read()
    return resp.status


async def adgate(client: Client, query: dict[str, str]) -> int:
    resp = await client.post(f"/postbacks/adgate/{ADGATE_TOKEN}", params=query)
    await resp.read()
    return resp.status


async def api(client: Client, path: str, **query: str) -> Any:
    resp = await client.get(path, params=query, headers=helpers.AUTH)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def hold(client: Client, user: str, amount: str) -> None:
    headers = {**SPEND_AUTH, "Idempotency-Key": str(uuid.uuid4())}
    body = json.dumps({"amount": amount, "reference": "order-7716"}).encode()
    resp = await client.post(f"/v1/wallets/{user}/holds", data=body, headers=headers)
    assert resp.status in (200, 201), await resp.text()


# What happened to STORY_USER, oldest first: (wall, transaction, what the page says).
STORY = [
    ("medioot", "MDT-7781204", "Credited"),
    ("medioot", "MDT-7781377", "Credited"),
    ("medioot", "MDT-7781377", "Reversed (chargeback)"),
    ("medioot", "MDT-7781204", "Duplicate: already recorded, nothing more credited"),
    ("medioot", "MDT-7781455", "Bad signature"),
    ("medioot", "MDT-7781502", "Refused: malformed"),
    ("medioot-eu", "EU-5520981", "Address not allowed"),
]


async def support_story(client: Client) -> None:
    """STORY_USER's postbacks and a hold, once per module's database."""
    if (await api(client, "/v1/postbacks", user=STORY_USER, limit="1"))["postbacks"]:
        return
    user = STORY_USER
    assert await wall(client, medioot(user, "MDT-7781204", "10.50")) == 200
    assert await wall(client, medioot(user, "MDT-7781377", "4.25")) == 200
    assert await wall(client, medioot(user, "MDT-7781377", "4.25", status="2")) == 200
    assert await wall(client, medioot(user, "MDT-7781204", "10.50")) == 200
    assert await wall(client, medioot(user, "MDT-7781455", "6.00", secret="old-secret")) == 403
    assert await wall(client, medioot(user, "MDT-7781502", "6,00")) == 400
    eu = medioot(user, "EU-5520981", "3.00", secret=EU_SECRET)
    assert await wall(client, eu, "medioot-eu") == 403
    await hold(client, user, "2.00")


# --- reading the pages ----------------------------------------------------------------------------


def url(client: Client, path: str, **query: str) -> str:
    return str(client.make_url(path)) + (f"?{urlencode(query)}" if query else "")


def path_of(page: Page) -> str:
    parts = urlsplit(page.url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def sign_in(page: Page, client: Client, key: str = READ_KEY) -> None:
    await page.goto(url(client, "/ui/sign-in"))
    await page.fill("#key", key)
    await page.click("#sign-in")
    await expect(page.locator("#sign-out")).to_be_visible()


async def postback_rows(page: Page) -> list[list[str]]:
    """The postbacks table's rows as the cells' texts."""
    rows = page.locator("table.postbacks tbody tr")
    return [
        [cell.strip() for cell in await rows.nth(i).locator("td").all_inner_texts()]
        for i in range(await rows.count())
    ]


async def no_script_no_style(page: Page) -> None:
    """Our markup has no script and no inline style (the CSP would refuse both)."""
    assert await page.locator("script").count() == 0
    assert await page.locator("[style]").count() == 0
    assert await page.evaluate("typeof window.__xss") == "undefined"


# --- signing in -----------------------------------------------------------------------------------


async def test_a_page_asks_for_sign_in_then_comes_back(client: Client, tab: Tab) -> None:
    page = tab.page
    await page.goto(url(client, "/ui/postbacks", outcome="credited"))
    assert urlsplit(page.url).path == "/ui/sign-in"
    await expect(page.locator("h1")).to_have_text("Sign in")
    await expect(page.locator("#sign-out")).to_have_count(0)
    await screenshot(page, "sign-in", full_page=False)
    await page.fill("#key", READ_KEY)
    await page.click("#sign-in")
    assert path_of(page) == "/ui/postbacks?outcome=credited"
    await expect(page.locator("h1")).to_contain_text("Postback log")
    await expect(page.locator("select[name=outcome]")).to_have_value("credited")
    await expect(page.locator("#sign-out")).to_contain_text("reader")


@pytest.mark.parametrize(
    "key",
    [NO_SCOPE_KEY, "not-a-key-of-ours", f" {READ_KEY}x"],
    ids=["no-read-scope", "unknown", "read-key-plus-a-letter"],
)
async def test_a_key_without_read_or_unknown_cannot_sign_in(
    client: Client, tab: Tab, key: str
) -> None:
    page = tab.page
    await page.goto(url(client, "/ui/user", id=STORY_USER))
    await page.fill("#key", key)
    await page.click("#sign-in")
    assert urlsplit(page.url).path == "/ui/sign-in"
    await expect(page.locator(".message")).to_have_text(
        "This key is not accepted: it is unknown, or it lacks the read scope."
    )
    await expect(page.locator("#sign-out")).to_have_count(0)
    # Still not in, and the form still works with a good key, back to where it was going.
    await page.goto(url(client, "/ui/"))
    assert urlsplit(page.url).path == "/ui/sign-in"
    await page.fill("#key", READ_KEY)
    await page.click("#sign-in")
    assert urlsplit(page.url).path == "/ui/"


async def test_sign_out_ends_the_session_and_its_cookie(client: Client, tab: Tab) -> None:
    page = tab.page
    await sign_in(page, client)
    cookies = [c for c in await page.context.cookies() if c["name"] == "ledger_session"]
    assert len(cookies) == 1
    cookie = cookies[0]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui/"
    await page.click("#sign-out")
    assert urlsplit(page.url).path == "/ui/sign-in"
    await page.goto(url(client, "/ui/"))
    assert urlsplit(page.url).path == "/ui/sign-in"
    # A copy of the cookie taken before signing out does not get in either.
    context = await page.context.browser.new_context()  # type: ignore[union-attr]
    try:
        await context.add_cookies([cookie])  # type: ignore[list-item]
        other = await context.new_page()
        await other.goto(url(client, "/ui/user", id=STORY_USER))
        assert urlsplit(other.url).path == "/ui/sign-in"
        await expect(other.locator("#sign-out")).to_have_count(0)
    finally:
        await context.close()


# --- the support story ----------------------------------------------------------------------------


async def test_support_story_user_page_log_and_detail(client: Client, tab: Tab) -> None:
    await support_story(client)
    page = tab.page
    await sign_in(page, client)
    await page.fill("#nav-user", STORY_USER)
    await page.click("header button:has-text('Look up')")
    assert path_of(page) == f"/ui/user?id={STORY_USER}"
    await expect(page.locator("h1")).to_have_text(f"User {STORY_USER}")
    await expect(page.locator("#balance")).to_have_text("10.50")
    await expect(page.locator("#available")).to_have_text("8.50")
    await expect(page.locator("#held")).to_have_text("2.00")
    await expect(page.locator("table.holds tbody tr")).to_have_count(1)
    await expect(page.locator("table.holds")).to_contain_text("order-7716")

    history = page.locator("table.history tbody tr")
    texts = [
        [c.strip() for c in await history.nth(i).locator("td").all_inner_texts()][1:]
        for i in range(await history.count())
    ]
    assert texts[0][0:2] == ["Hold placed", "shop"] and texts[0][3] == "2.00"
    assert texts[1:] == [
        ["Reversed", "medioot", "MDT-7781377", "-4.25"],
        ["Credited", "medioot", "MDT-7781377", "+4.25"],
        ["Credited", "medioot", "MDT-7781204", "+10.50"],
    ]

    rows = await postback_rows(page)
    # Newest first: wall, transaction and outcome in words (no user column on a user's page).
    assert [(r[1], r[2], r[3]) for r in rows] == [
        (wall, tx, words) for wall, tx, words in reversed(STORY)
    ]
    await screenshot(page, "user")

    # The log, filtered by this user, says the same.
    await page.click("header a:has-text('Postback log')")
    await page.fill("input[name=user]", STORY_USER)
    await page.click("#filter")
    rows = await postback_rows(page)
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        (wall, STORY_USER, tx, words) for wall, tx, words in reversed(STORY)
    ]
    await screenshot(page, "postbacks")

    # A refusal's details: why, and the parameters as received, without the signature.
    bad = medioot(STORY_USER, "MDT-7781455", "6.00", secret="old-secret")
    refusal = page.locator("table.postbacks tbody tr", has_text="Bad signature")
    detail = (await refusal.locator("td.detail").inner_text()).removesuffix("details").strip()
    assert detail
    await refusal.get_by_role("link", name="details").click()
    assert urlsplit(page.url).path.startswith("/ui/postbacks/")
    await expect(page.locator("dl.record")).to_contain_text("Bad signature")
    await expect(page.locator("dl.record dd.detail")).to_have_text(detail)
    await expect(page.locator("dl.record")).to_contain_text("HTTP 403")
    await expect(page.locator("dl.record")).to_contain_text(STORY_USER)
    params = page.locator("table.params tbody tr")
    kept = {
        (await params.nth(i).locator("td").nth(0).inner_text()): (
            await params.nth(i).locator("td").nth(1).inner_text()
        )
        for i in range(await params.count())
    }
    assert kept == {"subid": STORY_USER, "transid": "MDT-7781455", "reward": "6.00", "status": "1"}
    assert bad["signature"] not in await page.content()
    await screenshot(page, "postback")

    # The malformed one says what was wrong with it.
    await page.go_back()
    malformed = page.locator("table.postbacks tbody tr", has_text="Refused: malformed")
    await expect(malformed.locator("td.detail")).to_contain_text("reward")
    await no_script_no_style(page)
    assert not tab.watch.csp_violations()


async def test_filter_the_log(client: Client, tab: Tab) -> None:
    user, other = unique("user"), unique("user")
    first, second = unique("tx"), unique("tx")
    assert await wall(client, medioot(user, first, "1.00")) == 200
    assert await wall(client, medioot(other, unique("tx"), "2.00")) == 200
    assert await wall(client, medioot(user, unique("tx"), "2.00", secret="wrong")) == 403
    eu = medioot(user, unique("tx"), "3.00", secret=EU_SECRET)
    assert await wall(client, eu, "medioot-eu") == 403
    await asyncio.sleep(1.1)  # the next one falls in a later second than all the above
    assert await wall(client, medioot(user, second, "4.00")) == 200
    later = (await api(client, "/v1/postbacks", transaction=second))["postbacks"][0]
    cut = dt.datetime.fromisoformat(later["received_at"]).astimezone(dt.UTC)
    cut = cut.replace(microsecond=0, tzinfo=None)

    page = tab.page
    await sign_in(page, client)
    await page.goto(url(client, "/ui/postbacks"))

    async def apply(**fields: str) -> list[list[str]]:
        await page.click("a:has-text('Clear')")
        for name, value in fields.items():
            if name in ("provider", "outcome"):
                await page.select_option(f"select[name={name}]", value)
            else:
                await page.fill(f"input[name={name}]", value)
        await page.click("#filter")
        await expect(page.locator("h1")).to_contain_text("Postback log")
        return await postback_rows(page)

    rows = await apply(user=user)
    assert [(r[1], r[3], r[4]) for r in rows][:1] == [("medioot", second, "Credited")]
    assert len(rows) == 4 and {r[2] for r in rows} == {user}
    assert await apply(user=user, provider="medioot-eu") == [rows[1]]
    assert [r[4] for r in await apply(user=user, outcome="rejected")] == [
        "Address not allowed",
        "Bad signature",
    ]
    assert await apply(transaction=first) == [rows[3]]
    # The form's times are UTC, without an offset.
    assert await apply(user=user, since=cut.isoformat()) == [rows[0]]
    assert await apply(user=user, until=cut.isoformat()) == rows[1:]
    window = await apply(
        user=user, since=(cut - dt.timedelta(hours=1)).isoformat(), until=cut.isoformat()
    )
    assert window == rows[1:]
    # The filters stay in the form.
    await expect(page.locator("input[name=user]")).to_have_value(user)
    await expect(page.locator("input[name=until]")).to_have_value(cut.isoformat())

    # A time that cannot be read: said on the page, with the form to correct it.
    await page.click("a:has-text('Clear')")
    await page.fill("input[name=since]", "yesterday")
    async with page.expect_navigation() as navigation:
        await page.click("#filter")
    response = await navigation.value
    assert response is not None and response.status == 400
    await expect(page.locator(".message")).to_have_text(
        "since must be a time like 2026-11-29T08:00:00Z"
    )
    await expect(page.locator("input[name=since]")).to_have_value("yesterday")
    await expect(page.locator("table.postbacks")).to_contain_text("No postbacks.")


async def test_receipt_offer_timeline(client: Client, tab: Tab) -> None:
    user, offer = "user-51907", "uo-88412"
    steps = [(MANUAL_REVIEW, None), (AWARD_PENDING, None), (APPROVED, "120")]
    for i, (status, points) in enumerate(steps):
        query = adgate_params(user, offer, f"ev-30{i}", status, points)
        if status == MANUAL_REVIEW:
            query["shm_reason_text"] = "Receipt is being checked"
        assert await adgate(client, query) == 200

    page = tab.page
    await sign_in(page, client)
    await page.goto(url(client, "/ui/"))
    await page.select_option("#offer-wall", "adgate")
    await page.fill("input[name=id][aria-label='upload offer id']", offer)
    await page.click("button:has-text('Show')")
    await expect(page.locator("h1")).to_have_text(f"Receipt offer {offer}")
    await expect(page.locator("dl.record dd.status")).to_have_text(APPROVED)
    await expect(page.locator("dl.record")).to_contain_text("120")
    statuses = await page.locator("ol.timeline li strong.status").all_inner_texts()
    assert statuses == [MANUAL_REVIEW, AWARD_PENDING, APPROVED]
    await expect(page.locator("ol.timeline li").first).to_contain_text("Receipt is being checked")
    await expect(page.locator("ol.timeline li").last).to_contain_text("120 points")
    await screenshot(page, "receipt-offer")
    # From the user's page, the history links to the same timeline.
    await page.click(f"dl.record a:has-text('{user}')")
    await expect(page.locator("table.history")).to_contain_text("Receipt status APPROVED")
    await page.locator("table.history a", has_text="ev-302").click()
    assert path_of(page).startswith("/ui/receipt-offer?")


async def test_walls_at_a_glance(client: Client, tab: Tab) -> None:
    page = tab.page
    await sign_in(page, client)

    async def totals() -> dict[str, int]:
        await page.goto(url(client, "/ui/"))
        return {
            name: int(await page.locator(f"#wall-{name} dd.total").inner_text())
            for name in ("medioot", "medioot-eu", "adgate")
        }

    before = await totals()
    assert await wall(client, medioot(unique("user"), unique("tx"), "1.00")) == 200
    assert await wall(client, medioot(unique("user"), unique("tx"), "1.00", secret="x")) == 403
    eu = medioot(unique("user"), unique("tx"), "1.00", secret=EU_SECRET)
    assert await wall(client, eu, "medioot-eu") == 403
    query = adgate_params(unique("user"), unique("uo"), unique("ev"), MANUAL_REVIEW)
    assert await adgate(client, query) == 200
    after = await totals()
    assert after == {
        "medioot": before["medioot"] + 2,
        "medioot-eu": before["medioot-eu"] + 1,
        "adgate": before["adgate"] + 1,
    }
    await expect(page.locator("article.wall h2 a")).to_have_text(
        ["medioot", "medioot-eu", "adgate"]
    )
    eu_wall = page.locator("#wall-medioot-eu")
    await expect(eu_wall.locator(".outcomes .refused")).to_contain_text("Address not allowed")
    await expect(eu_wall.locator("dd.allowed")).not_to_contain_text("any")
    await expect(page.locator("#wall-adgate dd.allowed")).to_have_text("any (allowed_ips not set)")
    await expect(page.locator("#wall-medioot .outcomes")).to_contain_text("Bad signature")
    await expect(page.locator("#wall-medioot dd.last")).to_contain_text("UTC")

    # The setup URL: the real address, AdGate's token in words, never the token itself.
    medioot_setup = page.locator("#wall-medioot pre.setup")
    await expect(medioot_setup).to_contain_text(f"{PUBLIC_URL}/postbacks/medioot")
    adgate_setup = page.locator("#wall-adgate pre.setup")
    await expect(adgate_setup).to_contain_text(
        f"{PUBLIC_URL}/postbacks/adgate/{{url_token}}?conversion_id={{conversion_id}}"
    )
    assert ADGATE_TOKEN not in await page.content()
    await page.locator("#wall-adgate summary").click()
    await expect(adgate_setup).to_be_visible()
    # A count links to those postbacks.
    await page.locator("#wall-medioot-eu h2 a").click()
    await expect(page.locator("select[name=provider]")).to_have_value("medioot-eu")
    await page.goto(url(client, "/ui/"))
    await page.locator("#wall-adgate summary").click()
    await screenshot(page, "walls")


# --- hostile values -------------------------------------------------------------------------------

XSS_USER = "</textarea><svg onload=window.__xss=1>"
XSS_TRANSACTIONS = [
    "<script>window.__xss=1</script>",
    '"><img src=x onerror=window.__xss=1>',
    "javascript:window.__xss=1",
    "'><a href=javascript:alert(1)>x</a>",
]


async def test_hostile_values_show_as_text_and_run_nothing(client: Client, tab: Tab) -> None:
    for tx in XSS_TRANSACTIONS:
        assert await wall(client, medioot(XSS_USER, tx, "1.00")) == 200
    assert await wall(client, medioot(XSS_USER, "tx-bad", "oops")) == 400
    assert await wall(client, medioot("javascript:alert(1)", XSS_TRANSACTIONS[0], "1.00")) == 200

    page = tab.page
    # Signed out, the hostile address rides through the sign-in form's `next`, and back.
    await page.goto(url(client, "/ui/user", id=XSS_USER))
    assert urlsplit(page.url).path == "/ui/sign-in"
    await no_script_no_style(page)
    await page.fill("#key", READ_KEY)
    await page.click("#sign-in")
    assert urlsplit(page.url).path == "/ui/user"
    await expect(page.locator("h1 .id")).to_have_text(XSS_USER)
    # And from the header's search box.
    await page.goto(url(client, "/ui/"))
    await page.fill("#nav-user", XSS_USER)
    await page.click("header button:has-text('Look up')")
    await expect(page.locator("h1 .id")).to_have_text(XSS_USER)
    await expect(page).to_have_title(f"User {XSS_USER} · postback ledger")
    rows = await postback_rows(page)
    assert {r[2] for r in rows} == {*XSS_TRANSACTIONS, "tx-bad"}
    await no_script_no_style(page)

    await page.goto(url(client, "/ui/postbacks", user=XSS_USER))
    await expect(page.locator("input[name=user]")).to_have_value(XSS_USER)
    assert {r[3] for r in await postback_rows(page)} == {*XSS_TRANSACTIONS, "tx-bad"}
    await no_script_no_style(page)

    await page.goto(url(client, "/ui/postbacks", transaction=XSS_TRANSACTIONS[0]))
    users = {r[2] for r in await postback_rows(page)}
    assert users == {XSS_USER, "javascript:alert(1)"}
    # A link made of a user's id goes to our page, never to a javascript: address.
    await page.get_by_role("link", name="javascript:alert(1)").click()
    assert urlsplit(page.url).path == "/ui/user"
    await expect(page.locator("h1 .id")).to_have_text("javascript:alert(1)")
    await no_script_no_style(page)

    for tx in XSS_TRANSACTIONS:
        await page.goto(url(client, "/ui/postbacks", transaction=tx, user=XSS_USER))
        await page.get_by_role("link", name="details").click()
        await expect(page.locator("dl.record")).to_contain_text(tx)
        values = await page.locator("table.params td.value").all_inner_texts()
        assert XSS_USER in values and tx in values
        await no_script_no_style(page)
    assert await page.locator("a[href^='javascript:' i]").count() == 0

    assert not tab.watch.csp_violations(), tab.watch.csp_violations()
    assert not tab.watch.dialogs


# --- a phone ----------------------------------------------------------------------------------


async def test_user_page_fits_a_phone(client: Client, browser: Browser) -> None:
    await support_story(client)
    context, page, watch = await new_page(browser, PHONE)
    try:
        await sign_in(page, client)
        await page.goto(url(client, "/ui/user", id=STORY_USER))
        await expect(page.locator("#balance")).to_have_text("10.50")
        for path in (f"/ui/user?id={STORY_USER}", "/ui/", "/ui/postbacks"):
            await page.goto(str(client.make_url(path)))
            width = await page.evaluate("document.documentElement.scrollWidth")
            inner = await page.evaluate("window.innerWidth")
            assert width <= inner, f"{path}: {width} px wide in a {inner} px window"
        await page.goto(url(client, "/ui/user", id=STORY_USER))
        # The tables scroll inside their own box instead.
        for box in await page.locator(".scroll").all():
            assert await box.evaluate("e => e.clientWidth") <= PHONE["width"]
        await screenshot(page, "user-phone")
        assert not watch.dialogs and not watch.csp_violations()
    finally:
        await context.close()
