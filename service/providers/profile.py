"""Wall profiles: one engine for every wall described by data (README, "Adding a wall").

A profile says where a wall puts the user, the transaction, the amount and the status, how it
signs, and how it wants to be answered. Built-in profiles are `service/profiles/<protocol>.toml`;
`protocol = "custom"` takes the whole profile from the provider's `profile` table, and a
built-in's keys may be overridden there (tables merge key by key). Everything after
normalisation (settlement pairing, replays, max_amount, allowed_ips, the postback log, metrics)
is the write path's and the handler's, exactly as for the walls that have a module of their own.

`ProfileWall` has the shape of a protocol module (`base.WallProtocol`); `build` makes the
postback a wall would send (for `postback-ledger simulate` and the tests).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode

import msgspec

from .. import settings
from ..domain.amounts import AmountError, parse_amount
from ..domain.events import EventType, Outcome, Postback, Signed
from ..domain.settlement import WHOLE
from .base import (
    MAX_ID_LENGTH,
    MAX_TEXT_LENGTH,
    Acknowledged,
    Answer,
    Inbound,
    Invalid,
    Refused,
    Unauthenticated,
    bounded,
    named,
    plain,
    raw_pairs,
    require,
    same_secret,
    signed_with,
)
from .base import loggable as base_loggable

CUSTOM = "custom"
KINDS = ("hash", "hmac", "secret", "none")
ALGORITHMS: dict[str, Callable[..., Any]] = {
    "md5": hashlib.md5,
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}
OVERS = ("template", "url", "sorted_query", "body")
ENCODINGS = ("hex", "base64", "base64url")
METHODS = ("GET", "POST")
BODIES = ("form", "json")
PENDING_DETAIL = "pending: nothing credited yet"


# --- the schema -----------------------------------------------------------------------------------


class Signature(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    kind: str = "hash"
    algorithm: str = "md5"
    over: str = "template"
    template: str = ""
    encoding: str = "hex"
    param: str = ""
    header: str = ""


class Reply(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    status: int = 200
    # `{transaction}` is the postback's transaction id. An empty body of `refused` or `invalid`
    # answers the one-line reason.
    body: str = ""
    content_type: str = "text/plain"


class Answers(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    ok: Reply = Reply(200, "OK")
    duplicate: Reply = Reply(200, "OK")  # duplicates and conflicts
    refused: Reply = Reply(403, "")  # authentication failed
    invalid: Reply = Reply(400, "")  # malformed
    # Accepted but recorded nothing (a pending status): `ok` unless given.
    ignored: Reply | None = None

    @property
    def acknowledged(self) -> Reply:
        return self.ok if self.ignored is None else self.ignored


class Setup(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    query: str = ""
    secret_from: str = ""
    notes: str = ""


class Simulate(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    values: dict[str, str] = {}
    body: str = "form"  # how a POST carries its parameters: "form" or "json"


class Profile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    user: str
    transaction: str
    amount: str
    methods: list[str] = msgspec.field(default_factory=lambda: ["GET"])
    status: str = ""
    credit: list[str] = []
    reversal: list[str] = []
    test: list[str] = []
    pending: list[str] = []
    negative_reverses: bool = False
    reversal_prefix: str = ""
    reversal_endpoint: bool = False
    # A parameter naming the transaction a reversal takes back, for a wall that gives a reversal
    # a transaction id of its own (BitLabs' `ref`). It must be signed.
    link: str = ""
    params: list[str] = []
    # Parameters that must be present and not empty, or the postback is malformed (400). The
    # signature parameter may be listed: then a missing signature is malformed, not forged.
    required: list[str] = []
    # The reason a status none of credit, reversal, test and pending lists is refused with
    # (default: "<status> must be one of ...").
    status_detail: str = ""
    allowed_ips: list[str] = []
    signature: Signature = Signature()
    answers: Answers = Answers()
    setup: Setup = Setup()
    simulate: Simulate = Simulate()


# --- built-in profiles and overrides --------------------------------------------------------------


def _profiles_dir() -> Any:
    return resources.files("service").joinpath("profiles")


@functools.cache
def builtin_names() -> tuple[str, ...]:
    """The built-in profiles: the `.toml` files of `service/profiles`."""
    folder = _profiles_dir()
    if not folder.is_dir():
        return ()
    return tuple(
        sorted(
            entry.name.removesuffix(".toml")
            for entry in folder.iterdir()
            if entry.name.endswith(".toml") and entry.name != f"{CUSTOM}.toml"
        )
    )


@functools.cache
def _builtin(name: str) -> dict[str, Any]:
    where = f"service/profiles/{name}.toml"
    try:
        text = _profiles_dir().joinpath(f"{name}.toml").read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise settings.ConfigError(f"profile {where}: cannot be read: {exc}") from None
    return raw


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with every key of `overrides` replacing its value; tables merge key by key."""
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def raw_profile(provider: settings.Provider, where: str) -> dict[str, Any]:
    """The provider's profile as a table: its built-in merged with its overrides."""
    if provider.protocol == CUSTOM:
        if provider.profile is None:
            raise settings.ConfigError(
                f"config: {where}.profile: protocol custom needs a [providers.profile] table"
            )
        return dict(provider.profile)
    return merged(_builtin(provider.protocol), provider.profile or {})


