"""What every wall protocol shares: the inbound request, refusals, parameters, the source check.

A protocol module (see `registry.py`) has one shape:

    SECRET_PARAMS: frozenset[str]            parameter names never stored or logged
    IDENTITY: tuple[str, str]                (lowercase) names of the parameters holding the
                                             user id and the wall's transaction id
    REQUIRED_SETTINGS: tuple[str, ...]       provider settings it cannot work without
    def normalise(provider, inbound) -> Postback     raises Invalid or Unauthenticated
    def answer(outcome, detail) -> Answer            the wall's own response convention
    def loggable(inbound) -> dict[str, str]          what the postback log may keep of a
                                                     request: never a signature or token
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol
from urllib.parse import parse_qsl

import msgspec

from .. import metrics, settings
from ..domain.events import AuthReason, Outcome, Postback
from ..text import one_line

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_ID_LENGTH = 255
MAX_TEXT_LENGTH = 2000


@dataclass(frozen=True, slots=True)
class Inbound:
    """A postback request as a protocol sees it: no aiohttp types, so protocols stay testable."""

    method: str
    query: tuple[tuple[str, str], ...]
    content_type: str
    body: bytes
    client_ip: IPAddress | None
    # Request headers (a wall profile may carry its signature in one; never logged), the path
    # and query exactly as received (what `signature.over = "url"` signs), and whether the
    # request came to the wall's reversal endpoint (`/postbacks/<name>/reversal`).
    headers: tuple[tuple[str, str], ...] = ()
    raw_path: str = ""
    reversal: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: str
    content_type: str = "text/plain"


class Refused(Exception):
    """A postback that records nothing in the ledger; `detail` is one line for the caller."""

    outcome: Outcome = Outcome.INVALID
    status: int = 400

    def __init__(self, detail: str) -> None:
        detail = one_line(detail)
        super().__init__(detail)
        self.detail = detail


class Invalid(Refused):
    outcome = Outcome.INVALID
    status = 400


class TooLarge(Refused):
    outcome = Outcome.INVALID
    status = 413


class TooSlow(Refused):
    outcome = Outcome.INVALID
    status = 408


class Acknowledged(Refused):
    """A postback answered as accepted that records no event (a wall's "pending" status): the
    postback log keeps it with outcome `ignored`."""

    outcome = Outcome.IGNORED

    def __init__(self, detail: str, status: int = 200) -> None:
        super().__init__(detail)
        self.status = status


class Unauthenticated(Refused):
    outcome = Outcome.REJECTED
    status = 403

    def __init__(self, reason: AuthReason, detail: str) -> None:
        super().__init__(detail)
        self.reason: AuthReason = reason


def plain(status: int, body: str) -> Answer:
    return Answer(status=status, body=body)


def plain_answer(outcome: Outcome, detail: str, *, ok: str = "OK", repeat: str = "OK") -> Answer:
    """The plain-text convention the walls share: `ok` for a new event, `repeat` for a
    duplicate, conflict or ignored event (retrying cannot help), 403 / 400 with the reason,
    503 so that the wall retries later."""
    match outcome:
        case Outcome.DUPLICATE | Outcome.CONFLICT | Outcome.IGNORED:
            return plain(200, repeat)
        case Outcome.REJECTED:
            return plain(403, detail)
        case Outcome.INVALID:
            return plain(400, detail)
        case Outcome.UNAVAILABLE:
            return plain(503, "database unavailable, retry later")
        case Outcome.SHED:
            return plain(503, "overloaded, retry later")
        case _:
            return plain(200, ok)


class WallProtocol(Protocol):
    """The shape of every module in `service/providers/` (mypy checks modules against it)."""

    SECRET_PARAMS: frozenset[str]
    REQUIRED_SETTINGS: tuple[str, ...]  # Provider fields that must be non-empty
    IDENTITY: tuple[str, str]  # lowercase names of the user id and transaction id parameters

    def normalise(self, provider: settings.Provider, inbound: Inbound) -> Postback: ...

    def answer(self, outcome: Outcome, detail: str) -> Answer: ...

    def loggable(self, inbound: Inbound) -> dict[str, str]: ...


# --- authentication helpers -------------------------------------------------------------------


def md5_hex(*parts: str) -> str:
    return hashlib.md5("".join(parts).encode("utf-8"), usedforsecurity=False).hexdigest()


def same_secret(expected: str, received: str) -> bool:
    """Constant-time comparison that accepts any text the caller sent, even non-ASCII."""
    return hmac.compare_digest(expected.encode("utf-8"), received.encode("utf-8", "replace"))


def same_hex_digest(expected_lower_hex: str, received: str) -> bool:
    """Constant-time comparison of a hex digest, accepting either case."""
    return same_secret(expected_lower_hex, received.lower())


def first_match(candidates: Iterable[str], matches: Callable[[str], bool]) -> int:
    """The position (from 1) of the first candidate secret that `matches`, or 0. Every
    candidate is tried, so the time taken does not say which one matched."""
    found = 0
    for position, candidate in enumerate(candidates, 1):
        if matches(candidate) and not found:
            found = position
    return found


def signed_with(provider: settings.Provider, matches: Callable[[str], bool]) -> bool:
    """Whether one of the provider's secrets `matches`; counts which one did (rotation)."""
    position = first_match(provider.secret_list(), matches)
    if position:
        metrics.secret_used(provider.name, position)
    return position > 0


def check_source(
    allowed: tuple[Network, ...],
    client_ip: IPAddress | None,
    expected_tokens: str | tuple[str, ...],
    token: str | None,
) -> int:
    """The checks every wall may have: the source address allowlist, then the URL token (any of
    `expected_tokens`). The position (from 1) of the token that matched, 0 without tokens."""
    if allowed and (client_ip is None or not any(client_ip in net for net in allowed)):
        raise Unauthenticated("source_ip", "source address not allowed")
    tokens = (expected_tokens,) if isinstance(expected_tokens, str) else expected_tokens
    tokens = tuple(t for t in tokens if t)
    if not tokens:
        return 0
    position = first_match(tokens, lambda expected: same_secret(expected, token or ""))
    if not position:
        raise Unauthenticated("token", "invalid token")
    return position


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: tuple[Network, ...]
) -> IPAddress | None:
    """The real client: the socket peer, or, only when the peer is a trusted proxy, the
    right-most X-Forwarded-For entry that is not itself a trusted proxy.

    Entries left of the first untrusted hop were written by the client and prove nothing, which
    is why the walk goes right to left and stops there. A malformed entry ends the walk with no
    address, so an allowlist then refuses the request.
    """
    address = _ip(peer)
    if address is None or not _in(address, trusted):
        return address
    hops = [h.strip() for header in forwarded_for for h in header.split(",")]
    for hop in reversed(hops):
        hop_ip = _ip(hop)
        if hop_ip is None:
            return None
        if not _in(hop_ip, trusted):
            return hop_ip
        address = hop_ip
    return address


