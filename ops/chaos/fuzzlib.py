"""The postback fuzzer's parts: a grammar of hostile and of valid postbacks, a raw HTTP/1.1
client, and the oracle that says what the ledger may contain afterwards.

Used by `ops/chaos/fuzz.py` (the long run of `make chaos`) and by
`tests/integration/test_fuzz_postbacks.py` (the bounded run in the suite).

**Choices** come from a `Source`. The long run uses `RandomSource`, a seeded `random.Random`:
request item `i` of a run is generated from `Random(f"{seed}/{i}")` alone, so any request can be
regenerated from the seed and its index (`fuzz.py --seed S --show I`). The suite's test wraps
hypothesis's `data.draw` in a `Source`, so hypothesis drives (and shrinks) the same grammar.

**The walls under test** (`Target`): a Medioot provider that allows 127.0.0.1 and 203.0.113.0/24
(the signature is what stops fuzz from the local peer), an inBrain provider open to any source
(signature only), and an AdGate provider at `/postbacks/adgate/<url_token>` that allows only
203.0.113.0/24, with `server.trusted_proxies = ["127.0.0.2/32"]`. Fuzz connects from 127.0.0.1,
an untrusted peer whose X-Forwarded-For must be ignored, and from 127.0.0.2, the trusted proxy
(every address in 127.0.0.0/8 is local on Linux). So a valid AdGate postback exists (through the
proxy, with an allowed address as the right-most X-Forwarded-For hop) and a spoofed one cannot.

**Valid postbacks** are built deliberately (correct signature, token and source, well-formed
parameters, in the encodings the contract allows: query, form, JSON; name case variants; upper
case hex; unicode in ids) and each one says which event it must produce (`Expect`). Every
request carries `X-Request-Id: v-...` when valid and `f-...` (or a hostile id) when not.

**Fuzz** is invalid *by construction*: it never holds a correct signature, and an AdGate request
with the right token from an allowed address always carries a "poison" that the contract says
makes it malformed (a missing or repeated parameter, an unknown status, a bad amount...). The
near-misses (a valid postback with one signed value, the signature or the amount changed) use
the real secret so that only the change stands between them and a credit.

**What one captured postback can be made into** (`shift`, `replay`): a genuine postback, then
copies of it with characters moved across the boundaries of the signed fields (the signature of
a plain concatenation stays valid; the service saw it with other values: 403, nothing moves),
or with the fields the signature does not cover changed (Medioot `status` and `uuid`, inBrain
`Reward`, `RewardType` and `IsTest`), sent before or after the genuine postbacks still to come
(a real chargeback after a forged one). `Model` restates the money rules, so each of an item's
authentic postbacks has a predicted answer and event, with the wall transaction it pairs in: a
new event (OK), a repeat or conflict (DUP or OK, nothing recorded: among them a credit whose
signature a reversal used first), or a replayed signature (403). **Deep JSON** (`deep`):
inBrain bodies nested 100 to 100,000 levels, refused with 400 or 403 (413 past max_body_bytes),
never a 5xx.

**The oracle** (`Ledger.check`): the events table holds exactly the events of the valid
postbacks that were sent (no more: an event from fuzz would be a balance change without
authentication; no fewer: a valid postback answered 200 must be recorded), each with the right
user and amount, paired in the transaction `Model` said; no wall transaction has a second
credit or reversal; every wallet (balance, credited, reversed) equals what those events make
under the money rules (`Money`: a reversal takes back at most its credit, from the same user,
once; an inBrain reversal the whole credit); and the postback log shows an
accepted outcome (credited, duplicate, ...) only for requests whose id starts with `v-`.
"""

from __future__ import annotations

import asyncio
import decimal
import functools
import gzip
import hashlib
import json
import random
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Protocol, TypeVar
from urllib.parse import quote_from_bytes

T = TypeVar("T")

# --- sources of choices --------------------------------------------------------------------------


class Source(Protocol):
    def below(self, n: int) -> int:
        """A number from 0 to n - 1."""
        ...

    def chance(self, percent: int) -> bool:
        """True `percent` times in a hundred."""
        ...

    def raw(self, n: int) -> bytes:
        """`n` arbitrary bytes."""
        ...


