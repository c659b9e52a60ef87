"""Every typed application key."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from .feed import FeedSignal
from .metrics import SharedExposition
from .settings import Settings
from .web.auth import ApiKeys
from .web.walls import Walls
from .writer import Writer

SETTINGS = web.AppKey("settings", Settings)
MIGRATE = web.AppKey("migrate", bool)  # whether start-up applies the schema
POOL = web.AppKey("pool", asyncpg.Pool)
WRITER = web.AppKey("writer", Writer)
# Refused postbacks' log rows: a writer of their own (see web/postbacks.py).
REFUSALS = web.AppKey("refusals", Writer)
WALLS = web.AppKey("walls", Walls)
API_KEYS = web.AppKey("api_keys", ApiKeys)
FEED = web.AppKey("feed", FeedSignal)
EXPOSITION = web.AppKey("exposition", SharedExposition)
