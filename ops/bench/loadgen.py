"""The load generator: keep-alive HTTP/1.1 connections driven by asyncio, closed or open loop.

Closed loop (`closed_loop`): every connection sends its next request as soon as the previous
answer arrives; the figure is the count of 2xx answers (200, or 201 for a debit) per second.
Open loop (`open_loop`): request i is due at start + i / rate whatever happened before, and its
latency counts from that due time, so a slow answer that delays the requests behind it shows up
in their latency too (no coordinated omission).

Two clients with one interface. `raw` (the default) writes pre-encoded requests on asyncio
transports and reads just the status line and the body length: on a 2-core machine the load
generator shares the CPU with the server and the database, and this one costs a fraction of
aiohttp's client. `aiohttp` is aiohttp's ClientSession (TCPConnector(limit=clients),
keep-alive), for comparison.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import aiohttp


@dataclass(frozen=True, slots=True)
class Request:
    path: str  # path and query string
    wire: bytes  # the whole request, as the raw client writes it
    method: str = "GET"
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()  # of this request alone (the aiohttp client's)


def request(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    body: bytes = b"",
    own: dict[str, str] | None = None,
) -> Request:
    """A request; `headers` are shared by every request (the aiohttp client sends them from its
    session), `own` are this request's alone (an Idempotency-Key)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in {**(headers or {}), **(own or {})}.items()]
    if body or method != "GET":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    wire = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    return Request(path, wire, method, body, tuple((own or {}).items()))


def succeeded(status: str) -> bool:
    """A 2xx answer (the status as `_fetch` gives it: a number, or an exception's name)."""
    return len(status) == 3 and status.startswith("2") and status.isdigit()


class Requests(Protocol):
    """What the open loop sends: a list, or a sequence that makes each request when asked."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int, /) -> Request: ...


class Connection(Protocol):
    async def fetch(self, req: Request) -> int: ...


@dataclass
class Result:
    """What one measurement saw inside its window (warm-up excluded)."""

    seconds: float
    ok: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, open loop only
    ok_items: list[int] = field(default_factory=list)  # indices answered 2xx (warm-up too)
    exhausted: bool = False  # ran out of pre-generated requests
    window: tuple[float, float] = (0.0, 0.0)  # wall-clock (time.time()) start and end
    served_ms: list[float] = field(default_factory=list)  # the server's own timings, if known
    client_cpu: float = 0.0  # CPU seconds of this process per second of the window
    cpu: dict[str, float] = field(default_factory=dict)  # cores used by the servers, if known
    rss: dict[int, float] = field(default_factory=dict)  # max RSS (MiB) of each server worker

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if not succeeded(status))

    def error_text(self) -> str:
        return ", ".join(f"{n} x {s}" for s, n in sorted(self.statuses.items()) if not succeeded(s))

    def percentile(self, share: float) -> float:
        """Nearest-rank percentile of the latencies, in milliseconds."""
        return percentile(self.latencies, share) * 1000


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile; NaN when there is no value."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))]


def _wall(perf: float) -> float:
    """The wall-clock time of a perf_counter() reading (to match the server's log)."""
    return time.time() + (perf - time.perf_counter())


# --- the raw client ------------------------------------------------------------------------------


class _RawProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionResetError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            status = self._parse()
        except ValueError as exc:
            self.waiter.set_exception(exc)
            return
        if status is not None:
            self.waiter.set_result(status)

    def _parse(self) -> int | None:
        """The status of the complete answer at the front of the buffer (then dropped)."""
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).lower()
        status = int(head[9:12])
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(buf) < total:
                return None
            del buf[:total]
        elif b"\r\ntransfer-encoding: chunked" in head:
            last = buf.find(b"\r\n0\r\n\r\n", end)
            if last < 0:
                return None  # good enough for aiohttp's chunks, which never look like that
            del buf[: last + 7]
        else:
            raise ValueError("answer without a length")
        if b"\r\nconnection: close" in head:
            self.closed = True
        return status


class RawConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._proto: _RawProtocol | None = None

    async def _open(self) -> _RawProtocol:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_RawProtocol, self.host, self.port)
        return proto

    async def fetch(self, req: Request) -> int:
        proto = self._proto
        if proto is None or proto.closed:
            if proto is not None and proto.transport is not None:
                proto.transport.close()
            proto = self._proto = await self._open()
        assert proto.transport is not None
        proto.waiter = asyncio.get_running_loop().create_future()
        proto.transport.write(req.wire)
        try:
            return await proto.waiter
        except BaseException:
            proto.transport.close()
            self._proto = None
            raise

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()