def decode(raw: Mapping[str, Any], where: str) -> Profile:
    try:
        return msgspec.convert(raw, Profile, strict=False)
    except msgspec.ValidationError as exc:
        text, _, at = str(exc).partition(" - at `")
        path = at.rstrip("`").removeprefix("$").lstrip(".")
        raise settings.ConfigError(f"{where}{'.' + path if path else ''}: {text}") from None


# --- compiled profiles ----------------------------------------------------------------------------

# A template piece: literal text, a parameter (lowercase name), or the secret (None).
Piece = tuple[str, str | None]
_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]|[^{}]+")
_PARAM_NAME = re.compile(r"[^{}\s]+")


def parse_template(template: str) -> tuple[Piece, ...]:
    """("text", literal) and ("param", name) pieces; ("secret", None) for `{secret}`."""
    pieces: list[Piece] = []
    for match in _TEMPLATE_TOKEN.finditer(template):
        token = match.group(0)
        if token in ("{{", "}}"):
            pieces.append(("text", token[0]))
        elif token in ("{", "}"):
            raise ValueError(f"a lone '{token}' (write '{token}{token}' for a literal brace)")
        elif match.group(1) is not None:
            name = match.group(1)
            if not _PARAM_NAME.fullmatch(name):
                raise ValueError(f"'{{{name}}}' is not a parameter name")
            pieces.append(("secret", None) if name == "secret" else ("param", name.lower()))
        else:
            pieces.append(("text", token))
    return tuple(pieces)


@dataclass(frozen=True, slots=True)
class Compiled:
    """A profile checked and prepared: lowercase names, the parsed template."""

    profile: Profile
    user: str
    transaction: str
    amount: str
    status: str
    params: tuple[str, ...]
    required: tuple[str, ...]
    template: tuple[Piece, ...]
    signature_param: str  # lowercase; "" when the signature is in a header or absent
    signature_header: str
    signs_amount_by_template: bool
    link: str = ""  # lowercase; the parameter naming a reversal's credit

    @property
    def signature(self) -> Signature:
        return self.profile.signature

    @property
    def needs_secret(self) -> bool:
        return self.signature.kind != "none"


def _one_of(value: str, allowed: Iterable[str], where: str) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise settings.ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")


