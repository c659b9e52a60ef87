"""The operator pages under /ui/ (README, Operator pages): server-rendered HTML for support.

Each handler reads through `db/read.py` and renders a template of `templates/` (Jinja2, every
value escaped). Filters and cursors are parsed by the same functions as the API's, and a
mistake in them is shown on the page with a 400. Every /ui/ answer carries a
Content-Security-Policy that allows no script at all and nothing from another host.

The pages read through `keys.READ_POOL` (the replica of `database.read_url`, when set); the
session checks (web/session.py) stay on the primary, so that a sign-out holds at once.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from .. import keys, live
from ..db import Unavailable, read
from ..domain.amounts import EXACT, format_amount
from ..domain.events import Outcome
from ..providers.setup import setup_lines
from . import session as sessions
from . import words
from .api import decode_cursor, encode_log_cursor, postback_filter, text_param
from .auth import Handler
from .middlewares import ApiError
from .session import Session

PAGE = 50  # rows per page of a list
SUMMARY_HOURS = 24
_HERE = Path(__file__).parent
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not "no-referrer": under it a browser sends `Origin: null` with the pages' own forms,
    # which the same-origin check of sign-in and sign-out must then refuse. "same-origin"
    # sends this site's origin to itself and nothing (no URL, no user id) to another site.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def _time(value: dt.datetime | None) -> str:
    if value is None:
        return "never"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _amount(value: Decimal | str) -> str:
    return format_amount(value) if isinstance(value, Decimal) else value


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(
    time=_time,
    amount=_amount,
    outcome=words.outcome,
    event=words.event,
    sign=words.sign,
    refused=words.refused,
    query=lambda pairs: urlencode([(k, v) for k, v in pairs.items() if v]),
)


def _text(template: str, **context: Any) -> str:
    context.setdefault("session", None)
    return _env.get_template(template).render(**context)


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    return web.Response(status=status, text=_text(template, **context), content_type="text/html")


PageHandler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


def html_errors(handler: Handler) -> Handler:
    """A /ui/ handler whose database outage is a page saying so (503), not the API's JSON."""

    @functools.wraps(handler)
    async def serve(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Unavailable:
            message = "The database is not answering; try again in a moment."
            return render(request, "error.html", 503, message=message)

    return serve


def page(handler: PageHandler) -> Handler:
    """A page that needs a session: without one, the sign-in page (then back here)."""

    @html_errors
    @functools.wraps(handler)
    async def serve(request: web.Request) -> web.StreamResponse:
        current = await sessions.current(request)
        if current is None:
            raise web.HTTPSeeOther("/ui/sign-in?" + urlencode({"next": request.path_qs}))
        try:
            return await handler(request, current)
        except ApiError as exc:
            return render(request, "error.html", exc.status, session=current, message=exc.detail)

    return serve


# --- signing in and out ---------------------------------------------------------------------------


def _next(value: str) -> str:
    """Where to go after signing in: a page of ours, never another site."""
    ok = value.startswith("/ui/") and "\\" not in value and len(value) <= 2000
    return value if ok and not value.startswith("//") else "/ui/"


@html_errors
async def sign_in_form(request: web.Request) -> web.StreamResponse:
    if await sessions.current(request) is not None:
        raise web.HTTPSeeOther(_next(request.query.get("next", "")))
    return _sign_in_page(request, 200, "")


def _sign_in_page(request: web.Request, status: int, message: str, next: str = "") -> web.Response:
    response = web.Response(status=status, content_type="text/html")
    token = sessions.sign_in_token(request, response)
    next = _next(next or request.query.get("next", ""))
    response.text = _text("sign_in.html", message=message, token=token, next=next)
    return response


async def _form(request: web.Request) -> dict[str, str]:
    """A posted form's text fields; nothing when the body is not a form that can be read."""
    try:
        form = await request.post()
    except (ValueError, UnicodeDecodeError):
        return {}
    return {name: value for name, value in form.items() if isinstance(value, str)}


async def sign_in(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    token, presented, next = form.get("token", ""), form.get("key", ""), form.get("next", "")
    if not sessions.sign_in_allowed(request, token):
        message = "This form has expired or came from elsewhere: please sign in again."
        return _sign_in_page(request, 403, message, next)
    key = sessions.key_for_sign_in(request, presented)
    if key is None:
        message = "This key is not accepted: it is unknown, or it lacks the read scope."
        return _sign_in_page(request, 401, message, next)
    response = web.HTTPSeeOther(_next(next))
    sessions.open_session(request, response, key)
    raise response


@html_errors
async def sign_out(request: web.Request) -> web.StreamResponse:
    current = await sessions.current(request)
    form = await _form(request)
    if current is not None:
        if not sessions.sign_out_allowed(request, current, form.get("token", "")):
            message = "This form has expired or came from elsewhere: nothing was done."
            return render(request, "error.html", 403, session=current, message=message)
        response = web.HTTPSeeOther("/ui/sign-in")
        await sessions.close_session(request, response, current)
        raise response
    raise web.HTTPSeeOther("/ui/sign-in")


# --- the pages ------------------------------------------------------------------------------------


@page
async def home(request: web.Request, current: Session) -> web.StreamResponse:
    config = live.of(request)
    settings = config.settings
    providers = [p.name for p in settings.providers]
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=SUMMARY_HOURS)
    counts, last = await read.postback_summary(request.app[keys.READ_POOL], providers, since)
    base_url = settings.server.public_url or "https://YOUR-WALLS-ADDRESS"
    walls = []
    for provider in settings.providers:
        lines = summary_lines([r for r in counts if r["provider"] == provider.name])
        total = sum(n for _, _, n in lines)
        failures = sum(n for _, reason, n in lines if reason in SIGNATURE_FAILURES)
        allowed = config.walls.by_name[provider.name].allowed
        walls.append(
            {
                "name": provider.name,
                "protocol": provider.protocol,
                "total": total,
                "lines": lines,
                "failures": failures,
                "share": _percent(failures, total),
                "last": last.get(provider.name),
                "allowed": [str(network) for network in allowed],
                "setup": setup_lines(provider, settings.server, base_url, show_token=False),
                "token": bool(provider.token_list()),
            }
        )
    return render(
        request,
        "home.html",
        session=current,
        walls=walls,
        hours=SUMMARY_HOURS,
        public_url=settings.server.public_url,
        providers=providers,
    )


SIGNATURE_FAILURES = ("signature", "replay")  # a bad signature, or one reused elsewhere


def summary_lines(rows: list[Any]) -> list[tuple[str, str | None, int]]:
    """A wall's counts by (outcome, reason), in the order outcomes are listed, the reasons of a
    refusal each on a line of its own: what the walls page lists."""
    order = {o.value: i for i, o in enumerate(Outcome)}
    counts: dict[tuple[str, str | None], int] = {}
    for r in rows:
        key = (r["outcome"], r["reason"])
        counts[key] = counts.get(key, 0) + r["n"]
    ranked = sorted(counts, key=lambda k: (order.get(k[0], len(order)), k[0], k[1] or ""))
    return [(outcome, reason, counts[outcome, reason]) for outcome, reason in ranked]


def _percent(part: int, whole: int) -> str:
    if whole == 0:
        return "none"
    return f"{(Decimal(part) * 100 / Decimal(whole)).quantize(Decimal('0.1'))} %"


@page
async def user(request: web.Request, current: Session) -> web.StreamResponse:
    query = request.query
    user_id = text_param(query.get("id", "").strip(), "user")
    if not user_id:
        raise web.HTTPSeeOther("/ui/")
    pool = request.app[keys.READ_POOL]
    events_before = decode_cursor(query["events_before"]) if query.get("events_before") else None
    where = postback_filter({"user": user_id, "before": query.get("postbacks_before", "")})
    wallet = await read.wallet(pool, user_id)
    holds = await read.live_holds(pool, user_id) if wallet is not None else []
    history = await read.history(pool, user_id, events_before, PAGE + 1)
    postbacks = await read.postbacks(pool, where, PAGE + 1)
    older_events = str(history[PAGE - 1].position) if len(history) > PAGE else None
    return render(
        request,
        "user.html",
        session=current,
        user_id=user_id,
        wallet=wallet,
        available=None if wallet is None else EXACT.subtract(wallet["balance"], wallet["held"]),
        holds=holds,
        history=history[:PAGE],
        postbacks=postbacks[:PAGE],
        older_events=older_events,
        older_postbacks=_older(postbacks),
        paged=bool(query.get("events_before") or query.get("postbacks_before")),
    )


def _older(rows: list[Any]) -> str | None:
    """The cursor of the next page of the log, when there is one (rows: a page plus one)."""
    if len(rows) <= PAGE:
        return None
    last = rows[PAGE - 1]
    return encode_log_cursor(last["received_at"], last["id"])


_FILTERS = ("provider", "outcome", "user", "transaction", "since", "until")


@page
async def postbacks(request: web.Request, current: Session) -> web.StreamResponse:
    query = request.query
    filters = {name: query.get(name, "").strip() for name in _FILTERS}
    providers = [p.name for p in live.of(request).settings.providers]
    context: dict[str, Any] = {
        "session": current,
        "filters": filters,
        "providers": providers,
        "outcomes": [o.value for o in Outcome],
    }
    try:
        where = postback_filter({**filters, "before": query.get("before", "")}, naive_utc=True)
    except ApiError as exc:
        return render(
            request, "postbacks.html", 400, message=exc.detail, rows=[], older=None, **context
        )
    rows = await read.postbacks(request.app[keys.READ_POOL], where, PAGE + 1)
    return render(
        request,
        "postbacks.html",
        message="",
        rows=rows[:PAGE],
        older=_older(rows),
        **context,
    )


@page
async def postback(request: web.Request, current: Session) -> web.StreamResponse:
    text = request.match_info["postback_id"]
    row = None
    if text.isascii() and text.isdigit() and len(text) <= 18:
        row = await read.postback(request.app[keys.READ_POOL], int(text))
    if row is None:
        raise ApiError(404, "postback_not_found", f"There is no postback {text[:40]!r} in the log.")
    return render(request, "postback.html", session=current, row=row)


@page
async def receipt_offer(request: web.Request, current: Session) -> web.StreamResponse:
    query = request.query
    provider = text_param(query.get("provider", "").strip(), "provider")
    offer = text_param(query.get("id", "").strip(), "upload offer id")
    after = decode_cursor(query["after"]) if query.get("after") else 0
    row, events = await read.receipt_offer(
        request.app[keys.READ_POOL], provider, offer, after, PAGE + 1
    )
    if row is None:
        raise ApiError(
            404, "receipt_offer_not_found", f"No receipt offer {offer!r} of wall {provider!r}."
        )
    later = str(events[PAGE - 1].position) if len(events) > PAGE else None
    return render(
        request,
        "receipt_offer.html",
        session=current,
        offer=row,
        events=events[:PAGE],
        later=later,
        paged=after > 0,
    )


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/ui/"):
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.path.startswith("/ui/static/"):
            response.headers["Cache-Control"] = "no-store"


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/", home)
    app.router.add_get("/ui/sign-in", sign_in_form)
    app.router.add_post("/ui/sign-in", sign_in)
    app.router.add_post("/ui/sign-out", sign_out)
    app.router.add_get("/ui/user", user)
    app.router.add_get("/ui/postbacks", postbacks)
    app.router.add_get("/ui/postbacks/{postback_id}", postback)
    app.router.add_get("/ui/receipt-offer", receipt_offer)
    app.router.add_static("/ui/static/", _HERE / "static", append_version=False)
    app.on_response_prepare.append(_headers)