class RandomSource:
    """A seeded `random.Random` as a Source (the long run)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def below(self, n: int) -> int:
        return int(self.rng.random() * n)

    def chance(self, percent: int) -> bool:
        return self.rng.random() * 100 < percent

    def raw(self, n: int) -> bytes:
        return self.rng.randbytes(n)


def pick(src: Source, options: Sequence[T]) -> T:
    return options[src.below(len(options))]


def between(src: Source, lo: int, hi: int) -> int:
    return lo + src.below(hi - lo + 1)


def weighted(src: Source, options: Sequence[tuple[int, T]]) -> T:
    total = sum(w for w, _ in options)
    k = src.below(total)
    for w, value in options:
        if k < w:
            return value
        k -= w
    return options[-1][1]


# --- the walls under test ------------------------------------------------------------------------

DIRECT = "127.0.0.1"  # an untrusted peer
PROXY = "127.0.0.2"  # the trusted proxy
ALLOWED_NET = "203.0.113.0/24"
ALLOWED_CLIENTS = ("203.0.113.7", "203.0.113.200", "203.0.113.1")
# Right-most X-Forwarded-For hops that are never an allowed client, however the service reads
# them (no IPv4-mapped form, brackets or spaces around an allowed address here).
NEVER_ALLOWED = (
    "6.6.6.6",
    "10.0.0.1",
    "127.0.0.1",
    "203.0.114.7",
    "203.0.112.255",
    "2001:db8::7",
    "::1",
    "0.0.0.0",
    "255.255.255.255",
    "garbage",
    "",
    "203.0.113",
    "203.0.113.7.1",
    "203.0.113.256",
    "unknown",
    "203.0.113.7:443",
    "203.0.113.7/24",
    "fe80::1%eth0",
)


@dataclass(frozen=True)
class Target:
    """The three walls the fuzzer attacks, with their credentials."""

    medioot_secret: str
    inbrain_secret: str
    adgate_token: str
    medioot: str = "medioot"
    inbrain: str = "inbrain"
    adgate: str = "adgate"

    def providers(self) -> list[dict[str, Any]]:
        return [
            {
                "name": self.medioot,
                "protocol": "medioot",
                "secret": self.medioot_secret,
                "allowed_ips": [f"{DIRECT}/32", ALLOWED_NET],
            },
            {"name": self.inbrain, "protocol": "inbrain", "secret": self.inbrain_secret},
            {
                "name": self.adgate,
                "protocol": "adgate_receipts",
                "url_token": self.adgate_token,
                "allowed_ips": [ALLOWED_NET],
            },
        ]

    def server(self) -> dict[str, Any]:
        return {"trusted_proxies": [f"{PROXY}/32"], "max_body_bytes": 65536}

    def toml(self, dsn: str, *, api_key: str, **sections: dict[str, Any]) -> str:
        """A service configuration: these walls on `dsn`, plus any other [section] keys."""
        server = {**self.server(), **sections.pop("server", {})}
        database = {"url": dsn, **sections.pop("database", {})}
        tables: dict[str, Any] = {"server": server, "database": database, **sections}
        lines: list[str] = []
        for name, values in tables.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
            lines.append("")
        for provider in self.providers():
            lines.append("[[providers]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in provider.items()]
            lines.append("")
        lines += ["[[api_keys]]", 'name = "chaos"', f"key = {_toml_value(api_key)}"]
        lines.append('scopes = ["read"]')
        return "\n".join(lines) + "\n"

    def secrets(self) -> dict[str, str]:
        """What must never reach a log line, by a name to show instead."""
        return {
            f"{self.medioot} secret": self.medioot_secret,
            f"{self.inbrain} secret": self.inbrain_secret,
            f"{self.adgate} url_token": self.adgate_token,
        }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


# --- requests ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """The one event a valid postback may produce (it produces it at most once)."""

    provider: str
    key: str
    user: str
    amount: Decimal
    delta: int  # +1 a credit, -1 a reversal, 0 moves no balance (a test, a receipt status)
    test: bool = False
    # The wall transaction a credit or reversal pairs in: its own signed transaction id when
    # built; `Model` may then join it to another transaction of its click (see there). "" for
    # events that pair with nothing (AdGate statuses).
    link: str = ""
    click: str = ""  # the Medioot `uuid` it names, "" for none
    whole: bool = False  # a reversal that takes back the whole credit, whatever its amount
    # An AdGate approval: its conversion (`conversion:<conversion_id>`, or its own key when it
    # names none) and what its `state` does there: "approved", "pending" or "rejected". "" for
    # every other event; an approval without a conversion credits its amount alone.
    conversion: str = ""
    state: str = ""

    @property
    def linked(self) -> bool:
        return bool(self.link) and not self.test and self.delta != 0

    @property
    def reversal(self) -> bool:
        """A reversal (test or not): what makes its signature unable to vouch for a credit."""
        return self.key.startswith(("reversal:", "test-reversal:"))


@dataclass
class Req:
    """One request exactly as it goes on the wire, and what the oracle needs to know of it."""

    family: str
    method: bytes
    target: bytes  # path and query, raw
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    via_proxy: bool = False  # connect from the trusted proxy's address
    valid: bool = False  # a deliberately valid postback: must be answered 200
    optional: bool = False  # may be valid: its events are allowed, not required
    expects: tuple[Expect, ...] = ()
    answer: str = ""  # for a valid one: the body it must get ("" any)
    request_id: str = ""
    framing: str = "length"  # "length": Content-Length; "chunked"; "none": the raw bytes only
    raw: bytes = b""  # framing "none": the whole request
    close: bool = False  # ask for Connection: close
    secrets: tuple[str, ...] = ()  # signatures it carries, for the log scan
    # The statuses a fuzz request may get, when the grammar knows them (a boundary shift: 403).
    statuses: tuple[int, ...] = ()
    # What its signature vouches for (lowercase signature, signed values), and the receipt
    # offer it is about: what `Model` needs to predict the outcome of an authentic postback.
    signed: tuple[str, ...] = ()
    offer: str = ""
    repeat: str = "OK"  # the answer to a repeat or a conflict (Medioot: DUP)
    # The event a valid postback would have made, when `Model` says the rules record none of it
    # (a repeat, a conflict): what a test needs to know which case it sent.
    unrecorded: tuple[Expect, ...] = ()

    @property
    def head_only(self) -> bool:
        return self.method == b"HEAD"

    def wire(self, host: bytes) -> bytes:
        if self.framing == "none":
            return self.raw
        lines = [self.method + b" " + self.target + b" HTTP/1.1"]
        names = {name.lower() for name, _ in self.headers}
        if b"host" not in names:
            lines.append(b"Host: " + host)
        if self.request_id and b"x-request-id" not in names:
            lines.append(b"X-Request-Id: " + self.request_id.encode())
        lines += [name + b": " + value for name, value in self.headers]
        body = self.body
        if self.framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
            body = chunked(body)
        elif self.body or self.method in (b"POST", b"PUT", b"PATCH"):
            lines.append(b"Content-Length: " + str(len(body)).encode())
        if self.close:
            lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def describe(self, limit: int = 300) -> str:
        text = repr(self.wire(b"127.0.0.1"))
        return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def chunked(body: bytes, size: int = 4096) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def pct(data: bytes, mode: str) -> bytes:
    """`data` for a URL: every byte escaped, the usual escaping, or as it is (no CR or LF)."""
    return _pct_big(data, mode) if len(data) > 200 else _pct(data, mode)


@functools.lru_cache(maxsize=64)  # the huge values are few and repeat: escape each once
def _pct_big(data: bytes, mode: str) -> bytes:
    return _pct(data, mode)


def _pct(data: bytes, mode: str) -> bytes:
    if mode in ("all", "lower"):
        escaped = ("%" + data.hex("%")) if data else ""
        return (escaped.upper() if mode == "all" else escaped).encode()
    if mode == "raw":
        return data.replace(b"\r", b"").replace(b"\n", b"")
    if mode == "plus":
        return quote_from_bytes(data, safe=" ").replace(" ", "+").encode()
    return quote_from_bytes(data, safe="").encode()


def query(pairs: Iterable[tuple[bytes, bytes]], mode: str = "quote", sep: bytes = b"&") -> bytes:
    return sep.join(pct(n, mode) + b"=" + pct(v, mode) for n, v in pairs)


def form(pairs: Iterable[tuple[str, str]]) -> bytes:
    return query(((n.encode(), v.encode()) for n, v in pairs), "quote")


# --- building blocks of values -------------------------------------------------------------------

# Characters of valid ids: the URL and JSON specials, spaces, unicode, a right-to-left override,
# a BOM, a tab and a newline. Never NUL (the contract refuses it) nor a lone surrogate.
ID_CHARS = "abcXYZ019 -_.~!*'();:@&=+$,/?#[]%\"<>\\^`{|}\t\néßü中文😀\u202e\ufeff"
VALID_AMOUNTS = (
    "10.50",
    "0",
    "0.00",
    "1",
    "0.01",
    "000123.45",
    "999999999999999",
    "999999999999999.99999999999999999999",
    "0.00000000000000000001",
    "2.5",
    "7",
)
# Amounts the contract refuses: not a plain non-negative decimal below 10^15 with at most 20
# decimals. Nothing debatable ("+5", "5.", ".5") is in here.
BAD_AMOUNTS = (
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "-4",
    "-0.01",
    "1e3",
    "1E-2",
    "1e999999",
    "abc",
    " 5",
    "5 ",
    "0x10",
    "1_000",
    "١٢",
    "1,5",
    "1.000000000000000000001",
    "1000000000000000",
    "99999999999999999999",
    "5\x00",
)
HOSTILE_TEXT = (
    *BAD_AMOUNTS,
    "10.50",
    "1",
    "2",
    "0",
    "APPROVED",
    "approved",
    "MANUAL_REVIEW",
    "REJECTED",
    "AWARD_PENDING",
    "offer_completion_reversed",
    "\x00",
    "a\x00b",
    "%00",
    "%",
    "%zz",
    "'; DROP TABLE events; --",
    "${MEDIOOT_SECRET}",
    "{{7*7}}",
    "%s%s%s%n",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "\r\n",
    "\u202e",
    "😀😀😀",
    "\ufeff",
    " ",
    "true",
    "null",
    "[]",
    "{}",
    "0" * 30,
    "9" * 40,
    "1." + "0" * 25,
    "\\",
    '"',
    "é",
)
INVALID_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80")
MEDIOOT_PARAMS = (
    "subid",
    "transid",
    "reward",
    "payout",
    "signature",
    "status",
    "userIp",
    "campaign_id",
    "offer_type",
    "country",
    "uuid",
    "offer_name",
)
INBRAIN_FIELDS = (
    "Sig",
    "PanelistId",
    "RewardId",
    "Reward",
    "RevenueAmount",
    "RewardType",
    "OfferTitle",
    "SessionId",
    "IsTest",
)
ADGATE_PARAMS = (
    "conversion_id",
    "s1",
    "points",
    "payout",
    "shm_upload_id",
    "shm_upload_offer_id",
    "shm_offer_id",
    "shm_offer_name",
    "shm_status",
    "shm_event_id",
    "shm_reason_text",
    "shm_datetime",
    "state",
    "session_ip",
    "country",
)
STATUSES = ("MANUAL_REVIEW", "AWARD_PENDING", "APPROVED", "REJECTED")
REWARD_TYPES = (
    "offer_completed",
    "survey_completed",
    "profiler_completed",
    "ad_hoc",
    "survey_disqualified",
    "offer_clicked",
    "",
)
REVERSAL = "offer_completion_reversed"
JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
CONTENT_TYPES = (
    b"application/json",
    b"application/x-www-form-urlencoded",
    b"text/plain",
    b"multipart/form-data; boundary=x",
    b"application/vnd.api+json",
    b"",
    b"application/json; charset=utf-16",
    b"application/x-www-form-urlencoded; charset=latin-1",
    b"APPLICATION/JSON",
    b"application/octet-stream",
    b";;;",
    b"application/json" + b" " * 2000,
    b"\xff\xfe",
)
METHODS = (
    (30, b"GET"),
    (40, b"POST"),
    (5, b"PUT"),
    (5, b"DELETE"),
    (5, b"HEAD"),
    (5, b"PATCH"),
    (2, b"OPTIONS"),
    (1, b"TRACE"),
    (1, b"CONNECT"),
    (1, b"get"),
    (1, b"PROPFIND"),
    (1, b"FOO"),
)


def text_id(src: Source, prefix: str, extra: int = 12) -> str:
    """A unique id: `prefix` and a tail of awkward but valid characters."""
    tail = "".join(pick(src, ID_CHARS) for _ in range(src.below(extra + 1)))
    return prefix + tail


def hostile(src: Source) -> bytes:
    """A value no wall would send: bad amounts, NUL, invalid UTF-8, huge, injections..."""
    if src.chance(2):  # huge: past the URL line limit in a query, past max_body in a body
        chunk = pick(src, (b"a", b"%00", b"\xff", b"9", "é".encode()))
        return chunk * pick(src, (300, 2000, 9000, 70000))
    kind = src.below(9)
    if kind == 0:
        return b""
    if kind in (1, 2, 6):
        return pick(src, HOSTILE_TEXT).encode("utf-8")
    if kind == 3:
        return src.raw(between(src, 1, 24))
    if kind == 4:
        return pick(src, INVALID_UTF8) + pick(src, HOSTILE_TEXT).encode()
    if kind == 5:
        return bytes(between(src, 0x21, 0x7E) for _ in range(src.below(20)))
    if kind == 7:
        return "".join(pick(src, "0123456789abcdefABCDEF") for _ in range(32)).encode()
    return text_id(src, "", 20).encode("utf-8")


def name_variant(src: Source, name: str) -> str:
    """The name, or a case variant of it (the contract matches Medioot names without case)."""
    variants = [name, name.upper(), name.lower(), name[:1].upper() + name[1:]]
    if name.endswith("id"):
        variants.append(name[:-2] + "Id")
    return pick(src, variants)


def flip_hex(src: Source, digest: str) -> str:
    """`digest` with one hex digit changed (case does not count as a change)."""
    i = src.below(len(digest))
    old = digest[i].lower()
    new = pick(src, [c for c in "0123456789abcdef" if c != old])
    return digest[:i] + new + digest[i + 1 :]


def changed(src: Source, value: str) -> str:
    """A string that differs from `value` (a signed value altered after signing)."""
    how = src.below(4)
    if how == 0:
        return value + pick(src, ["x", "0", " ", "é", "\t"])
    if how == 1 and value:
        return value[:-1]
    if how == 2 and value:
        c = value[-1]
        return value[:-1] + ("y" if c != "y" else "z")
    return "X" + value


# --- what an item's authentic postbacks must do --------------------------------------------------


class Model:
    """The money rules, written down again for the oracle (never imported from the service), to
    say what each authentic postback of one item must get, in the order they are sent. Items
    never share users, transactions, clicks or offers, so an item's own requests decide.

    - A signature vouches for the values it signs: one seen before with other values is a replay
      (403), whatever else the postback says. One first seen on a reversal cannot vouch for a
      credit: with the same signed values the two cancel out (a conflict, nothing recorded).
    - A key already recorded is a repeat: DUP for Medioot, OK for the others, nothing applied.
    - The wall transaction (link) of a credit or reversal is its signed transaction id. The
      click (Medioot `uuid`, unsigned) only joins it to a transaction of the same click that
      misses its other half: a reversal whose own transaction has no credit joins the one whose
      credit named its click; a credit whose own transaction holds nothing joins one that holds
      only a reversal, of its user, that named its click (the smallest transaction id first).
    - Per link, at most one credit and one reversal, and a reversal must name the credit's user
      once the credit is there: anything else is a conflict, answered like a repeat. A receipt
      offer belongs to the user of its first event: one naming another user is a conflict too.
    - An AdGate approval belongs to its conversion: one naming another user than the user of
      the conversion's first approved or first rejected event is a conflict.
    - Anything else is a new event: OK, in the link worked out above.
    """

    def __init__(self) -> None:
        # (provider, signature) -> (signed values, first seen on a reversal)
        self.signatures: dict[tuple[str, str], tuple[tuple[str, ...], bool]] = {}
        self.keys: set[tuple[str, str]] = set()
        self.credits: dict[tuple[str, str], Expect] = {}
        self.reversals: dict[tuple[str, str], Expect] = {}
        self.owners: dict[tuple[str, str], str] = {}
        # (provider, conversion) -> the users of its first approved and first rejected events
        self.conversions: dict[tuple[str, str], dict[str, str]] = {}

    def submit(self, req: Req) -> tuple[str, Expect]:
        """ "replay", "repeat" or "new" for an authentic postback (one Expect, `signed` set),
        with its event as it must be recorded (its link resolved)."""
        (e,) = req.expects
        if req.signed:
            signature, *values = req.signed
            first, by_reversal = self.signatures.setdefault(
                (e.provider, signature), (tuple(values), e.reversal)
            )
            if first != tuple(values):
                return "replay", e
            if by_reversal and not e.reversal:
                return "repeat", e  # the credit and the reversal that used it cancel out
        if (e.provider, e.key) in self.keys:
            return "repeat", e
        if e.linked:
            e = replace(e, link=self.link(e))
            link = (e.provider, e.link)
            credit, reversal = self.credits.get(link), self.reversals.get(link)
            if e.delta > 0 and credit is not None:
                return "repeat", e  # a second credit of the transaction
            if e.delta < 0 and (
                reversal is not None or (credit is not None and credit.user != e.user)
            ):
                return "repeat", e  # a second reversal, or one naming another user
        conversion = self.conversions.get((e.provider, e.conversion), {})
        if e.conversion and any(user != e.user for user in conversion.values()):
            return "repeat", e  # the conversion belongs to another user
        if req.offer and self.owners.setdefault((e.provider, req.offer), e.user) != e.user:
            return "repeat", e
        self.keys.add((e.provider, e.key))
        if e.conversion and e.state in ("approved", "rejected"):
            self.conversions.setdefault((e.provider, e.conversion), {}).setdefault(e.state, e.user)
        if e.linked:
            (self.credits if e.delta > 0 else self.reversals)[(e.provider, e.link)] = e
        return "new", e

    def link(self, e: Expect) -> str:
        """The transaction a new credit or reversal pairs in (`e.link`: its own)."""
        own = (e.provider, e.link)
        if not e.click:
            return e.link
        if e.delta < 0:
            if own in self.credits:
                return e.link
            joined = [
                t for (p, t), c in self.credits.items() if p == e.provider and c.click == e.click
            ]
        else:
            if own in self.credits or own in self.reversals:
                return e.link
            joined = [
                t
                for (p, t), r in self.reversals.items()
                if p == e.provider
                and (p, t) not in self.credits
                and r.click == e.click
                and r.user == e.user
            ]
        return min(joined) if joined else e.link

    def settle(self, reqs: Sequence[Req]) -> list[Req]:
        """Give each authentic postback of an item its predicted answer and event: a new event
        is answered OK and must be recorded; a repeat or conflict is answered like a repeat and
        records nothing; a replay is not valid at all (403, nothing recorded)."""
        for req in reqs:
            if not req.valid or len(req.expects) != 1:
                continue
            outcome, expect = self.submit(req)
            if outcome == "new":
                req.answer, req.expects = "OK", (expect,)
            elif outcome == "repeat":
                req.expects, req.unrecorded = (), (expect,)
                req.answer = req.repeat
            else:
                req.valid, req.expects, req.answer, req.statuses = False, (), "", (403,)
        return list(reqs)


# --- the grammar ---------------------------------------------------------------------------------


class Grammar:
    """Items of requests: one request, or a few sent in order on one connection (an AdGate
    receipt's lifecycle, a credit and its reversal, a conflict)."""

    FAMILIES = (
        (6, "valid"),
        (8, "path"),
        (16, "medioot"),
        (8, "medioot-near"),
        (16, "inbrain"),
        (8, "inbrain-near"),
        (20, "adgate"),
        (6, "raw"),
        (2, "resend"),
        (4, "shift"),
        (4, "replay"),
        (2, "deep"),
    )

    def __init__(self, target: Target, run: str) -> None:
        self.t = target
        self.run = run
        self.count = 0
        self.resendable: list[Req] = []  # valid requests already answered 200

    def _tag(self) -> str:
        self.count += 1
        return f"{self.run}.{self.count}"

    def item(self, src: Source, family: str | None = None) -> list[Req]:
        family = family or weighted(src, self.FAMILIES)
        make = {
            "valid": self.valid,
            "path": self.path,
            "medioot": self.medioot,
            "medioot-near": self.medioot_near,
            "inbrain": self.inbrain,
            "inbrain-near": self.inbrain_near,
            "adgate": self.adgate,
            "raw": self.raw,
            "resend": self.resend,
            "shift": self.shift,
            "replay": self.replay,
            "deep": self.deep,
        }[family]
        reqs = make(src)
        for req in reqs:
            if req.method == b"CONNECT":  # what follows its head is a tunnel, not a body
                req.body, req.close, req.framing = b"", True, "length"
            if not req.request_id and req.framing != "none":
                req.request_id = ("v-" if req.valid else "f-") + self._tag()
        return reqs

    # --- valid postbacks -------------------------------------------------------------------------

    def valid(self, src: Source) -> list[Req]:
        kind = weighted(
            src,
            (
                (30, "medioot"),
                (8, "medioot-reversal"),
                (4, "medioot-conflict"),
                (30, "inbrain"),
                (6, "inbrain-reversal"),
                (22, "adgate"),
            ),
        )
        tag = self._tag()
        if kind.startswith("medioot"):
            user = text_id(src, f"fzv-m{tag}-")
            transid = text_id(src, f"t{tag}-")
            reward = self._amount(src)
            first = self.medioot_valid(
                src,
                user,
                transid,
                reward,
                "1" if kind != "medioot-reversal" or src.chance(50) else "2",
            )
            if kind == "medioot-reversal":  # the credit and the reversal, in either order
                status = "2" if first.expects[0].delta > 0 else "1"
                second = self.medioot_valid(src, user, transid, reward, status)
                return Model().settle([first, second])
            if kind == "medioot-conflict":
                other = next(a for a in ("1.11", "2.22", "3.33") if Decimal(a) != Decimal(reward))
                conflict = self.medioot_valid(src, user, transid, other, "1")
                conflict.family = "valid-conflict"
                return Model().settle([first, conflict])
            return Model().settle([first])
        if kind.startswith("inbrain"):
            user = text_id(src, f"fzv-i{tag}-")
            reward_id = text_id(src, f"r{tag}-")
            reward = self._amount(src)
            first = self.inbrain_valid(src, user, reward_id, reward, reversal=False)
            if kind == "inbrain-reversal":
                second = self.inbrain_valid(src, user, reward_id, reward, reversal=True)
                return Model().settle([first, second])
            return Model().settle([first])
        return Model().settle(self.adgate_valid(src, tag))

    def _amount(self, src: Source) -> str:
        if src.chance(60):
            cents = src.below(100_000)
            return f"{cents // 100}.{cents % 100:02d}"
        return pick(src, VALID_AMOUNTS)

    def medioot_valid(
        self,
        src: Source,
        user: str,
        transid: str,
        reward: str,
        status: str,
        *,
        uuid: str | None = None,
        signature: str = "",
    ) -> Req:
        """A signed Medioot postback. `uuid`: None for a random choice, "" for none; a
        `signature` given is sent as it is (a boundary shift keeps the genuine one)."""
        secret = self.t.medioot_secret
        signature = signature or md5(user + transid + reward + secret)
        sig = signature.upper() if src.chance(20) else signature
        signed = [("subid", user), ("transid", transid), ("reward", reward), ("status", status)]
        pairs = [(name_variant(src, n), v) for n, v in signed] + [
            (name_variant(src, "signature"), sig)
        ]
        extras = [
            ("payout", self._amount(src)),
            ("country", pick(src, ["US", "DE", "BR", "é"])),
            ("uuid", text_id(src, f"click-{transid[:40]}-")),  # a click of this transaction
            ("offer_name", text_id(src, "Offer ", 30)),
            ("userIp", "198.51.100.4"),
            ("campaign_id", str(src.below(10**6))),
            ("offer_type", "cpa"),
        ]
        extras = [e for e in extras if src.chance(40)]
        if uuid is not None:
            extras = [e for e in extras if e[0] != "uuid"] + ([("uuid", uuid)] if uuid else [])
        click = next((v for n, v in extras if n == "uuid"), "")
        pairs += extras
        order = list(range(len(pairs)))
        for i in range(len(order) - 1, 0, -1):  # a shuffle driven by the source
            j = src.below(i + 1)
            order[i], order[j] = order[j], order[i]
        pairs = [pairs[i] for i in order]
        how = weighted(src, ((50, "get"), (20, "form"), (15, "json"), (15, "split")))
        path = f"/postbacks/{self.t.medioot}".encode()
        headers: list[tuple[bytes, bytes]] = []
        body = b""
        method = b"GET" if how == "get" else b"POST"
        if how == "get":
            target = path + b"?" + form(pairs)
        elif how == "form":
            target = path
            body = form(pairs)
            headers.append((b"Content-Type", pick(src, FORM_TYPES)))
        elif how == "json":
            target = path
            body = _json_object(src, pairs, numbers=("reward",))
            headers.append((b"Content-Type", pick(src, JSON_TYPES)))
        else:  # some in the query, the rest in a form body
            cut = src.below(len(pairs) + 1)
            target = path + (b"?" + form(pairs[:cut]) if cut else b"")
            body = form(pairs[cut:])
            headers.append((b"Content-Type", pick(src, FORM_TYPES)))
        via_proxy = src.chance(30)
        if via_proxy:
            headers += _allowed_forwarded(src)
        kind = "credited" if status == "1" else "reversed"
        expect = Expect(
            self.t.medioot,
            f"{'credit' if status == '1' else 'reversal'}:{transid}",
            user,
            Decimal(reward),
            1 if kind == "credited" else -1,
            link=transid,
            click=click,
        )
        return Req(
            "valid-medioot",
            method,
            target,
            headers,
            body,
            via_proxy=via_proxy,
            valid=True,
            expects=(expect,),
            answer="OK",
            secrets=(signature,),
            signed=(signature.lower(), user, transid, reward),
            repeat="DUP",
        )

    def inbrain_valid(
        self,
        src: Source,
        user: str,
        reward_id: str,
        reward_text: str,
        *,
        reversal: bool,
        test: bool | None = None,
        signature: str = "",
    ) -> Req:
        """A signed inBrain callback. `test`: None for a random IsTest; a `signature` given is
        sent as it is (a boundary shift keeps the genuine one)."""
        signature = signature or md5(user + reward_id + self.t.inbrain_secret)
        number = JSON_NUMBER.fullmatch(reward_text) is not None and src.chance(60)
        if number and src.chance(15) and Decimal(reward_text) == Decimal(reward_text).to_integral():
            reward_raw = f"{int(Decimal(reward_text)) * 10}E-1"  # exponent notation, same value
        else:
            reward_raw = reward_text if number else json.dumps(reward_text)
        reward_type = REVERSAL if reversal else pick(src, REWARD_TYPES)
        is_test = src.chance(10) if test is None else test
        fields: list[tuple[str, str]] = [
            ("Sig", json.dumps(signature.upper() if src.chance(20) else signature)),
            ("PanelistId", _json_str(src, user)),
            ("RewardId", _json_str(src, reward_id)),
            ("Reward", reward_raw),
        ]
        if reward_type or src.chance(50):
            fields.append(("RewardType", json.dumps(reward_type)))
        if src.chance(50):
            fields.append(("RevenueAmount", pick(src, ["null", "0.35", '"1.20"', "12"])))
        if src.chance(50):
            fields.append(("OfferTitle", _json_str(src, text_id(src, "Title ", 30))))
        if src.chance(30):
            fields.append(("SessionId", _json_str(src, text_id(src, "s-"))))
        if is_test or src.chance(30):
            fields.append(("IsTest", "true" if is_test else "false"))
        if src.chance(10):
            fields.append(("SomethingNew", '{"nested": [1, 2]}'))  # unknown fields are ignored
        body = (
            "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in _shuffled(src, fields)) + "}"
        ).encode()
        headers = [(b"Content-Type", pick(src, JSON_TYPES))]
        via_proxy = src.chance(20)
        if via_proxy:
            headers += _allowed_forwarded(src)
        value = Decimal(reward_text)
        # A test callback has keys of its own; a reversal takes back the whole credit.
        expect = Expect(
            self.t.inbrain,
            f"{'test-' if is_test else ''}{'reversal' if reversal else 'credit'}:{reward_id}",
            user,
            value,
            0 if is_test else (-1 if reversal else 1),
            test=is_test,
            link=reward_id,
            whole=reversal,
        )
        return Req(
            "valid-inbrain",
            b"POST",
            f"/postbacks/{self.t.inbrain}".encode(),
            headers,
            body,
            via_proxy=via_proxy,
            valid=True,
            expects=(expect,),
            answer="OK",
            secrets=(signature,),
            signed=(signature.lower(), user, reward_id),
        )

    def adgate_valid(self, src: Source, tag: str) -> list[Req]:
        """One receipt offer's lifecycle, in order: 1 to 4 statuses; APPROVED is final but may
        repeat, anything after it is recorded as ignored. An approval's `state` (approved when
        absent, pending, rejected, in any case) moves its conversion's money: the item's
        approvals share two conversion ids (or name none). A later status may name another user
        than the offer's: a conflict, nothing applied."""
        owner = text_id(src, f"fzv-a{tag}-")
        offer = text_id(src, f"o{tag}-")
        conversions = [text_id(src, f"c{tag}.{i}-") for i in range(2)]
        reqs = []
        for step in range(between(src, 1, 4)):
            user = f"{owner}~{step}" if step and src.chance(10) else owner
            status = pick(src, STATUSES)
            event = text_id(src, f"e{tag}.{step}-")
            points = self._amount(src) if status == "APPROVED" or src.chance(30) else None
            state = pick(src, ["", "", "approved", "pending", "rejected", "rejected"])
            if state and src.chance(20):
                state = state.upper() if src.chance(50) else state.capitalize()
            pairs = [
                ("conversion_id", pick(src, conversions)),
                ("s1", user),
                ("shm_upload_id", f"up-{tag}"),
                ("shm_upload_offer_id", offer),
                ("shm_offer_id", "397622"),
                ("shm_offer_name", pick(src, ["Shopper Marketing", "Apples é", "x&y=z"])),
                ("shm_status", status.lower() if src.chance(20) else status),
                ("shm_event_id", event),
                ("shm_datetime", "2024-05-01 12:00:00"),
                ("country", "US"),
            ]
            if points is not None:
                pairs.append(("points", points))
            if state:
                pairs.append(("state", state))
            pairs = [
                p
                for p in pairs
                if p[0]
                in ("s1", "shm_upload_offer_id", "shm_status", "shm_event_id", "points", "state")
                or src.chance(80)
            ]
            sent = dict(pairs)
            headers = _allowed_forwarded(src)
            body = b""
            method = pick(src, [b"GET", b"POST", b"POST"])
            if method == b"POST" and src.chance(70):
                receipt = {
                    "images": [f"https://cdn.example/{tag}/{i}.jpg" for i in range(src.below(4))],
                    "note": text_id(src, "n "),
                }
                body = json.dumps(receipt, ensure_ascii=src.chance(50)).encode()
                headers.append((b"Content-Type", b"application/json"))
            approval = status == "APPROVED"
            conversion = sent.get("conversion_id")
            expect = Expect(
                self.t.adgate,
                f"event:{event}",
                user,
                Decimal(points) if points is not None else Decimal(0),
                1 if approval else 0,
                conversion=(f"conversion:{conversion}" if conversion else f"event:{event}")
                if approval
                else "",
                state=(state or "approved").lower() if approval else "",
            )
            target = f"/postbacks/{self.t.adgate}/{self.t.adgate_token}?".encode() + form(
                _shuffled(src, pairs)
            )
            reqs.append(
                Req(
                    "valid-adgate",
                    method,
                    target,
                    headers,
                    body,
                    via_proxy=True,
                    valid=True,
                    expects=(expect,),
                    answer="OK",
                    offer=offer,
                )
            )
        return reqs

    def resend(self, src: Source) -> list[Req]:
        """An exact repeat of a valid postback already answered: a duplicate, applied once."""
        k = src.below(1000)  # drawn the same way whatever is kept (hypothesis replays draws)
        if not self.resendable:
            return []
        old = self.resendable[k * len(self.resendable) // 1000]
        return [replace(old, family="valid-resend", request_id="", answer=old.repeat)]

    # --- what one captured postback can be made into ---------------------------------------------

    def shift(self, src: Source) -> list[Req]:
        """A genuine postback, then copies of it with characters moved across the boundaries
        of the fields its signature covers (md5 of a plain concatenation: the signature stays
        valid). The signature was seen with the genuine values: each copy must get 403 and move
        nothing, for the genuine user or the one the copy names."""
        tag = self._tag()
        reqs: list[Req] = []
        if src.chance(50):
            user, transid = text_id(src, f"fzs-m{tag}-"), text_id(src, f"t{tag}-")
            reward = self._amount(src)
            genuine = self.medioot_valid(src, user, transid, reward, "1" if src.chance(80) else "2")
            reqs.append(genuine)
            for u, t, r in medioot_shifts(src, user, transid, reward):
                status = pick(src, ["1", "2"])
                reqs.append(self.medioot_valid(src, u, t, r, status, signature=genuine.secrets[0]))
                reqs[-1].family = "shift-medioot"
        else:
            user, reward_id = text_id(src, f"fzs-i{tag}-"), text_id(src, f"r{tag}-")
            genuine = self.inbrain_valid(src, user, reward_id, self._amount(src), reversal=False)
            reqs.append(genuine)
            for u, r in inbrain_shifts(src, user, reward_id):
                amount = self._amount(src) if src.chance(50) else "999999999999.99"
                reversal = src.chance(30)
                sig = genuine.secrets[0]
                reqs.append(self.inbrain_valid(src, u, r, amount, reversal=reversal, signature=sig))
                reqs[-1].family = "shift-inbrain"
        return Model().settle(reqs)

    def replay(self, src: Source) -> list[Req]:
        """Genuine postbacks of one wall transaction (a credit; its reversal before or after
        it, under the credit's transaction id or one of its own; another user's reversal), and
        copies of one of them, once it was sent, with what its signature does not cover
        changed: Medioot's status flipped and/or its uuid changed, inBrain's Reward raised, 0 or
        a cent, its RewardType flipped to a reversal, or IsTest set. The genuine postbacks not
        yet sent then follow, mixed with the copies (so a real chargeback may come after a
        forged one). Each must do what the money rules say (`Model`): a reversal takes back at
        most its credit, from the same user, once; the click joins only transactions that miss
        their other half; a signature first used by a reversal cannot vouch for a credit."""
        tag = self._tag()
        medioot = src.chance(50)
        user = text_id(src, f"fzp-{'m' if medioot else 'i'}{tag}-")
        ref = text_id(src, f"t{tag}-")
        reward = self._amount(src)
        if medioot:
            click = text_id(src, f"click{tag}-") if src.chance(70) else ""
            genuine = [(user, ref, reward, "1", click)]
            how = weighted(
                src,
                (
                    (1, "alone"),
                    (2, "after"),
                    (2, "first"),
                    (4, "own"),
                    (2, "own-first"),
                    (1, "other-first"),
                    (1, "other-after"),
                ),
            )
            if how in ("after", "first"):
                # The same reward signs the same values as the credit: a reversal sent first
                # then cancels the credit out; another reward is another signature.
                amount = reward if how == "after" or src.chance(50) else self._amount(src)
                genuine.insert(
                    len(genuine) if how == "after" else 0, (user, ref, amount, "2", click)
                )
            elif how.startswith("own") and click:  # a reversal under a transaction id of its own
                chargeback = (user, f"{ref}-rv", self._amount(src), "2", click)
                genuine.insert(len(genuine) if how == "own" else 0, chargeback)
            elif how.startswith("other"):  # another user's reversal of the same transaction
                other = (f"{user}~o", ref, reward, "2", click)
                genuine.insert(0 if how == "other-first" else 1, other)
            # The genuine ones sent before the copies: often only the first.
            sent = 1 if src.chance(60) else between(src, 1, len(genuine))
            u, t, r, st, c = genuine[src.below(sent)]
            copies = []
            for _ in range(between(src, 1, 3)):
                change = pick(src, ["status", "uuid", "both", "status"])
                status = {"1": "2", "2": "1"}[st] if change != "uuid" else st
                uuid = c
                if change != "status":
                    uuid = pick(
                        src, ["", text_id(src, f"click{tag}x-"), (c or f"click{tag}") + "x"]
                    )
                copies.append(self.medioot_valid(src, u, t, r, status, uuid=uuid))
                copies[-1].family = "replay-medioot"
            reqs = [self.medioot_valid(src, u, t, r, st, uuid=c) for u, t, r, st, c in genuine]
            return Model().settle(reqs[:sent] + _merged(src, reqs[sent:], copies))
        test = src.chance(10)
        callbacks = [self.inbrain_valid(src, user, ref, reward, reversal=False, test=test)]
        how = pick(src, ["alone", "after", "after", "first"])
        if how != "alone":
            reversal = self.inbrain_valid(src, user, ref, reward, reversal=True, test=test)
            callbacks.insert(len(callbacks) if how == "after" else 0, reversal)
        sent = 1 if src.chance(60) else between(src, 1, len(callbacks))
        copies = []
        for _ in range(between(src, 1, 3)):
            change = pick(src, ["both", "reward", "type", "zero", "cent", "test"])
            raised = reward
            if change in ("both", "reward"):
                more = [a for a in ("500000", "999999999999999", f"{Decimal(reward) + 1000}")]
                raised = pick(src, [a for a in more if AMOUNT.fullmatch(a)])
            elif change in ("zero", "cent"):  # a forged reversal that would take back nothing
                raised = "0" if change == "zero" else "0.01"
            flip = change not in ("reward",) or src.chance(30)
            is_test = True if change == "test" else (test if src.chance(80) else None)
            copies.append(self.inbrain_valid(src, user, ref, raised, reversal=flip, test=is_test))
            copies[-1].family = "replay-inbrain"
        return Model().settle(callbacks[:sent] + _merged(src, callbacks[sent:], copies))

    def deep(self, src: Source) -> list[Req]:
        """An inBrain callback (never correctly signed) holding JSON nested 100 to 100,000
        levels deep: arrays, objects or both, closed or not, as a field's value or the whole
        body. It must be refused (400, or 403 where the decoder gets as far as the signature);
        a body longer than max_body_bytes, 413."""
        if src.chance(50):
            depth = pick(src, [100, 1000, 10_000, 100_000])
        else:  # spread evenly over the orders of magnitude
            depth = int(100 * 10 ** (src.below(3001) / 1000))
        shape = pick(src, ["array", "object", "mixed"])
        value = nested(shape, depth, closed=src.chance(80))
        user, reward_id = text_id(src, "fzd-"), text_id(src, "r-")
        sig = flip_hex(src, md5(user + reward_id + self.t.inbrain_secret))
        where = pick(src, ["Reward", "RevenueAmount", "OfferTitle", "SomethingNew", "body"])
        if where == "body":
            body = value
        else:
            fields = {"Sig": json.dumps(sig), "PanelistId": json.dumps(user)}
            fields.update({"RewardId": json.dumps(reward_id), "Reward": "1.25"})
            fields[where] = value
            items = _shuffled(src, list(fields.items()))
            body = "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in items) + "}"
        data = body.encode()
        limit = int(self.t.server()["max_body_bytes"])
        req = Req(
            f"deep-{shape}",
            b"POST",
            f"/postbacks/{self.t.inbrain}".encode(),
            [(b"Content-Type", pick(src, JSON_TYPES))],
            data,
            via_proxy=src.chance(20),
            framing="chunked" if src.chance(20) else "length",
            statuses=(413,) if len(data) > limit else (400, 403),
        )
        return [req]

    # --- fuzz ------------------------------------------------------------------------------------

    def path(self, src: Source) -> list[Req]:
        names = [
            self.t.medioot,
            self.t.inbrain,
            self.t.adgate,
            "MEDIOOT",
            "nope",
            "",
            "..",
            "%2e%2e",
            "medioot%00",
            "a" * 300,
        ]
        tokens = [
            self.t.adgate_token,
            self.t.adgate_token[:-1],
            "x" * 16,
            "",
            "../..",
            "%00",
            self.t.adgate_token + "/extra",
        ]
        name = pick(src, names) if src.chance(80) else hostile(src).decode("latin-1")
        segments = [
            b"postbacks",
            pct(name.encode("latin-1", "replace"), pick(src, ["quote", "raw", "all"])),
        ]
        if src.chance(60):
            token = pick(src, tokens) if src.chance(70) else hostile(src).decode("latin-1")
            segments.append(
                pct(token.encode("latin-1", "replace"), pick(src, ["quote", "raw", "all"]))
            )
        if src.chance(10):
            segments.append(b"")
        target = b"/" + b"/".join(segments)
        if src.chance(10):
            target = target.replace(b"/", b"//", 1)
        if src.chance(60):
            target += b"?" + query(
                self._junk_pairs(src, MEDIOOT_PARAMS + ADGATE_PARAMS), pick(src, MODES)
            )
        req = Req("path", weighted(src, METHODS), target, via_proxy=src.chance(30))
        self._decorate(src, req)
        return [req]

    def _junk_pairs(
        self, src: Source, known: Sequence[str], n: int = 8
    ) -> list[tuple[bytes, bytes]]:
        pairs = []
        for _ in range(src.below(n + 1)):
            if src.chance(70):
                name = name_variant(src, pick(src, known)).encode()
            else:
                name = hostile(src)[:300]
            pairs.append((name, hostile(src)))
        if pairs and src.chance(15):
            pairs.append(pick(src, pairs))  # a duplicate
        return pairs

    def medioot(self, src: Source) -> list[Req]:
        """Medioot postbacks that are never correctly signed: junk, or signed with a wrong
        secret, or with a random hex string."""
        pairs = self._junk_pairs(src, MEDIOOT_PARAMS)
        if src.chance(60):
            user, transid, reward = (hostile(src)[:40].decode("utf-8", "replace") for _ in range(3))
            secret = pick(
                src,
                [
                    "",
                    "wrong",
                    self.t.medioot_secret[:-1],
                    self.t.medioot_secret.upper(),
                    self.t.inbrain_secret,
                ],
            )
            sig = (
                md5(user + transid + reward + secret)
                if src.chance(70)
                else hostile(src)[:64].decode("latin-1")
            )
            pairs += [
                (b"subid", user.encode()),
                (b"transid", transid.encode()),
                (b"reward", reward.encode()),
                (b"status", pick(src, [b"1", b"2", b"3", b""])),
                (b"signature", sig.encode("latin-1")),
            ]
        req = self._carry(src, f"/postbacks/{self.t.medioot}".encode(), pairs, "medioot")
        self._decorate(src, req)
        return [req]

    def medioot_near(self, src: Source) -> list[Req]:
        """A correctly signed postback with one thing wrong: a signed value or the signature
        changed, a parameter repeated or missing, a bad status, a bad (but signed) amount."""
        user, transid = text_id(src, f"fzn-m{self._tag()}-"), text_id(src, "t-")
        reward = self._amount(src)
        how = pick(
            src,
            ["signature", "subid", "transid", "reward", "repeat", "missing", "status", "amount"],
        )
        if how == "amount":
            reward = pick(src, BAD_AMOUNTS)
        signature = md5(user + transid + reward + self.t.medioot_secret)
        values = {
            "subid": user,
            "transid": transid,
            "reward": reward,
            "status": pick(src, ["1", "2"]),
            "signature": signature,
        }
        if how == "signature":
            values["signature"] = flip_hex(src, signature)
        elif how in ("subid", "transid", "reward"):
            values[how] = changed(src, values[how])
        elif how == "status":
            values["status"] = pick(src, ["0", "3", "", "01", "1.0", "one", " 1", "12"])
        pairs = [(name_variant(src, n).encode(), v.encode()) for n, v in values.items()]
        if how == "missing":
            del pairs[src.below(len(pairs))]
        if how == "repeat":
            name, value = pick(src, pairs)
            again = value if src.chance(50) else b"other"
            pairs.append((name_variant(src, name.decode()).encode(), again))
        pairs = _shuffled(src, pairs)
        path = f"/postbacks/{self.t.medioot}".encode()
        req = self._carry(src, path, pairs, "medioot-near", numbers=False, exact=True)
        req.secrets = (signature,)
        self._decorate(src, req)
        return [req]

    def _carry(
        self,
        src: Source,
        path: bytes,
        pairs: list[tuple[bytes, bytes]],
        family: str,
        numbers: bool = True,
        exact: bool = False,
    ) -> Req:
        """Parameters in the query, a form body, a JSON body, or split between them. `exact`:
        only encodings that keep every name and value as it is (a raw space ends the request
        line early, `&amp;` renames the next parameter: either can turn a near miss into the
        valid postback it was derived from)."""
        how = pick(src, ["query", "query", "form", "json", "split"])
        method = b"GET" if how == "query" and src.chance(70) else b"POST"
        if src.chance(10):
            method = weighted(src, METHODS)
        mode = pick(src, EXACT_MODES if exact else MODES)

        def sep() -> bytes:
            return b"&" if exact else _sep(src)

        headers: list[tuple[bytes, bytes]] = []
        if how == "query":
            return Req(
                family,
                method,
                path + b"?" + query(pairs, mode, sep()),
                headers,
                via_proxy=src.chance(20),
            )
        cut = src.below(len(pairs) + 1) if how == "split" else 0
        target = path + (b"?" + query(pairs[:cut], mode, sep()) if cut else b"")
        rest = pairs[cut:]
        if how == "json":
            text_pairs = [
                (n.decode("utf-8", "replace"), v.decode("utf-8", "replace")) for n, v in rest
            ]
            body = _json_object(src, text_pairs, numbers=("reward",) if numbers else ())
            headers.append((b"Content-Type", pick(src, JSON_TYPES)))
        else:
            body = query(rest, pick(src, EXACT_MODES if exact else ("quote", "plus", "raw", "all")))
            headers.append((b"Content-Type", pick(src, FORM_TYPES)))
        return Req(family, method, target, headers, body, via_proxy=src.chance(20))

    def inbrain(self, src: Source) -> list[Req]:
        """inBrain callbacks that are never correctly signed, with hostile bodies."""
        kind = src.below(4)
        if kind == 0:
            body = hostile_body(src)
        else:
            fields = []
            for _ in range(src.below(len(INBRAIN_FIELDS) + 3)):
                name = (
                    pick(src, INBRAIN_FIELDS)
                    if src.chance(85)
                    else hostile(src)[:50].decode("utf-8", "replace")
                )
                fields.append((name, hostile_json(src)))
            if kind == 1:
                user = text_id(src, "p")
                reward_id = text_id(src, "r")
                secret = pick(src, ["", "wrong", self.t.inbrain_secret[:-1], self.t.medioot_secret])
                fields += [
                    ("PanelistId", json.dumps(user)),
                    ("RewardId", json.dumps(reward_id)),
                    ("Sig", json.dumps(md5(user + reward_id + secret))),
                ]
            body = (
                "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in _shuffled(src, fields)) + "}"
            ).encode("utf-8", "surrogatepass")
        headers = [(b"Content-Type", pick(src, JSON_TYPES + CONTENT_TYPES))]
        method = b"POST" if src.chance(80) else weighted(src, METHODS)
        target = f"/postbacks/{self.t.inbrain}".encode()
        if src.chance(20):
            target += b"?" + query(self._junk_pairs(src, INBRAIN_FIELDS), pick(src, MODES))
        req = Req("inbrain", method, target, headers, body, via_proxy=src.chance(20))
        self._decorate(src, req)
        return [req]

    def inbrain_near(self, src: Source) -> list[Req]:
        """A correctly signed callback with one thing wrong."""
        user, reward_id = text_id(src, f"fzn-i{self._tag()}-"), text_id(src, "r-")
        signature = md5(user + reward_id + self.t.inbrain_secret)
        fields = {
            "Sig": json.dumps(signature),
            "PanelistId": json.dumps(user),
            "RewardId": json.dumps(reward_id),
            "Reward": "1.25",
            "RewardType": '"offer_completed"',
        }
        how = pick(
            src,
            [
                "sig",
                "panelist",
                "reward_id",
                "reward",
                "revenue",
                "is_test",
                "missing",
                "types",
                "long",
                "nul",
            ],
        )
        if how == "sig":
            fields["Sig"] = json.dumps(flip_hex(src, signature))
        elif how == "panelist":
            fields["PanelistId"] = json.dumps(changed(src, user))
        elif how == "reward_id":
            fields["RewardId"] = json.dumps(changed(src, reward_id))
        elif how == "reward":
            fields["Reward"] = pick(src, BAD_REWARDS)
        elif how == "revenue":  # null stands for no RevenueAmount
            fields["RevenueAmount"] = pick(src, [r for r in BAD_REWARDS if r != "null"])
        elif how == "is_test":
            fields["IsTest"] = pick(src, ['"yes"', "1", '"true"', "[]", "{}"])
        elif how == "missing":
            del fields[pick(src, ["Sig", "PanelistId", "RewardId", "Reward"])]
        elif how == "types":
            fields[pick(src, ["PanelistId", "RewardId", "Sig", "RewardType"])] = pick(
                src, ["123", "[]", "{}", "true", "1.5"]
            )
        elif how == "long":
            long_id = "r" * 300
            fields["RewardId"] = json.dumps(long_id)
            fields["Sig"] = json.dumps(md5(user + long_id + self.t.inbrain_secret))
        else:
            nul_user = user + "\x00"
            fields["PanelistId"] = json.dumps(nul_user)
            fields["Sig"] = json.dumps(md5(nul_user + reward_id + self.t.inbrain_secret))
        body = (
            "{"
            + ",".join(f"{json.dumps(k)}:{v}" for k, v in _shuffled(src, list(fields.items())))
            + "}"
        ).encode()
        req = Req(
            "inbrain-near",
            b"POST",
            f"/postbacks/{self.t.inbrain}".encode(),
            [(b"Content-Type", b"application/json")],
            body,
            via_proxy=src.chance(20),
            secrets=(signature,),
        )
        self._decorate(src, req, methods=False)
        return [req]

    def adgate(self, src: Source) -> list[Req]:
        """AdGate postbacks that must not pass: a spoofed X-Forwarded-For from an untrusted peer;
        a trusted proxy forwarding a client that is not allowed; an allowed client with a wrong
        token; or an allowed client with the right token and a malformed postback."""
        kind = pick(src, ["spoof", "spoof", "not-allowed", "wrong-token", "poisoned", "poisoned"])
        token = self.t.adgate_token
        pairs = self._adgate_pairs(src)
        headers: list[tuple[bytes, bytes]] = []
        via_proxy = False
        if kind == "spoof":  # from 127.0.0.1, which is not a trusted proxy: XFF is ignored
            token = token if src.chance(70) else self._wrong_token(src)
            if src.chance(85):
                headers += _forwarded_headers(src, allowed_tail=True)
        elif kind == "not-allowed":
            via_proxy = True
            token = token if src.chance(80) else self._wrong_token(src)
            headers += _forwarded_headers(src, allowed_tail=False)
        elif kind == "wrong-token":
            via_proxy = True
            token = self._wrong_token(src)
            headers += _allowed_forwarded(src)
        else:
            via_proxy = True
            headers += _allowed_forwarded(src)
            pairs = self._poison(src, pairs)
        target = (
            b"/postbacks/"
            + self.t.adgate.encode()
            + b"/"
            + pct(token.encode("utf-8"), "quote" if kind == "poisoned" or src.chance(80) else "raw")
        )
        mode = "quote" if kind in ("poisoned", "wrong-token") else pick(src, MODES)
        target += b"?" + query(pairs, mode, _sep(src))
        method = pick(src, [b"GET", b"POST", b"POST"])
        body = b""
        if method == b"POST" and src.chance(60):
            body = hostile_body(src)
            headers.append((b"Content-Type", pick(src, CONTENT_TYPES)))
        req = Req(f"adgate-{kind}", method, target, headers, body, via_proxy=via_proxy)
        self._decorate(
            src,
            req,
            forwarded=kind == "spoof",
            methods=kind != "poisoned",
            framing=kind != "poisoned",
        )
        return [req]

    def _adgate_pairs(self, src: Source) -> list[tuple[bytes, bytes]]:
        """A plausible postback's parameters, with some values made hostile."""
        values = {
            "conversion_id": b"c-1",
            "s1": text_id(src, "fzn-a").encode(),
            "points": pick(src, VALID_AMOUNTS).encode(),
            "shm_upload_id": b"u-1",
            "shm_upload_offer_id": text_id(src, "o").encode(),
            "shm_offer_id": b"397622",
            "shm_status": pick(src, STATUSES).encode(),
            "shm_event_id": text_id(src, "e").encode(),
            "shm_datetime": b"2024-05-01 12:00:00",
        }
        pairs = []
        for name, value in values.items():
            if src.chance(10):
                continue
            pairs.append((name.encode(), hostile(src) if src.chance(25) else value))
        return pairs + self._junk_pairs(src, ADGATE_PARAMS, 3)

    def _poison(self, src: Source, pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Make an otherwise authentic AdGate postback malformed, in a way the contract names."""
        required = (b"s1", b"shm_event_id", b"shm_upload_offer_id", b"shm_status")
        how = pick(
            src,
            ["missing", "repeat", "status", "no-points", "bad-points", "bad-state", "long", "nul"],
        )
        kept = [p for p in pairs if p[0].lower() not in (b"points", b"shm_status")]
        if how == "missing":
            gone = pick(src, required)
            return [p for p in pairs if p[0].lower() != gone]
        if how == "repeat":
            name = pick(src, required)
            return [*pairs, (name, b"again"), (name, b"again")]
        if how == "status":
            return [*kept, (b"shm_status", b"X" + hostile(src)[:30]), (b"points", b"1")]
        if how == "no-points":
            return [*kept, (b"shm_status", b"APPROVED")]
        if how == "bad-points":
            return [
                *kept,
                (b"shm_status", b"APPROVED"),
                (b"points", pick(src, BAD_AMOUNTS).encode()),
            ]
        if how == "bad-state":  # an approval's state is approved, pending or rejected
            return [
                *[p for p in kept if p[0].lower() != b"state"],
                (b"shm_status", b"APPROVED"),
                (b"points", b"1"),
                (b"state", pick(src, [b"paid", b"approve", b"reversed", b" pending", b"0"])),
            ]
        if how == "long":
            return [p for p in pairs if p[0].lower() != b"s1"] + [(b"s1", b"a" * 300)]
        return [p for p in pairs if p[0].lower() != b"shm_event_id"] + [(b"shm_event_id", b"e\x00")]

    def _wrong_token(self, src: Source) -> str:
        token = self.t.adgate_token
        return pick(
            src,
            [
                token[:-1],
                token + "x",
                token.swapcase(),
                ("Z" if token[:1] != "Z" else "Y") + token[1:],
                "x" * len(token),
                "",
                token + "/extra",
                token + "\x00",
                text_id(src, "t"),
            ],
        )

    def raw(self, src: Source) -> list[Req]:
        """Whole requests that are not well-formed HTTP, many of them carrying the URL token or
        a valid signature in the request line (an error message that quotes the line must not
        reach the log). Some are acceptable HTTP after all (HTTP/1.0, bare LF, an absolute
        URL...): their signed postback may then be recorded, so its event is allowed, not
        required."""
        tag = self._tag()
        token_path = f"/postbacks/{self.t.adgate}/{self.t.adgate_token}".encode()
        user, transid = f"fzr-{tag}", f"t-{tag}"
        signature = md5(user + transid + "1.00" + self.t.medioot_secret)
        signed = (
            f"/postbacks/{self.t.medioot}?subid={user}&transid={transid}&reward=1.00&status=1"
            f"&signature={signature}"
        ).encode()
        line = pick(src, [token_path + b"?s1=a", signed])
        rid = b"X-Request-Id: v-" + tag.encode()
        end = b"Host: x\r\n" + rid + b"\r\nConnection: close\r\n\r\n"
        kind = src.below(16)
        data: bytes
        if kind == 0:
            data = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + src.raw(40)
        elif kind == 1:
            data = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        elif kind == 2:
            data = bytes(between(src, 0x20, 0x7E) for _ in range(between(src, 1, 60)))
            data += b"\r\n\r\n"
        elif kind == 3:  # HTTP/1.0 without a Host
            data = b"GET " + line + b" HTTP/1.0\r\n" + rid + b"\r\n\r\n"
        elif kind == 4:  # bare LF line ends
            data = b"GET " + line + b" HTTP/1.1\nHost: x\n" + rid + b"\nConnection: close\n\n"
        elif kind == 5:  # an obsolete folded header line
            data = b"GET " + line + b" HTTP/1.1\r\nX-A: a\r\n folded\r\n" + end
        elif kind == 6:
            data = b"GET " + line + b" HTTP/9.9\r\n" + end
        elif kind == 7:  # a wall that forgot to encode a space: the parser refuses the line
            data = b"GET " + line + b"&shm_offer_name=Shopper Marketing HTTP/1.1\r\n" + end
        elif kind == 8:
            data = b"GET http://127.0.0.1" + line + b" HTTP/1.1\r\n" + end
        elif kind == 9:
            data = b"OPTIONS * HTTP/1.1\r\n" + end
        elif kind == 10:  # both lengths; either reading consumes exactly these bytes
            body = chunked(b"a=b")
            head = b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(body)
            data = b"POST " + line + b" HTTP/1.1\r\n" + head + end + body
        elif kind == 11:
            head = b"Transfer-Encoding: chunked\r\n"
            data = b"POST " + line + b" HTTP/1.1\r\n" + head + end + b"zz\r\nabc\r\n0\r\n\r\n"
        elif kind == 12:
            length = pick(src, [b"-1", b"abc", b"1 2", b"99999999999999999999999"])
            data = b"POST " + line + b" HTTP/1.1\r\nContent-Length: " + length + b"\r\n" + end
        elif kind == 13:
            bad = pick(src, [b"X A: b", b"NoColon", b"X-A: a\x00b", b"\x01: x"])
            data = b"GET " + line + b" HTTP/1.1\r\n" + bad + b"\r\n" + end
        elif kind == 14:  # longer than the request line limit, with the secret at the front
            data = b"GET " + line + b"&pad=" + b"a" * 9000 + b" HTTP/1.1\r\n" + end
        else:  # raw bytes that are not allowed in a URL
            data = b"GET " + line + b"&x=" + pick(src, INVALID_UTF8) + b" HTTP/1.1\r\n" + end
        req = Req("raw", b"RAW", b"", framing="none", raw=data, close=True, optional=True)
        if line == signed:
            req.secrets = (signature,)
            credit = Expect(
                self.t.medioot, f"credit:{transid}", user, Decimal("1.00"), 1, link=transid
            )
            req.expects = (credit,)
        return [req]

    def _decorate(
        self,
        src: Source,
        req: Req,
        *,
        forwarded: bool = True,
        methods: bool = True,
        framing: bool = True,
    ) -> None:
        """Random headers, content types, encodings and framing on a fuzz request."""
        if methods and src.chance(8):
            req.method = weighted(src, METHODS)
        if forwarded and src.chance(30):
            if req.via_proxy:
                req.headers += _forwarded_headers(src, allowed_tail=False)
            else:
                req.headers += _forwarded_headers(src, allowed_tail=src.chance(50))
        if src.chance(5):
            req.headers.append((b"X-Real-IP", pick(src, ALLOWED_CLIENTS).encode()))
            req.headers.append((b"Forwarded", b"for=" + pick(src, ALLOWED_CLIENTS).encode()))
        if src.chance(8):
            value = pick(
                src, [b"v-spoof", b"x" * 65, b"a b", "é".encode(), b"../../", b"f-" + b"1" * 62]
            )
            if value.startswith(b"v-"):
                value = b"f" + value
            req.headers.append((b"X-Request-Id", value))
            req.request_id = value.decode("latin-1")
        if src.chance(4):
            req.headers.append((b"X-Huge", b"h" * pick(src, [4000, 8000, 9000, 20000])))
        if src.chance(3):
            req.headers += [(b"X-Many-%d" % i, b"v") for i in range(pick(src, [50, 120, 200]))]
        if src.chance(8):
            req.headers.append(
                (b"User-Agent", bytes(between(src, 0x20, 0xFF) for _ in range(src.below(80))))
            )
        if src.chance(6):
            req.headers = [h for h in req.headers if h[0].lower() != b"content-type"]
            req.headers.append((b"Content-Type", pick(src, CONTENT_TYPES)))
        if src.chance(3):
            req.headers.append((b"Expect", b"100-continue"))
        if src.chance(3):
            req.headers.append(
                (
                    b"Authorization",
                    b"Bearer " + hostile(src)[:100].replace(b"\r", b"").replace(b"\n", b""),
                )
            )
        if src.chance(3):
            req.headers.append(
                (b"Host", pick(src, [b"", b"evil.example", b"127.0.0.1:1", b"\xff"]))
            )
        if framing and req.body and src.chance(8):
            encoding = pick(
                src, [b"gzip", b"gzip", b"deflate", b"br", b"identity", b"xz", b"gzip, gzip"]
            )
            corrupt = src.chance(40)
            if encoding == b"gzip" and not corrupt:
                req.body = gzip.compress(req.body)
            elif encoding == b"deflate" and not corrupt:
                req.body = zlib.compress(req.body)
            req.headers.append((b"Content-Encoding", encoding))
        if framing and src.chance(5):
            req.framing = "chunked"
        if framing and src.chance(2):  # a bomb: 20 MB of zeros in a few kilobytes
            req.body = _BOMB
            req.headers.append((b"Content-Encoding", b"gzip"))
        if src.chance(5):
            req.close = True
        # Never a header line with CR or LF in it: that would be a second request on the wire.
        req.headers = [
            (n.replace(b"\r", b"").replace(b"\n", b""), v.replace(b"\r", b"").replace(b"\n", b""))
            for n, v in req.headers
        ]


_BOMB = gzip.compress(b"\x00" * 20_000_000, compresslevel=9)
MODES = ("quote", "quote", "quote", "all", "lower", "plus", "raw")
EXACT_MODES = ("quote", "quote", "all", "lower", "plus")
FORM_TYPES = (
    b"application/x-www-form-urlencoded",
    b"application/x-www-form-urlencoded; charset=UTF-8",
    b"Application/X-WWW-Form-Urlencoded",
)
JSON_TYPES = (b"application/json", b"application/json; charset=utf-8", b"application/vnd.wall+json")
BAD_REWARDS = (
    "NaN",
    "Infinity",
    "-1",
    "-0.5",
    "1e999999",
    "1E-21",
    '"abc"',
    '"1e3"',
    '"-4"',
    '"NaN"',
    "[1]",
    "{}",
    "true",
    "null",
    "0.000000000000000000001",
    "1000000000000000",
    '"1000000000000000"',
    '""',
    '" 5"',
)


def _sep(src: Source) -> bytes:
    return pick(src, [b"&", b"&", b"&", b"&", b";", b"&&", b"&amp;"])


def _shuffled(src: Source, items: Sequence[T]) -> list[T]:
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = src.below(i + 1)
        out[i], out[j] = out[j], out[i]
    return out


def _merged(src: Source, first: Sequence[T], second: Sequence[T]) -> list[T]:
    """The two sequences interleaved at random, each kept in its order; `second` tends to
    come first."""
    out: list[T] = []
    i = j = 0
    while i < len(first) or j < len(second):
        if j == len(second) or (i < len(first) and src.chance(30)):
            out.append(first[i])
            i += 1
        else:
            out.append(second[j])
            j += 1
    return out


def _json_str(src: Source, text: str) -> str:
    return json.dumps(text, ensure_ascii=src.chance(50))


def _json_object(
    src: Source, pairs: Sequence[tuple[str, str]], numbers: Sequence[str] = ()
) -> bytes:
    """A JSON object of string fields; a field named in `numbers` goes as a JSON number when its
    text is one (the service keeps a number's exact text)."""
    items = []
    for name, value in pairs:
        if name.lower() in numbers and JSON_NUMBER.fullmatch(value) and src.chance(60):
            items.append(f"{json.dumps(name)}: {value}")
        else:
            items.append(f"{json.dumps(name)}: {_json_str(src, value)}")
    return ("{" + ", ".join(items) + "}").encode("utf-8")


def _forwarded_headers(src: Source, *, allowed_tail: bool) -> list[tuple[bytes, bytes]]:
    """X-Forwarded-For headers. With `allowed_tail`, the right-most hop is an allowed client
    (a spoof, when the peer is not a trusted proxy); without, it is never an allowed one."""
    hops = [pick(src, ALLOWED_CLIENTS + NEVER_ALLOWED) for _ in range(src.below(4))]
    if src.chance(5):
        hops += ["198.51.100.1"] * 2000  # longer than a header line may be
    tail = pick(src, ALLOWED_CLIENTS) if allowed_tail else pick(src, NEVER_ALLOWED)
    trailer = [PROXY] * src.below(3) if src.chance(30) else []
    if not allowed_tail and trailer and src.chance(50):
        trailer = []
    everything = [*hops, tail, *trailer]
    if src.chance(20) and len(everything) > 1:  # split over two headers, in order
        cut = between(src, 1, len(everything) - 1)
        return [
            (b"X-Forwarded-For", ", ".join(everything[:cut]).encode()),
            (b"X-Forwarded-For", ", ".join(everything[cut:]).encode()),
        ]
    return [(b"X-Forwarded-For", pick(src, [", ", ",", " , "]).join(everything).encode())]


def _allowed_forwarded(src: Source) -> list[tuple[bytes, bytes]]:
    """What a trusted proxy in front of the service adds for an allowed client."""
    client = pick(src, ALLOWED_CLIENTS)
    forms = [
        client,
        f"6.6.6.6, {client}",  # what the client wrote on the left proves nothing
        f"{client}, {PROXY}",  # a second trusted hop is skipped
        f"garbage, {client}",
    ]
    value = pick(src, forms)
    return [(b"X-Forwarded-For", value.encode())]


AMOUNT = re.compile(r"[0-9]{1,15}(\.[0-9]{1,20})?")  # plainly valid: never debatable


def medioot_shifts(
    src: Source, subid: str, transid: str, reward: str
) -> list[tuple[str, str, str]]:
    """1 to 3 other ways of cutting subid + transid + reward into three fields, each non-empty
    and with a plainly valid reward (so that only the replayed signature can refuse them)."""
    text = subid + transid + reward
    a, b = len(subid), len(subid) + len(transid)
    cuts = [
        (i, j)
        for i in range(max(1, a - 4), a + 5)
        for j in range(max(i + 1, b - 4), min(len(text), b + 5))
        if (i, j) != (a, b) and AMOUNT.fullmatch(text[j:])
    ]
    chosen = {pick(src, cuts) for _ in range(between(src, 1, 3))} if cuts else set()
    return [(text[:i], text[i:j], text[j:]) for i, j in sorted(chosen)]


def inbrain_shifts(src: Source, panelist: str, reward_id: str) -> list[tuple[str, str]]:
    """1 to 3 other ways of cutting PanelistId + RewardId into two non-empty fields."""
    text = panelist + reward_id
    a = len(panelist)
    cuts = [i for i in range(max(1, a - 6), min(len(text), a + 7)) if i != a]
    chosen = {pick(src, cuts) for _ in range(between(src, 1, 3))} if cuts else set()
    return [(text[:i], text[i:]) for i in sorted(chosen)]


def nested(shape: str, depth: int, *, closed: bool = True) -> str:
    """A JSON value `depth` levels deep: arrays, objects, or both in turn."""
    if shape == "array":
        opening, middle, closing = "[" * depth, "", "]" * depth
    elif shape == "object":
        opening, middle, closing = '{"a":' * depth, "1", "}" * depth
    else:
        half = depth // 2
        opening, middle, closing = '[{"a":' * half, "1", "}]" * half
    return opening + middle + (closing if closed else "")


def hostile_json(src: Source, depth: int = 0) -> str:
    """A JSON value (or near-JSON text) meant to break decoders."""
    kind = src.below(12 if depth < 3 else 8)
    if kind == 0:
        return pick(
            src,
            [
                "0",
                "-0",
                "1e999999",
                "-1e999999",
                "1E-400",
                "123456789012345678901234567890",
                "0.1",
                "2.50",
                "1e2",
            ],
        )
    if kind == 1:
        return pick(
            src, ["NaN", "Infinity", "-Infinity", "nan", "1" * 5000, "0x10", "01", "+1", ".5"]
        )
    if kind == 2:
        return pick(src, ["true", "false", "null"])
    if kind == 3:
        return pick(
            src,
            [
                '"\\u0000"',
                '"\\ud800"',
                '"\\udfff\\ud800"',
                '"\\u00e9"',
                '"\\"',
                '"a\\x"',
                "'single'",
            ],
        )
    if kind in (4, 5):
        return json.dumps(hostile(src)[:200].decode("utf-8", "replace"))
    if kind == 6:
        return json.dumps(pick(src, VALID_AMOUNTS + BAD_AMOUNTS + (REVERSAL, "offer_completed")))
    if kind == 7:
        return '"' + "x" * pick(src, [10, 3000, 70000]) + '"'
    if kind in (8, 9):
        items = [hostile_json(src, depth + 1) for _ in range(src.below(4))]
        return "[" + ",".join(items) + "]"
    items = [
        f"{json.dumps(pick(src, INBRAIN_FIELDS))}:{hostile_json(src, depth + 1)}"
        for _ in range(src.below(4))
    ]
    return "{" + ",".join(items) + "}"


def hostile_body(src: Source) -> bytes:
    """A request body meant to break parsers."""
    kind = src.below(14) if src.chance(25) else pick(src, (0, 1, 1, 4, 5, 6, 7, 8, 10, 12, 13))
    if kind == 0:
        return b""
    if kind == 1:
        return hostile_json(src).encode("utf-8", "surrogatepass")
    if kind == 2:
        return b"[" * 100_000 + b"]" * 100_000  # deep nesting
    if kind == 3:
        return b'{"a":' * 20_000 + b"1" + b"}" * 20_000
    if kind == 4:
        return b'{"Sig": "a", "Sig": "b", "PanelistId": "p", "PanelistId": "q"}'
    if kind == 5:
        text = '{"PanelistId": "p", "RewardId": "r", "Reward": 1, "Sig": "' + "0" * 32 + '"}'
        return text[: src.below(len(text))].encode()
    if kind == 6:
        return b"\xef\xbb\xbf" + b'{"Reward": 1}'
    if kind == 7:
        return '{"Reward": "é"}'.encode("utf-16")
    if kind == 8:
        return src.raw(between(src, 1, 200))
    if kind == 9:
        return b"a" * 70_000  # past max_body_bytes
    if kind == 10:
        return b"subid=a&transid=b&" * between(src, 1, 50)
    if kind == 11:
        return b'{"Reward": ' + b"9" * 100_000 + b"}"
    if kind == 12:
        return b"--x\r\nContent-Disposition: form-data; name=subid\r\n\r\na\r\n--x--\r\n"
    return pick(src, INVALID_UTF8) * between(src, 1, 100)


# --- the raw HTTP client -------------------------------------------------------------------------


@dataclass
class Reply:
    status: int | None
    headers: dict[str, str]
    body: bytes
    error: str = ""
    seconds: float = 0.0


class Conn:
    """One HTTP/1.1 connection from a chosen local address, kept alive between requests. It
    writes whatever bytes it is given, and reads one answer (its head, then its body by
    Content-Length or chunks, or up to the close)."""

    def __init__(self, host: str, port: int, local: str | None = None) -> None:
        self.host, self.port, self.local = host, port, local
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        local = (self.local, 0) if self.local else None
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, local_addr=local, limit=2**20
        )

    async def connect(self) -> None:
        """Open the connection now (else the first request opens it)."""
        if self.writer is None:
            await self._open()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def exchange(self, data: bytes, *, head: bool = False, limit: float = 30.0) -> Reply:
        started = time.monotonic()
        for attempt in (1, 2):
            reused = self.writer is not None
            if not reused:
                try:
                    await asyncio.wait_for(self._open(), limit)
                except (OSError, TimeoutError) as exc:
                    return Reply(
                        None,
                        {},
                        b"",
                        f"connect: {type(exc).__name__}: {exc}",
                        time.monotonic() - started,
                    )
            assert self.reader is not None and self.writer is not None
            got = [0]
            try:
                self.writer.write(data)
                reply = await asyncio.wait_for(self._read(head, got), limit)
            except TimeoutError:
                self.close()
                return Reply(None, {}, b"", "timeout", time.monotonic() - started)
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as exc:
                self.close()
                if reused and attempt == 1 and got[0] == 0:
                    continue  # the server closed an idle keep-alive connection: once more, fresh
                kind = "closed without an answer" if got[0] == 0 else "broken answer"
                return Reply(
                    None, {}, b"", f"{kind}: {type(exc).__name__}", time.monotonic() - started
                )
            reply.seconds = time.monotonic() - started
            return reply
        raise AssertionError("unreachable")

    async def _read(self, head: bool, got: list[int]) -> Reply:
        assert self.reader is not None
        while True:
            block = await self.reader.readuntil(b"\r\n\r\n")
            got[0] += len(block)
            lines = block[:-4].split(b"\r\n")
            version, _, rest = lines[0].partition(b" ")
            status = int(rest[:3])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                key = name.strip().lower().decode("latin-1")
                text = value.strip().decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            if 100 <= status < 200:
                continue  # 100 Continue: the real answer follows
            break
        body = b""
        if head or status in (204, 304):
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(parts)
        elif "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:
            body = await self.reader.read()
            self.close()
        connection = headers.get("connection", "").lower()
        if "close" in connection or (version == b"HTTP/1.0" and "keep-alive" not in connection):
            self.close()
        return Reply(status, headers, body)


class Pair:
    """A client's two connections: one from the untrusted peer, one from the trusted proxy."""

    def __init__(self, host: str, port: int) -> None:
        self.direct = Conn(host, port, DIRECT)
        self.proxy = Conn(host, port, PROXY)
        self.host_header = f"{host}:{port}".encode()

    async def send(self, req: Req, limit: float = 30.0) -> Reply:
        conn = self.proxy if req.via_proxy else self.direct
        reply = await conn.exchange(req.wire(self.host_header), head=req.head_only, limit=limit)
        if req.close or req.framing == "none":
            conn.close()
        return reply

    def close(self) -> None:
        self.direct.close()
        self.proxy.close()


async def send_item(
    pair: Pair, grammar: Grammar, ledger: Ledger, reqs: Sequence[Req], where: str = ""
) -> list[Reply]:
    """Send an item's requests in order, record them, and keep valid ones for exact repeats."""
    replies = []
    for req in reqs:
        reply = await pair.send(req)
        ledger.record(req, reply, where)
        if req.valid and reply.status == 200:
            if len(grammar.resendable) < RESENDABLE:
                grammar.resendable.append(req)
            else:
                grammar.resendable[ledger.requests % RESENDABLE] = req
        replies.append(reply)
    return replies


# --- the oracle ----------------------------------------------------------------------------------


RESENDABLE = 5000  # valid postbacks kept for exact repeats
ACCEPTED_OUTCOMES = (
    "credited",
    "reversed",
    "status_changed",
    "recorded",
    "duplicate",
    "conflict",
    "ignored",
)


@dataclass
class Ledger:
    """What was sent and answered, and what the database may hold because of it."""

    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    families: Counter[str] = field(default_factory=Counter)
    expects: dict[tuple[str, str], Expect] = field(default_factory=dict)
    optional: dict[tuple[str, str], Expect] = field(default_factory=dict)
    answered: set[tuple[str, str]] = field(default_factory=set)  # keys of valid 200 answers
    valid_sent: int = 0
    valid_refused: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    no_retry_after: list[str] = field(default_factory=list)
    fuzz_ok: Counter[str] = field(default_factory=Counter)  # 200 answers to fuzz, by family
    no_answer: Counter[str] = field(default_factory=Counter)
    timeouts: list[str] = field(default_factory=list)
    signatures: set[str] = field(default_factory=set)
    wrong_status: list[str] = field(default_factory=list)  # a known status not given

    def record(self, req: Req, reply: Reply, where: str = "") -> None:
        """One request and its answer; problems are kept with the request that caused them."""
        self.requests += 1
        label = str(reply.status) if reply.status is not None else reply.error.split(":")[0]
        self.statuses[label] += 1
        self.families[req.family] += 1
        self.signatures.update(req.secrets)
        text = reply.body[:200].decode("utf-8", "replace")
        seen = f"{where} {req.family}: {reply.status or reply.error} {text!r} <- {req.describe()}"
        if reply.status is not None and reply.status >= 500:
            self.server_errors.append(seen)
            if reply.status == 503 and "retry-after" not in reply.headers:
                self.no_retry_after.append(seen)
        if reply.error == "timeout":
            self.timeouts.append(seen)
        elif reply.status is None:
            self.no_answer[f"{req.family}: {reply.error}"] += 1
        if req.statuses and reply.status not in req.statuses:
            wanted = " or ".join(map(str, req.statuses))
            self.wrong_status.append(f"{seen} (must be {wanted})")
        if req.optional:
            self.optional.update(((e.provider, e.key), e) for e in req.expects)
        if req.valid:
            self.valid_sent += 1
            for expect in req.expects:
                self.expects[(expect.provider, expect.key)] = expect
            body = reply.body.decode("utf-8", "replace").strip()
            if reply.status == 200 and (not req.answer or body == req.answer):
                self.answered.update((e.provider, e.key) for e in req.expects)
            else:
                self.valid_refused.append(seen)
        elif reply.status == 200 and req.family not in ("path", "raw"):
            self.fuzz_ok[req.family] += 1

    async def check(self, conn: Any) -> Check:
        """Compare the database with what was sent (see the module doc)."""
        c = Check()
        rows = await conn.fetch(
            "SELECT provider, key, user_id, amount, test, type,"
            " coalesce(data->>'link', provider_ref) AS link FROM events ORDER BY position"
        )
        c.events = len(rows)
        stored = {}
        money = Money()
        for r in rows:
            key = (r["provider"], r["key"])
            stored[key] = r
            e = self.expects.get(key) or self.optional.get(key)
            if e is None:
                c.unexpected.append(
                    f"event {key} for user {r['user_id']!r}, amount {r['amount']}:"
                    " no valid postback sent it"
                )
                continue
            if r["user_id"] != e.user or r["amount"] != e.amount or r["test"] != e.test:
                c.wrong.append(
                    f"event {key}: user {r['user_id']!r} amount {r['amount']} test {r['test']};"
                    f" sent user {e.user!r} amount {e.amount} test {e.test}"
                )
            elif e.linked and r["link"] != e.link:
                c.wrong.append(
                    f"event {key}: paired in transaction {r['link']!r}, the rules say {e.link!r}"
                )
            c.doubled += money.add(e)
        c.missing = [
            f"{k}: answered 200, no event" for k in sorted(self.answered) if k not in stored
        ]
        expected = money.wallets()
        seen: set[str] = set()
        for r in await conn.fetch(
            "SELECT user_id, balance, total_credited, total_reversed FROM wallets"
        ):
            user = r["user_id"]
            seen.add(user)
            want = expected.get(user)
            have = (r["balance"], r["total_credited"], r["total_reversed"])
            if want is None:
                c.wallets_off.append(
                    f"wallet {user!r} = {r['balance']}: no valid postback for this user"
                )
            elif have != want:
                c.wallets_off.append(
                    f"wallet {user!r} = {have[0]} (credited {have[1]}, reversed {have[2]}),"
                    f" expected {want[0]} (credited {want[1]}, reversed {want[2]})"
                )
            elif r["balance"] < 0:
                c.wallets_off.append(f"wallet {user!r} = {r['balance']}: negative")
        c.wallets_off += [
            f"wallet {user!r}: missing, expected {want[0]}"
            for user, want in sorted(expected.items())
            if user not in seen
        ]
        accepted = await conn.fetch(
            "SELECT request_id, provider, outcome, http_status, detail, params FROM postback_log"
            " WHERE outcome = ANY($1::text[]) AND request_id NOT LIKE 'v-%'",
            list(ACCEPTED_OUTCOMES),
        )
        c.fuzz_accepted = [str(dict(r))[:500] for r in accepted]
        c.outcomes = Counter(
            {
                r["outcome"]: r["n"]
                for r in await conn.fetch(
                    "SELECT outcome, count(*) AS n FROM postback_log GROUP BY 1"
                )
            }
        )
        return c


class Money:
    """What the recorded events must have done to the wallets, by the money rules (restated
    here, not imported from the service): a credit and a reversal pair per wall transaction
    (link, as `Model` resolved it), at most one of each; the pair moves its user by
    credit - min(reversal, credit), or by nothing when the reversal takes back the whole credit
    (inBrain), and a reversal naming another user than the credit, or without a credit, moves
    nothing. Test events move nothing. An AdGate approval's conversion is credited the amount
    of its first `approved` event, once; `pending` moves nothing; its first `rejected` takes the
    whole credit back from the credit's user, whether it comes before or after the credit."""

    def __init__(self) -> None:
        self.credits: dict[tuple[str, str], Expect] = {}
        self.reversals: dict[tuple[str, str], Expect] = {}
        self.alone: list[Expect] = []
        self.users: set[str] = set()
        # (provider, conversion) -> its first approved and first rejected event
        self.conversions: dict[tuple[str, str], dict[str, Expect]] = {}

    def add(self, e: Expect) -> list[str]:
        """Count one recorded event (in position order); what is wrong with recording it."""
        self.users.add(e.user)
        if e.conversion and not e.test:
            name = (e.provider, e.conversion)
            firsts = self.conversions.setdefault(name, {})
            other = [f.key for f in firsts.values() if f.user != e.user]
            if other:
                return [f"conversion {name}: {e.key} names another user than {other[0]}"]
            if e.state in ("approved", "rejected"):
                firsts.setdefault(e.state, e)
            return []
        if not e.linked:
            self.alone.append(e)
            return []
        link = (e.provider, e.link)
        kind, first = ("credit", self.credits) if e.delta > 0 else ("reversal", self.reversals)
        if link in first:
            return [
                f"transaction {link}: a second {kind} recorded, {e.key} after {first[link].key}"
            ]
        first[link] = e
        return []

    def wallets(self) -> dict[str, tuple[Decimal, Decimal, Decimal]]:
        """Per user: (balance, total credited, total reversed)."""
        credited = dict.fromkeys(self.users, Decimal(0))
        reversed_ = dict.fromkeys(self.users, Decimal(0))
        with decimal.localcontext(decimal.Context(prec=200)):  # sums stay exact
            for e in self.alone:
                if e.delta > 0 and not e.test:
                    credited[e.user] += e.amount
            for firsts in self.conversions.values():
                credit, rejection = firsts.get("approved"), firsts.get("rejected")
                if credit is not None:
                    credited[credit.user] += credit.amount
                    if rejection is not None and rejection.user == credit.user:
                        reversed_[credit.user] += credit.amount
            for link, credit in self.credits.items():
                credited[credit.user] += credit.amount
                reversal = self.reversals.get(link)
                if reversal is not None and reversal.user == credit.user:
                    taken = credit.amount if reversal.whole else min(reversal.amount, credit.amount)
                    reversed_[credit.user] += taken
            return {u: (credited[u] - reversed_[u], credited[u], reversed_[u]) for u in self.users}


@dataclass
class Check:
    events: int = 0
    unexpected: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    wallets_off: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)  # a second credit or reversal of a link
    fuzz_accepted: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def problems(self) -> list[str]:
        return [
            *self.unexpected,
            *self.wrong,
            *self.missing,
            *self.doubled,
            *self.wallets_off,
            *self.fuzz_accepted,
        ]