def compile_profile(profile: Profile, where: str, public_url: str = "") -> Compiled:
    """Check `profile` (ConfigError naming the key at `where`) and prepare it."""
    if not profile.methods:
        raise settings.ConfigError(f"{where}.methods: name at least one of GET, POST")
    for i, method in enumerate(profile.methods):
        _one_of(method, METHODS, f"{where}.methods[{i}]")
    for key in ("user", "transaction", "amount"):
        if not getattr(profile, key):
            raise settings.ConfigError(f"{where}.{key}: must name a parameter")
    if not profile.status:
        for key in ("credit", "reversal", "test", "pending"):
            if getattr(profile, key):
                raise settings.ConfigError(f"{where}.{key}: needs `status` (the parameter)")
    statuses: dict[str, str] = {}
    for key in ("credit", "reversal", "test", "pending"):
        for value in getattr(profile, key):
            if value in statuses:
                raise settings.ConfigError(
                    f"{where}.{key}: status {value!r} is also in {statuses[value]}"
                )
            statuses[value] = key
    for i, cidr in enumerate(profile.allowed_ips):
        settings._network(cidr, f"{where}.allowed_ips[{i}]")
    sig = profile.signature
    _one_of(sig.kind, KINDS, f"{where}.signature.kind")
    _one_of(sig.algorithm, ALGORITHMS, f"{where}.signature.algorithm")
    _one_of(sig.over, OVERS, f"{where}.signature.over")
    _one_of(sig.encoding, ENCODINGS, f"{where}.signature.encoding")
    _one_of(profile.simulate.body, BODIES, f"{where}.simulate.body")
    for name in ("ok", "duplicate", "refused", "invalid", "ignored"):
        reply = getattr(profile.answers, name)
        if reply is None:
            continue
        status = reply.status
        if not 200 <= status <= 599:
            raise settings.ConfigError(f"{where}.answers.{name}.status: {status} is not 200-599")
    if sig.kind != "none" and bool(sig.param) == bool(sig.header):
        raise settings.ConfigError(
            f"{where}.signature.param: give exactly one of signature.param and signature.header"
        )
    if sig.kind == "none" and (sig.param or sig.header):
        raise settings.ConfigError(f"{where}.signature.param: kind none has no signature")
    lower = str.lower
    mapped = {lower(profile.user), lower(profile.transaction), lower(profile.amount)}
    if profile.status:
        mapped.add(lower(profile.status))
    params = tuple(lower(p) for p in profile.params)
    if profile.link:
        mapped.add(lower(profile.link))
    template: tuple[Piece, ...] = ()
    if sig.kind in ("hash", "hmac") and sig.over == "template":
        try:
            template = parse_template(sig.template)
        except ValueError as exc:
            raise settings.ConfigError(f"{where}.signature.template: {exc}") from None
        names = [name or "" for kind, name in template if kind == "param"]
        if not names:
            raise settings.ConfigError(f"{where}.signature.template: names no parameter")
        for name in names:
            if name not in mapped and name not in params:
                raise settings.ConfigError(
                    f"{where}.signature.template: {{{name}}} is neither mapped (user,"
                    " transaction, amount, status) nor listed in params"
                )
        has_secret = any(kind == "secret" for kind, _ in template)
        if sig.kind == "hash" and not has_secret:
            raise settings.ConfigError(
                f"{where}.signature.template: a hash needs {{secret}} in its template"
            )
        if sig.kind == "hmac" and has_secret:
            raise settings.ConfigError(
                f"{where}.signature.template: an hmac is keyed with the secret; it must not"
                " appear in the template"
            )
    elif sig.template and sig.kind in ("hash", "hmac"):
        raise settings.ConfigError(
            f"{where}.signature.template: only for over = template (over is {sig.over})"
        )
    if sig.kind in ("hash", "hmac") and sig.over == "body" and "GET" in profile.methods:
        raise settings.ConfigError(
            f'{where}.methods: signature.over = body needs methods = ["POST"] (a GET has no body)'
        )
    if sig.kind in ("hash", "hmac") and sig.over == "url" and not public_url:
        raise settings.ConfigError(
            "config: server.public_url: needed by signature.over = url"
            f" ({where.removeprefix('config: ')})"
        )
    if profile.link:
        signed_whole = sig.kind in ("hash", "hmac") and sig.over != "template"
        if not signed_whole and ("param", lower(profile.link)) not in template:
            # An unsigned link would let a captured reversal be pointed at another credit.
            raise settings.ConfigError(
                f"{where}.link: {profile.link} must be covered by the signature"
            )
    signature_param = lower(sig.param) if sig.kind != "none" else ""
    if signature_param and signature_param in mapped | set(params):
        raise settings.ConfigError(
            f"{where}.signature.param: {sig.param} is also a mapped or kept parameter"
        )
    return Compiled(
        profile=profile,
        user=lower(profile.user),
        transaction=lower(profile.transaction),
        amount=lower(profile.amount),
        status=lower(profile.status),
        params=params,
        required=tuple(lower(r) for r in profile.required),
        template=template,
        signature_param=signature_param,
        signature_header=sig.header if sig.kind != "none" else "",
        signs_amount_by_template=("param", lower(profile.amount)) in template,
        link=lower(profile.link),
    )


