"""A TCP proxy in front of PostgreSQL that can cut, stall or slow it: outages and slow databases
for the chaos scenarios and the test suite."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit, urlunsplit


class DatabaseProxy:
    """Forwards 127.0.0.1:<port> to the server of `dsn` (TCP or Unix socket).

    `cut()` drops every connection and refuses new ones, as a crashed or stopped server would;
    `stall()` keeps connections open but forwards nothing, as a network partition would;
    `restore()` lets traffic through again. With `delay`, every chunk is held that many seconds
    in each direction: a database whose round trips are slow.
    """

    def __init__(self, dsn: str, delay: float = 0.0) -> None:
        self._dsn, self._delay = dsn, delay
        parts = urlsplit(dsn)
        host = parts.hostname or parse_qs(parts.query).get("host", ["/tmp"])[0]
        self._upstream_port = parts.port or 5432
        self._socket = f"{host}/.s.PGSQL.{self._upstream_port}" if host.startswith("/") else None
        self._upstream_host = host
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.mode = "up"
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(self._dsn)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
        query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("host="))
        return urlunsplit(parts._replace(netloc=netloc, query=query))

    def cut(self) -> None:
        self.mode = "down"
        self._flowing.set()
        for writer in list(self._writers):
            writer.close()

    def stall(self) -> None:
        self.mode = "stalled"
        self._flowing.clear()

    def restore(self) -> None:
        self.mode = "up"
        self._flowing.set()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            writer.close()
            return
        try:
            if self._socket:
                up_reader, up_writer = await asyncio.open_unix_connection(self._socket)
            else:
                up_reader, up_writer = await asyncio.open_connection(
                    self._upstream_host, self._upstream_port
                )
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while chunk := await src.read(65536):
                await self._flowing.wait()
                if self._delay:
                    await asyncio.sleep(self._delay)
                if self.mode == "down":
                    break
                dst.write(chunk)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(dst)
            with contextlib.suppress(Exception):
                dst.close()
