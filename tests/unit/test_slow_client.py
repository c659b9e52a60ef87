"""The slow-client harness records when the server ends a connection, whether it ends it with
FIN or with RST (a close with unread bytes in the socket: a byte trickled after the server's last
read)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from ops.chaos.overload import Slow, slow_client


async def closing_server(reset: bool) -> tuple[asyncio.Server, int]:
    """Answers 408 once a head has arrived, waits for more bytes, and closes the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)  # the client trickles bytes meanwhile; none is read
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_a_closed_connection_is_recorded_however_the_server_ends_it(reset: bool) -> None:
    server, port = await closing_server(reset)
    slow = Slow("slow-body")
    try:
        await asyncio.wait_for(slow_client("127.0.0.1", port, slow, 0.05, 5.0), 10)
    finally:
        server.close()
    assert slow.answer.startswith("HTTP/1.1 408"), slow.answer
    assert slow.closed is not None, slow.error
    assert slow.closed - slow.opened < 2.0
    assert slow.error == ("ConnectionResetError" if reset else "")