def profile_of(provider: settings.Provider, server: settings.Server, where: str) -> Compiled:
    """The provider's checked profile; ConfigError naming the key when it is not one."""
    location = f"config: {where}.profile"
    if provider.protocol != CUSTOM:
        try:
            decode(_builtin(provider.protocol), f"profile service/profiles/{provider.protocol}")
        except settings.ConfigError as exc:
            raise settings.ConfigError(f"built-in {exc}") from None
    profile = decode(raw_profile(provider, where), location)
    compiled = compile_profile(profile, location, server.public_url)
    if compiled.needs_secret and not provider.secret_list():
        raise settings.ConfigError(
            f"config: {where}.secret: the profile's signature (kind"
            f" {compiled.signature.kind}) needs a secret (or secrets)"
        )
    return compiled


def check_provider(provider: settings.Provider, server: settings.Server, where: str) -> None:
    profile_of(provider, server, where)


# --- signing --------------------------------------------------------------------------------------


def _php_quote(text: str) -> str:
    # PHP's urlencode (http_build_query's default): every byte but A-Z a-z 0-9 - _ . escaped,
    # and a space as "+".
    return quote(text, safe=" ").replace("~", "%7E").replace(" ", "+")


def sorted_query(pairs: Iterable[tuple[str, str]], signature_param: str) -> str:
    """Every parameter but the signature, sorted by name, as PHP's http_build_query."""
    kept = sorted((n, v) for n, v in pairs if n.lower() != signature_param)
    return "&".join(f"{_php_quote(n)}={_php_quote(v)}" for n, v in kept)


def url_without(raw_path: str, signature_param: str) -> str:
    """The path and query as received, minus the signature parameter."""
    path, mark, query = raw_path.partition("?")
    if not mark:
        return path
    kept = [
        part
        for part in query.split("&")
        if unquote_plus(part.partition("=")[0]).lower() != signature_param
    ]
    rest = "&".join(kept)
    return f"{path}?{rest}" if rest else path


def encode_digest(digest: bytes, encoding: str) -> str:
    if encoding == "hex":
        return digest.hex()
    if encoding == "base64":
        return base64.b64encode(digest).decode()
    return base64.urlsafe_b64encode(digest).decode()


def sign(sig: Signature, message: bytes, secret: str) -> str:
    """The signature of `message` (for a hash with a template, the secret is already in it)."""
    algorithm = ALGORITHMS[sig.algorithm]
    if sig.kind == "hmac":
        digest = hmac.new(secret.encode("utf-8"), message, algorithm).digest()
    else:
        digest = algorithm(message).digest()
    return encode_digest(digest, sig.encoding)


def same_signature(expected: str, received: str, encoding: str) -> bool:
    """Constant-time: hex in either case, base64 and base64url with or without padding."""
    if encoding == "hex":
        return same_secret(expected, received.lower())
    return same_secret(expected.rstrip("="), received.rstrip("="))


def template_text(pieces: Iterable[Piece], values: Mapping[str, str], secret: str) -> str:
    parts = []
    for kind, name in pieces:
        if kind == "text":
            parts.append(name or "")
        elif kind == "secret":
            parts.append(secret)
        else:
            assert name is not None
            parts.append(values.get(name, ""))
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class Message:
    """What a request's signature is computed over, once the secret is known."""

    text: Callable[[str], bytes]  # the secret -> the signed bytes
    values: tuple[str, ...]  # what the ledger keeps a digest of (replays)
    covers_amount: bool