# --- aiohttp's client ----------------------------------------------------------------------------


class AiohttpConnection:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def fetch(self, req: Request) -> int:
        # Request.wire holds the headers too; here the shared ones come from the session.
        async with self.session.request(
            req.method,
            self.base + req.path,
            data=req.body if req.method != "GET" else None,
            headers={"Content-Type": "application/json", **dict(req.headers)}
            if req.method != "GET"
            else None,
        ) as resp:
            await resp.read()
            return resp.status


class Clients:
    """`n` keep-alive connections to host:port with the chosen client."""

    def __init__(self, kind: str, host: str, port: int, n: int, headers: dict[str, str]) -> None:
        self.kind, self.host, self.port, self.n, self.headers = kind, host, port, n, headers
        self.session: aiohttp.ClientSession | None = None
        self.connections: list[Any] = []

    async def __aenter__(self) -> list[Connection]:
        if self.kind == "aiohttp":
            connector = aiohttp.TCPConnector(limit=self.n, force_close=False)
            self.session = aiohttp.ClientSession(
                connector=connector,
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=60),
                skip_auto_headers=("User-Agent",),
            )
            base = f"http://{self.host}:{self.port}"
            self.connections = [AiohttpConnection(self.session, base) for _ in range(self.n)]
        else:
            self.connections = [RawConnection(self.host, self.port) for _ in range(self.n)]
        return list(self.connections)

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        for conn in self.connections:
            if isinstance(conn, RawConnection):
                conn.close()


async def _fetch(conn: Connection, req: Request) -> str:
    try:
        async with asyncio.timeout(60):
            return str(await conn.fetch(req))
    except (OSError, ValueError, TimeoutError, aiohttp.ClientError) as exc:
        return type(exc).__name__


async def closed_loop(
    conns: list[Connection], items: list[Request], warmup: float, duration: float
) -> Result:
    """Each connection sends back to back; counts answers completed inside the window."""
    result = Result(seconds=duration)
    indices = iter(range(len(items)))
    now = time.perf_counter()
    start, end = now + warmup, now + warmup + duration
    result.window = (_wall(start), _wall(end))
    cpu: list[float] = []

    async def worker(conn: Connection) -> None:
        while (now := time.perf_counter()) < end:
            if now >= start and not cpu:
                cpu.append(time.process_time())
            i = next(indices, None)
            if i is None:
                result.exhausted = True
                return
            status = await _fetch(conn, items[i])
            done = time.perf_counter()
            if succeeded(status):
                result.ok_items.append(i)
            if start <= done < end:
                result.statuses[status] += 1
                if succeeded(status):
                    result.ok += 1

    await asyncio.gather(*(worker(c) for c in conns))
    cpu_end = time.process_time()
    result.client_cpu = (cpu_end - cpu[0]) / duration if cpu else 0.0
    return result


async def open_loop(
    conns: list[Connection], items: Requests, rate: float, warmup: float, duration: float
) -> Result:
    """Request i is due at t0 + i / rate; latencies count from the due time. `items` may make
    each request when it is asked for (the soak's are too many to hold)."""
    result = Result(seconds=duration)
    total = min(len(items), int(rate * (warmup + duration)))
    result.exhausted = total < int(rate * (warmup + duration))
    counter = itertools.count()
    t0 = time.perf_counter() + 0.05
    start = t0 + warmup
    result.window = (_wall(start), _wall(start + duration))
    cpu: list[float] = []

    async def worker(conn: Connection) -> None:
        while (i := next(counter)) < total:
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if due >= start and not cpu:
                cpu.append(time.process_time())
            status = await _fetch(conn, items[i])
            latency = time.perf_counter() - due
            if due >= start:
                result.statuses[status] += 1
                if succeeded(status):
                    result.ok += 1
                    result.latencies.append(latency)

    await asyncio.gather(*(worker(c) for c in conns))
    # The window is the due times of its requests; answers may arrive after it ends.
    result.client_cpu = (time.process_time() - cpu[0]) / duration if cpu else 0.0
    return result