# --- secrets in log lines ------------------------------------------------------------------------

HEX32 = re.compile(rb"[0-9a-fA-F]{32,}")


def secret_lines(
    lines: Iterable[bytes], secrets: dict[str, str], signatures: set[str]
) -> list[str]:
    """The log lines holding a secret (by exact text, any case) or a sent signature (a 32-digit
    hex run, any case): what each holds, and the text around the first one, masked."""
    needles = {s.lower().encode(): name for name, s in secrets.items() if len(s) >= 8}
    pattern = re.compile(b"|".join(re.escape(n) for n in needles)) if needles else None
    found = []
    for line in lines:
        low = line.lower()
        hits: list[tuple[int, str]] = []
        if pattern is not None:
            hits += [(m.start(), needles[m.group(0)]) for m in pattern.finditer(low)]
        for m in HEX32.finditer(low):
            run = m.group(0).decode()
            if any(run[i : i + 32] in signatures for i in range(len(run) - 31)):
                hits.append((m.start(), "a signature"))
        if hits:
            masked = line.decode("utf-8", "replace")
            for name, s in secrets.items():
                masked = re.sub(re.escape(s), f"<{name}>", masked, flags=re.IGNORECASE)
            places = [masked.find(f"<{name}>") for _, name in hits]
            for shown_run in re.finditer(r"[0-9a-f]{32,}", masked.lower()):
                text = shown_run.group(0)
                if any(text[i : i + 32] in signatures for i in range(len(text) - 31)):
                    places.append(shown_run.start())
            at = min((p for p in places if p >= 0), default=0)
            shown = " ".join(masked[max(0, at - 160) : at + 160].replace("\\n", " ").split())
            found.append(f"[{', '.join(sorted({h for _, h in hits}))}] ...{shown}...")
    return found


