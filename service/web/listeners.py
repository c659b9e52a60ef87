"""Two listeners: what the walls' address and the internal address each answer.

With `[server.internal]` configured, the walls' listener (`[server]`, the address exposed to the
internet) answers only the postback endpoints and /healthz, and the internal listener answers the
API, /metrics and the probes. Any other path answers 404 on each, exactly like a path that does
not exist, so neither side reveals the other's routes. A request's listener is told by the local
port of its connection, which is why the two ports must differ.

To serve a new route on one side, add it in `routes.py` under a path these tuples cover (a path
ending in "/" covers everything below it); the operator pages under /ui/ are internal already.
"""

from __future__ import annotations

from aiohttp import web

WALLS_PATHS = ("/postbacks/", "/healthz")
INTERNAL_PATHS = ("/v1/", "/metrics", "/healthz", "/readyz", "/ui/")


def covers(paths: tuple[str, ...], path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in paths)


def serves(request: web.Request, internal_port: int) -> bool:
    """Whether the listener `request` came in on serves its path."""
    transport = request.transport
    local = transport.get_extra_info("sockname") if transport is not None else None
    internal = isinstance(local, tuple) and len(local) >= 2 and local[1] == internal_port
    return covers(INTERNAL_PATHS if internal else WALLS_PATHS, request.path)