def from_trusted_proxy(peer: str | None, trusted: tuple[Network, ...]) -> bool:
    """Whether the socket peer is one of `server.trusted_proxies` (whose headers count)."""
    address = _ip(peer)
    return address is not None and _in(address, trusted)


@functools.lru_cache(maxsize=4096)
def _ip(text: str | None) -> IPAddress | None:
    """An address as text, parsed (None when it is not one). Cached: the same few peers (a
    proxy, the walls' servers) send request after request; the cache is bounded, so addresses
    a flood makes up cannot grow it."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _in(address: IPAddress, networks: tuple[Network, ...]) -> bool:
    return any(address in net for net in networks)


# --- parameters ---------------------------------------------------------------------------------


def checked(name: str, value: str, limit: int | None = None) -> str:
    """`value` if the database can store it as text (and it fits `limit`), else Invalid."""
    if "\x00" in value:
        raise Invalid(f"parameter {name} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(f"parameter {name} is not valid UTF-8") from None
    if limit is not None and len(value) > limit:
        raise Invalid(f"parameter {name} is longer than {limit} characters")
    return value


def raw_pairs(inbound: Inbound) -> list[tuple[str, str]]:
    """Query parameters, then those of a form or JSON-object body, as the wall sent them."""
    pairs = list(inbound.query)
    if not inbound.body:
        return pairs
    ctype = inbound.content_type.split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        try:
            text = inbound.body.decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid("form body is not valid UTF-8") from None
        pairs.extend(parse_qsl(text, keep_blank_values=True))
    elif ctype == "application/json" or ctype.endswith("+json"):
        pairs.extend(_json_pairs(inbound.body))
    else:
        raise Invalid(f"unsupported Content-Type {ctype or '(none)'}: send a form or JSON body")
    return pairs


def _json_pairs(body: bytes) -> list[tuple[str, str]]:
    # The standard decoder, because its hooks do what this needs: numbers keep their exact text
    # ("10.50" must stay "10.50" for the signature) and a repeated key is seen, not overwritten.
    try:
        pairs = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_no_nesting,
            parse_float=str,
            parse_int=str,
            parse_constant=_no_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Invalid("body is not a JSON object") from None
    if not isinstance(pairs, _Pairs):
        raise Invalid("body is not a JSON object")
    found = []
    for name, value in pairs:
        if isinstance(value, bool):
            found.append((name, "true" if value else "false"))
        elif isinstance(value, str):
            found.append((name, value))
        elif value is not None:
            raise Invalid(f"JSON field {name} must be a string, number or boolean")
    return found


class _Pairs(list[tuple[str, object]]):
    pass


def _no_nesting(pairs: list[tuple[str, object]]) -> _Pairs:
    return _Pairs(pairs)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def params(inbound: Inbound) -> dict[str, str]:
    """Parameters of the query and of a form or JSON body, by lowercase name."""
    return named(raw_pairs(inbound))


def named(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Parameters by lowercase name. A name sent twice is refused: which copy is the real one
    would be a guess, and parameter pollution is how signed values get swapped."""
    found: dict[str, str] = {}
    for name, value in pairs:
        key = checked(name, name).lower()
        if key in found:
            raise Invalid(f"parameter {key} is given more than once")
        found[key] = checked(key, value)
    return found


