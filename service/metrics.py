"""Every Prometheus metric of the service, defined once (README, Operations).

Label values come from configuration and fixed sets only (provider names, outcomes, reasons,
event types), never from request data, so no caller can make new series.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from .domain.events import EventType, Outcome
from .domain.spending import Kind

# The *_created series double every counter for no use in alerting or dashboards.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream

POSTBACKS = Counter(
    "ledger_postbacks_total", "Postbacks received, by provider and outcome", ["provider", "outcome"]
)
SIGNATURE_FAILURES = Counter(
    "ledger_postback_signature_failures_total",
    "Postbacks refused by authentication, by provider and reason",
    ["provider", "reason"],
)
SECRET_USED = Counter(
    "ledger_postback_secret_used_total",
    "Authenticated postbacks by the position (1 = newest) of the secret or URL token that"
    " matched, for rotating them",
    ["provider", "secret"],
)


@functools.cache
def _secret_used(provider: str, position: int) -> Any:
    return SECRET_USED.labels(provider=provider, secret=str(position))


def secret_used(provider: str, position: int) -> None:
    """Count a postback authenticated by the provider's secret or token at `position` (from 1).
    The series is looked up once per provider and position (configuration only), not per
    postback."""
    _secret_used(provider, position).inc()


POSTBACK_DURATION = Histogram(
    "ledger_postback_duration_seconds",
    "Time to handle one postback, from request to answer",
    ["provider"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


@functools.cache
def _postbacks(provider: str, outcome: Outcome) -> Any:
    return POSTBACKS.labels(provider=provider, outcome=outcome.value)


@functools.cache
def _postback_duration(provider: str) -> Any:
    return POSTBACK_DURATION.labels(provider=provider)


def postback(provider: str, outcome: Outcome, seconds: float) -> None:
    """Count one postback answered with `outcome` after `seconds`. Each series is looked up once
    per provider and outcome (configuration and a fixed set), not per postback."""
    _postbacks(provider, outcome).inc()
    _postback_duration(provider).observe(seconds)


REFUSALS_UNLOGGED = Counter(
    "ledger_postback_refusals_unlogged_total",
    "Refused postbacks answered without a postback-log row because too many refusals were"
    " waiting to be logged (a flood of forgeries or malformed requests)",
    ["provider"],
)
EVENTS = Counter("ledger_events_total", "Events appended to the ledger, by type", ["type"])


@functools.cache
def _events(event_type: EventType) -> Any:
    return EVENTS.labels(type=event_type.value)


def event_appended(event_type: EventType) -> None:
    """Count one event appended (its series looked up once per type)."""
    _events(event_type).inc()


SPEND = Counter(
    "ledger_spend_requests_total",
    "Spending requests (debits, credits, holds), by operation and outcome",
    ["operation", "outcome"],
)
SPEND_OUTCOMES = (
    "applied",
    "replayed",  # a repeat answered with its Idempotency-Key's first answer
    "invalid",
    "insufficient_funds",
    "hold_not_found",
    "hold_not_held",
    "idempotency_key_reused",
    "overloaded",
    "unavailable",
)


@functools.cache
def _spend(operation: str, outcome: str) -> Any:
    return SPEND.labels(operation=operation, outcome=outcome)


def spend(operation: str, outcome: str, count: int = 1) -> None:
    """Count spending requests (`count` of them: an expiry releases several holds at once);
    the series is looked up once per operation and outcome (fixed sets)."""
    _spend(operation, outcome).inc(count)


NEGATIVE_WALLETS = Gauge(
    "ledger_negative_wallets",
    "Wallets whose balance is below zero (a chargeback after the user spent the credit)",
    multiprocess_mode="mostrecent",
)
NEGATIVE_BALANCE = Gauge(
    "ledger_negative_balance_total",
    "The sum of the balances below zero, as a positive number: what the publisher is owed back",
    multiprocess_mode="mostrecent",
)
SIGN_IN_OUTCOMES = ("ok", "refused")
OPERATOR_SIGN_INS = Counter(
    "ledger_operator_sign_ins_total",
    "Sign-ins to the operator pages, by outcome (ok, refused)",
    ["outcome"],
)
POSTBACK_LOG_OLDEST = Gauge(
    "ledger_postback_log_oldest_timestamp_seconds",
    "Unix time of the oldest postback kept in the postback log (retention drops whole days);"
    " 0 while the log is empty",
    multiprocess_mode="mostrecent",
)
DATABASE_UP = Gauge(
    "ledger_database_up",
    "1 when the database answered the last health probe, else 0",
    multiprocess_mode="livemin",  # with several workers: 0 if any live worker sees it down
)


def exposition() -> bytes:
    """The text for /metrics: this process's metrics, or every worker's under `--workers`."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


class SharedExposition:
    """The /metrics text, rendered off the event loop and shared.

    Rendering costs milliseconds of CPU (more with many series, or several workers' files to
    merge), and /metrics needs no key. So one rendering runs at a time, in a worker thread, and
    every scrape that arrives meanwhile gets its result; a finished rendering is served again
    for `max_age` seconds (`server.metrics_max_age`). A flood of scrapes then costs at most one
    rendering per `max_age` seconds per process, and none of it on the loop that answers the
    walls. Prometheus scrapes every 15 s or so, so a second-old page is as good as a new one.
    """

    def __init__(self, max_age: float) -> None:
        self._max_age = max_age
        self._body = b""
        self._rendered_at = -math.inf
        self._rendering: asyncio.Task[bytes] | None = None

    async def text(self) -> bytes:
        loop = asyncio.get_running_loop()
        if loop.time() - self._rendered_at < self._max_age:
            return self._body
        if self._rendering is None:
            self._rendering = asyncio.create_task(self._render())
        # Shielded: a scraper that goes away must not cancel the rendering the others await.
        return await asyncio.shield(self._rendering)

    async def _render(self) -> bytes:
        try:
            body = await asyncio.to_thread(exposition)
            self._body, self._rendered_at = body, asyncio.get_running_loop().time()
            return body
        finally:
            self._rendering = None


AUTH_REASONS = ("signature", "token", "source_ip", "replay")


def initialise(providers: Iterable[str], secrets: Iterable[tuple[str, int]] = ()) -> None:
    """Create every series at zero so that rates and alerts see a provider before its first
    postback (an absent series is not a zero rate). `secrets`: (provider, how many secrets or
    URL tokens it has)."""
    for provider, count in secrets:
        for position in range(1, count + 1):
            SECRET_USED.labels(provider=provider, secret=str(position))
    for provider in providers:
        for outcome in Outcome:
            POSTBACKS.labels(provider=provider, outcome=outcome.value)
        for reason in AUTH_REASONS:
            SIGNATURE_FAILURES.labels(provider=provider, reason=reason)
        POSTBACK_DURATION.labels(provider=provider)
        REFUSALS_UNLOGGED.labels(provider=provider)
    for event_type in EventType:
        EVENTS.labels(type=event_type.value)
    for operation in Kind:
        for spend_outcome in SPEND_OUTCOMES:
            SPEND.labels(operation=operation.value, outcome=spend_outcome)
    for sign_in in SIGN_IN_OUTCOMES:
        OPERATOR_SIGN_INS.labels(outcome=sign_in)
