"""Every Prometheus metric of the service, defined once (CONTRACT 5).

Label values come from configuration and fixed sets only (provider names, outcomes, reasons,
event types), never from request data, so no caller can make new series.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

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
POSTBACK_DURATION = Histogram(
    "ledger_postback_duration_seconds",
    "Time to handle one postback, from request to answer",
    ["provider"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REFUSALS_UNLOGGED = Counter(
    "ledger_postback_refusals_unlogged_total",
    "Refused postbacks answered without a postback-log row because too many refusals were"
    " waiting to be logged (a flood of forgeries or malformed requests)",
    ["provider"],
)
EVENTS = Counter("ledger_events_total", "Events appended to the ledger, by type", ["type"])
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


AUTH_REASONS = ("signature", "token", "source_ip", "replay")


def initialise(providers: Iterable[str]) -> None:
    """Create every series at zero so that rates and alerts see a provider before its first
    postback (an absent series is not a zero rate)."""
    for provider in providers:
        for outcome in Outcome:
            POSTBACKS.labels(provider=provider, outcome=outcome.value)
        for reason in AUTH_REASONS:
            SIGNATURE_FAILURES.labels(provider=provider, reason=reason)
        POSTBACK_DURATION.labels(provider=provider)
        REFUSALS_UNLOGGED.labels(provider=provider)
    for event_type in EventType:
        EVENTS.labels(type=event_type.value)