def message(
    compiled: Compiled,
    inbound: Inbound,
    found: Mapping[str, str],
    pairs: list[tuple[str, str]],
    public_url: str,
) -> Message:
    sig = compiled.signature
    hashed = sig.kind == "hash"
    if sig.over == "template":
        values = tuple(found.get(n or "", "") for k, n in compiled.template if k == "param")
        return Message(
            lambda secret: template_text(compiled.template, found, secret).encode("utf-8"),
            values,
            compiled.signs_amount_by_template,
        )
    if sig.over == "body":
        body = inbound.body
        body_names = {n.lower() for n, _ in pairs[len(inbound.query) :]}
        return Message(
            lambda secret: body + secret.encode("utf-8") if hashed else body,
            (body.decode("utf-8", "replace"),),
            compiled.amount in body_names,
        )
    if sig.over == "url":
        signed = public_url.rstrip("/") + url_without(inbound.raw_path, compiled.signature_param)
        query_names = {n.lower() for n, _ in inbound.query}
        covers = compiled.amount in query_names
    else:
        signed = sorted_query(pairs, compiled.signature_param)
        covers = True
    data = signed.encode("utf-8")
    return Message(
        lambda secret: data + secret.encode("utf-8") if hashed else data, (signed,), covers
    )


# --- the engine -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ProfileWall:
    """The protocol of one provider with a profile (the shape of `base.WallProtocol`)."""

    compiled: Compiled
    public_url: str = ""
    SECRET_PARAMS: frozenset[str] = field(default=frozenset())
    REQUIRED_SETTINGS: tuple[str, ...] = ()
    IDENTITY: tuple[str, str] = ("", "")

    @classmethod
    def of(cls, compiled: Compiled, public_url: str = "") -> ProfileWall:
        secret = frozenset({compiled.signature_param} if compiled.signature_param else ())
        return cls(compiled, public_url, secret, (), (compiled.user, compiled.transaction))

    @property
    def names_transaction(self) -> bool:
        """Whether an answer's body names the request's transaction (ironSource's
        `<EVENT_ID>:OK`)."""
        a = self.compiled.profile.answers
        replies = (a.ok, a.duplicate, a.refused, a.invalid, a.acknowledged)
        return any("{transaction}" in r.body for r in replies)

    @property
    def reversal_endpoint(self) -> bool:
        return self.compiled.profile.reversal_endpoint

    def normalise(self, provider: settings.Provider, inbound: Inbound) -> Postback:
        c, p = self.compiled, self.compiled.profile
        if inbound.method not in p.methods:
            raise Invalid(f"method {inbound.method} not accepted: use {' or '.join(p.methods)}")
        pairs = raw_pairs(inbound)
        every = named(pairs)
        part = self._signed_part(pairs, len(inbound.query))
        found = every if part is pairs else named(part)  # checked once on the hot path
        needed = [c.user, c.transaction, c.amount]
        if c.status and p.credit and "" not in p.credit and not inbound.reversal:
            needed.append(c.status)  # `""` among the credit values: an absent status credits
        require(found, [*needed, *c.required])
        signed, covers_amount = self._authenticate(provider, inbound, every, pairs)

        status = found.get(c.status, "") if c.status else ""
        if status and status in p.pending:
            raise Acknowledged(PENDING_DETAIL, p.answers.acknowledged.status)
        test = bool(status) and status in p.test
        if inbound.reversal:
            reversal = True
        elif status and status in p.reversal:
            reversal = True
        elif not c.status or not p.credit or status in p.credit or test:
            reversal = False  # with `credit = []`, every status not listed otherwise credits
        else:
            if p.status_detail:
                raise Invalid(p.status_detail)
            known = [v or "(absent)" for v in (*p.credit, *p.reversal, *p.test, *p.pending)]
            raise Invalid(f"{c.status} must be one of {', '.join(known)}")

        amount_text = found[c.amount]
        if p.negative_reverses and amount_text.startswith("-"):
            amount_text, reversal = amount_text[1:], True
        try:
            amount = parse_amount(amount_text)
        except AmountError as exc:
            raise Invalid(f"{c.amount} {exc}") from None

        transaction = bounded(found, c.transaction)
        if reversal and p.reversal_prefix:
            transaction = transaction.removeprefix(p.reversal_prefix)
            if not transaction:
                raise Invalid(f"{c.transaction} has nothing after the reversal prefix")
        user = bounded(found, c.user)
        data: dict[str, Any] = {
            name: bounded(found, name, MAX_TEXT_LENGTH) for name in c.params if found.get(name)
        }
        if reversal and c.link and found.get(c.link):
            # Its credit's transaction, named by a signed parameter: the settlements pair them.
            data["link"] = bounded(found, c.link)
        if reversal and not covers_amount:
            # The signature does not cover the amount: a reversal takes back the whole credit,
            # whatever amount it names, so a forged one cannot pre-empt the real chargeback.
            data[WHOLE] = True
        kind = "reversal" if reversal else "credit"
        return Postback(
            provider=provider.name,
            key=f"{'test-' if test else ''}{kind}:{transaction}",
            type=EventType.REVERSED if reversal else EventType.CREDITED,
            user_id=user,
            amount=amount,
            provider_ref=transaction,
            test=test,
            data=data,
            signed=signed,
        )

    def _signed_part(self, pairs: list[tuple[str, str]], in_query: int) -> list[tuple[str, str]]:
        """The parameters read: over the URL only the query's, over the body only the body's,
        so that no value is read from a part of the request the signature does not cover."""
        over = self.compiled.signature.over
        if self.compiled.signature.kind not in ("hash", "hmac") or over in (
            "template",
            "sorted_query",
        ):
            return pairs
        if over == "url":
            return pairs[:in_query]
        signature = self.compiled.signature_param
        return [(n, v) for n, v in pairs[in_query:] if n.lower() != signature]

    def _authenticate(
        self,
        provider: settings.Provider,
        inbound: Inbound,
        found: Mapping[str, str],
        pairs: list[tuple[str, str]],
    ) -> tuple[Signed | None, bool]:
        """The signature's digests for the write path, and whether it covers the amount."""
        c = self.compiled
        sig = c.signature
        if sig.kind == "none":
            return None, False
        if c.signature_header:
            wanted = c.signature_header.lower()
            received = next((v for n, v in inbound.headers if n.lower() == wanted), "")
        else:
            received = found.get(c.signature_param, "")
        if not received:
            raise Unauthenticated("signature", "missing signature")
        if sig.kind == "secret":
            if not signed_with(provider, lambda secret: same_secret(secret, received)):
                raise Unauthenticated("signature", "invalid secret")
            return None, False
        signed = message(c, inbound, found, pairs, self.public_url)
        if not signed_with(
            provider,
            lambda secret: same_signature(
                sign(sig, signed.text(secret), secret), received, sig.encoding
            ),
        ):
            raise Unauthenticated("signature", "invalid signature")
        return Signed.of(received, *signed.values), signed.covers_amount

    def answer(self, outcome: Outcome, detail: str) -> Answer:
        return self.reply("", outcome, detail)

    def answering(self, inbound: Inbound) -> Callable[[Outcome, str], Answer]:
        """The answers to this request (their body may name its transaction)."""
        if not self.names_transaction:
            return self.answer  # nothing of the request to read: not on every postback
        try:
            transaction = named(raw_pairs(inbound)).get(self.compiled.transaction, "")
        except Refused:
            transaction = ""
        return functools.partial(self.reply, transaction[:MAX_ID_LENGTH])

    def reply(self, transaction: str, outcome: Outcome, detail: str) -> Answer:
        answers = self.compiled.profile.answers
        match outcome:
            case Outcome.DUPLICATE | Outcome.CONFLICT:
                reply = answers.duplicate
            case Outcome.IGNORED:
                reply = answers.acknowledged
            case Outcome.REJECTED:
                reply = answers.refused
            case Outcome.INVALID:
                reply = answers.invalid
            case Outcome.UNAVAILABLE:
                return plain(503, "database unavailable, retry later")
            case Outcome.SHED:
                return plain(503, "overloaded, retry later")
            case _:
                reply = answers.ok
        if not reply.body:
            body = detail if outcome in (Outcome.REJECTED, Outcome.INVALID) else ""
        else:
            if "json" in reply.content_type:
                transaction = json.dumps(transaction)[1:-1]
            body = reply.body.replace("{transaction}", transaction)
        return Answer(reply.status, body, reply.content_type)

    def loggable(self, inbound: Inbound) -> dict[str, str]:
        return base_loggable(inbound, self.SECRET_PARAMS)