def _raised(traceback: str) -> str:
    """The last exception a traceback names (`module.Class`), or its last line."""
    pattern = r"^((?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*|[A-Z]\w*(?:Error|Exception))(?::|$)"
    names = re.findall(pattern, traceback, re.MULTILINE)
    lines = traceback.strip().splitlines()
    return names[-1] if names else (lines[-1].strip()[:120] if lines else "")


def log_summary(paths: Iterable[Any]) -> tuple[Counter[str], list[str], Counter[str]]:
    """The service's JSON log lines by level, its lines at level error (event and the last
    line of the traceback), and the lines that are not JSON (what libraries print) by text."""
    levels: Counter[str] = Counter()
    errors: list[str] = []
    other: Counter[str] = Counter()
    for path in paths:
        with open(path, "rb") as lines:
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = None
                if not isinstance(entry, dict):
                    if line.strip():
                        levels["(not json)"] += 1
                        if not line.startswith((" ", "Traceback", "^")):
                            other[line[:120]] += 1
                    continue
                level = str(entry.get("level", "?"))
                levels[level] += 1
                if level in ("error", "critical"):
                    event = re.sub(r" from \S+$", "", str(entry.get("event")))
                    errors.append(f"{event}: {_raised(str(entry.get('exception', '')))}")
    return levels, errors, other
