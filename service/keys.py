"""Every typed application key."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from .feed import FeedSignal
from .settings import Settings
from .web.auth import ApiKeys
from .web.walls import Walls
from .writer import Writer

SETTINGS = web.AppKey("settings", Settings)
MIGRATE = web.AppKey("migrate", bool)  # whether start-up applies the schema
POOL = web.AppKey("pool", asyncpg.Pool)
WRITER = web.AppKey("writer", Writer)
WALLS = web.AppKey("walls", Walls)
API_KEYS = web.AppKey("api_keys", ApiKeys)
FEED = web.AppKey("feed", FeedSignal)