def require(found: Mapping[str, str], names: Iterable[str]) -> None:
    missing = [n for n in names if not found.get(n)]
    if missing:
        raise Invalid(f"missing parameter: {', '.join(missing)}")


def bounded(found: Mapping[str, str], name: str, limit: int = MAX_ID_LENGTH) -> str:
    value = found[name]
    if len(value) > limit:
        raise Invalid(f"parameter {name} is longer than {limit} characters")
    return value


def loggable(inbound: Inbound, secret: frozenset[str]) -> dict[str, str]:
    """The query and form or JSON parameters for the postback log, never those in `secret`."""
    try:
        pairs = raw_pairs(inbound)
    except Refused:  # the refusal itself is reported by normalise(); keep what can be kept
        pairs = list(inbound.query)
    return storable_params((n, v) for n, v in pairs if n.lower() not in secret)


def identify(params: Mapping[str, str], identity: tuple[str, str]) -> tuple[str | None, str | None]:
    """The user id and transaction id a request names (its parameters as the log keeps them),
    whether or not it was authenticated: what the postback log is searched by. None for a
    name the request did not give, or gave empty."""
    lowered = {name.lower(): value for name, value in params.items()}
    user, transaction = (lowered.get(name, "")[:MAX_ID_LENGTH] or None for name in identity)
    return user, transaction


def storable_params(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """At most 100 parameters as text the database can store, each bounded in length."""
    kept: dict[str, str] = {}
    for name, value in pairs:
        if len(kept) == 100:
            break
        kept[_storable(name)[:100]] = _storable(value)[:MAX_TEXT_LENGTH]
    return kept


REFUSAL_PARAMS_BYTES = 3072


def compact(params: dict[str, str], budget: int = REFUSAL_PARAMS_BYTES) -> dict[str, str]:
    """What the postback log keeps of a refused request's parameters: at most `budget` bytes of
    JSON. A refusal is kept as evidence of what arrived, not whole: whoever sends it chose its
    size."""
    kept: dict[str, str] = {}
    used = 2  # {}
    for name, value in params.items():
        name, value = name[:64], value[:256]
        cost = len(msgspec.json.encode({name: value}))  # an upper bound of its share
        if used + cost > budget - 40:  # room for the note below
            kept["(omitted)"] = f"{len(params) - len(kept)} more parameters"
            break
        kept[name] = value
        used += cost
    return kept


def _storable(text: str) -> str:
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def storable_json(body: bytes) -> msgspec.Raw | None:
    """`body` itself, as raw JSON, if PostgreSQL's jsonb can hold it exactly, else None.

    Never decoded to Python numbers and encoded again: a number keeps the exact text it came
    with (jsonb keeps it as `numeric`). Checked on the way: jsonb refuses NUL characters, lone
    surrogates and numbers beyond `numeric`, and NaN or Infinity are not JSON; nesting deeper
    than the decoder can check (RecursionError) is refused too.
    """
    try:
        value = json.loads(
            body.decode("utf-8"),
            parse_float=_jsonb_number,
            parse_int=_jsonb_number,
            parse_constant=_no_constant,
        )
        # Numbers are strings here; what is left to check is the text of every string.
        text = json.dumps(value, ensure_ascii=False)
        text.encode("utf-8")
    except (UnicodeError, ValueError, ArithmeticError, RecursionError):
        return None
    return None if "\\u0000" in text else msgspec.Raw(body)


# What PostgreSQL's `numeric` takes from text: an exponent within +-1000 (older servers refuse
# more), at most 16383 digits after the decimal point and 131072 before it.
_MAX_EXPONENT, _MAX_SCALE, _MAX_WEIGHT = 1000, 16383, 131071


def _jsonb_number(text: str) -> str:
    """The JSON number `text` unchanged, or ValueError if jsonb could not store it."""
    _, _, written = text.lower().partition("e")
    value = Decimal(text)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # a JSON number is finite
    if (
        (written and abs(int(written)) > _MAX_EXPONENT)
        or -exponent > _MAX_SCALE
        or value.adjusted() > _MAX_WEIGHT
    ):
        raise ValueError(f"number {text[:20]} is beyond what jsonb stores")
    return text


def storable_text(body: bytes, limit: int) -> str:
    return _storable(body[:limit].decode("utf-8", "replace"))
