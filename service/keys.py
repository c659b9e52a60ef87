"""Every typed application key."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from .feed import FeedSignal
from .live import LiveConfig
from .metrics import SharedExposition
from .settings import Settings
from .writer import Writer

# The settings the process started with: what only a restart changes (the database, the
# writer...). What a reload changes (providers, API keys, trusted proxies) is read per request
# through CONFIG (`live.of(request)`), never from here.
SETTINGS = web.AppKey("settings", Settings)
CONFIG = web.AppKey("config", LiveConfig)
MIGRATE = web.AppKey("migrate", bool)  # whether start-up applies the schema
POOL = web.AppKey("pool", asyncpg.Pool)
# Where the read-only routes read: a pool on `database.read_url` (a streaming replica), or the
# same pool as POOL when none is configured. Never for a write, nor for a read that must see
# what this process just wrote (see service/web/api.py).
READ_POOL = web.AppKey("read_pool", asyncpg.Pool)
WRITER = web.AppKey("writer", Writer)
# Refused postbacks' log rows: a writer of their own (see web/postbacks.py).
REFUSALS = web.AppKey("refusals", Writer)
FEED = web.AppKey("feed", FeedSignal)
EXPOSITION = web.AppKey("exposition", SharedExposition)