# --- building postbacks as the wall would (simulate, tests) ---------------------------------------


@dataclass(frozen=True, slots=True)
class Built:
    method: str
    path: str  # with the query, percent-encoded as sent
    headers: dict[str, str]
    body: bytes
    content_type: str

    def inbound(self, reversal: bool = False) -> Inbound:
        """The request as the engine sees it once received."""
        _, _, query = self.path.partition("?")
        return Inbound(
            method=self.method,
            query=tuple(parse_qsl(query, keep_blank_values=True)),
            content_type=self.content_type,
            body=self.body,
            client_ip=None,
            headers=tuple(self.headers.items()),
            raw_path=self.path,
            reversal=reversal,
        )


def _query(pairs: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in pairs)


def build(
    compiled: Compiled,
    *,
    name: str,
    secret: str,
    user: str,
    amount: str,
    transaction: str,
    reverse: bool = False,
    token: str = "",
    public_url: str = "",
    values: Mapping[str, str] | None = None,
) -> Built:
    """The postback the wall would send for this credit (or reversal), signed with `secret`."""
    p = compiled.profile
    params: dict[str, str] = {
        compiled.user: user,
        compiled.transaction: transaction,
        compiled.amount: amount,
    }
    path = f"/postbacks/{name}" + (f"/{token}" if token else "")
    if reverse:
        if p.reversal_endpoint:
            path += "/reversal"
        elif p.reversal and compiled.status:
            params[compiled.status] = p.reversal[0]
        elif not p.negative_reverses:
            raise ValueError("this profile has no way to send a reversal")
        if p.negative_reverses and not p.reversal_endpoint:
            params[compiled.amount] = f"-{amount}"
        if p.reversal_prefix:
            params[compiled.transaction] = p.reversal_prefix + transaction
    if compiled.status and compiled.status not in params and p.credit:
        params[compiled.status] = p.credit[0]
    for key, value in {**p.simulate.values, **(values or {})}.items():
        params.setdefault(key.lower(), value)
    for key in compiled.required:
        if key != compiled.signature_param:
            params.setdefault(key, "1")
    pairs = list(params.items())

    method = p.methods[0]
    sig = compiled.signature
    in_query = method == "GET" or (sig.over == "url" and sig.kind in ("hash", "hmac"))
    query = _query(pairs) if in_query else ""
    body = b""
    content_type = ""
    if not in_query:
        if p.simulate.body == "json":
            body, content_type = json.dumps(dict(pairs)).encode(), "application/json"
        else:
            body, content_type = urlencode(pairs).encode(), "application/x-www-form-urlencoded"
    headers: dict[str, str] = {}
    if sig.kind != "none":
        if sig.kind == "secret":
            signature = secret
        else:
            hashed = sig.kind == "hash"
            if sig.over == "template":
                text = template_text(compiled.template, params, secret if hashed else "")
                data = text.encode("utf-8")
            elif sig.over == "body":
                data = body
            elif sig.over == "url":
                data = (public_url.rstrip("/") + path + (f"?{query}" if query else "")).encode()
            else:
                data = sorted_query(pairs, compiled.signature_param).encode()
            if hashed and sig.over != "template":
                data += secret.encode("utf-8")
            signature = sign(sig, data, secret)
        if compiled.signature_header:
            headers[compiled.signature_header] = signature
        elif in_query or sig.over == "body":
            query = "&".join(filter(None, (query, _query([(sig.param, signature)]))))
        elif p.simulate.body == "json":
            body = json.dumps({**dict(pairs), sig.param: signature}).encode()
        else:
            body = urlencode([*pairs, (sig.param, signature)]).encode()
    return Built(method, path + (f"?{query}" if query else ""), headers, body, content_type)
