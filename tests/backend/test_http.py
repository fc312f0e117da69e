"""The shared transport's request bodies and burst pools, against a real TLS server on
127.0.0.1 (port 0)."""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import anyio
import pytest
import trustme
from aiohttp import web
from yarl import URL

from engine.backend._http import attempt, burst_pool, open_session, session_for
from engine.backend.governor import RateGovernor


@dataclass
class Received:
    """What the server was sent, one entry per request."""

    bodies: list[bytes] = field(default_factory=list)
    lengths: list[str | None] = field(default_factory=list)
    encodings: list[str | None] = field(default_factory=list)
    types: list[str | None] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)  # the client's port of each request
    open_connections: Callable[[], int] = lambda: 0


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[URL, Path, Received]]:
    """An https echo of request bodies on 127.0.0.1, its CA file, and what it received."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    received = Received()

    async def handle(request: web.Request) -> web.Response:
        received.bodies.append(await request.read())
        received.lengths.append(request.headers.get("Content-Length"))
        received.encodings.append(request.headers.get("Transfer-Encoding"))
        received.types.append(request.headers.get("Content-Type"))
        assert request.transport is not None
        received.ports.append(request.transport.get_extra_info("peername")[1])
        return web.Response(status=201, text="ok")

    app = web.Application(client_max_size=16 << 20)
    app.router.add_post("/upload", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    received.open_connections = lambda: len(runner.server.connections)  # type: ignore[union-attr]
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield URL(f"https://127.0.0.1:{port}/upload"), ca_file, received
    finally:
        await runner.cleanup()


def _chunk_spy(sizes: list[int]) -> aiohttp.TraceConfig:
    """A trace that records the size of each piece of request body handed to the connection."""

    async def on_chunk(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestChunkSentParams,
    ) -> None:
        sizes.append(len(params.chunk))

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(on_chunk)
    trace.freeze()
    return trace


async def _post(
    session: aiohttp.ClientSession, url: URL, ca_file: Path, body: bytes, content_type: str | None
) -> int:
    """One `attempt` of a POST of `body`; the answer's status."""
    answer = await attempt(
        session,
        RateGovernor(rate=None),
        "POST",
        url,
        data=body,
        headers={"Content-Type": content_type} if content_type else None,
        max_bytes=1 << 20,
        ca_file=ca_file,
    )
    return answer.status


@pytest.mark.parametrize("size", [10, 1 << 18, 3_000_001])
async def test_a_body_arrives_whole_with_its_length_and_reaches_the_connection_in_256_kib_pieces(
    server: tuple[URL, Path, Received], size: int
) -> None:
    """A body of any size is received byte for byte, with its Content-Length (never chunked
    on the wire), its Content-Type kept, and no write to the connection over 256 KiB."""
    url, ca_file, received = server
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    sizes: list[int] = []
    session = open_session(ca_file=ca_file, timeout=30, headers={})
    session.trace_configs.append(_chunk_spy(sizes))
    async with session:
        assert await _post(session, url, ca_file, body, "application/json") == 201
    assert received.bodies == [body]
    assert received.lengths == [str(size)]
    assert received.encodings == [None]
    assert received.types == ["application/json"]
    assert sum(sizes) == size
    assert max(sizes) <= 1 << 18


async def test_a_large_body_is_sent_from_its_start_on_every_attempt(
    server: tuple[URL, Path, Received],
) -> None:
    """The same large body given to two attempts (a retry) arrives whole both times."""
    url, ca_file, received = server
    body = b"0123456789abcdef" * 50_000
    async with open_session(ca_file=ca_file, timeout=30, headers={}) as session:
        for _ in range(2):
            assert await _post(session, url, ca_file, body, None) == 201
    assert received.bodies == [body, body]


async def _until(done: Callable[[], bool]) -> None:
    """Wait (5 s at most) until `done()`: the server sees a closed connection a moment later."""
    for _ in range(500):
        if done():
            return
        await anyio.sleep(0.01)
    raise AssertionError("not done within 5 s")


async def test_a_burst_pool_carries_its_owners_requests_and_closes_its_connections_at_the_end(
    server: tuple[URL, Path, Received],
) -> None:
    """Inside `burst_pool`, the owner's requests (its child tasks' too) go over connections of
    their own, all closed on the way out; another client's and later requests keep the main
    pool, whose connection stays open and is reused."""
    url, ca_file, received = server
    owner, other = object(), object()

    opener = functools.partial(open_session, ca_file=ca_file, timeout=30, headers={})
    async with opener() as main:
        assert await _post(main, url, ca_file, b"main", None) == 201
        main_port = received.ports[-1]
        async with burst_pool(owner, opener):
            burst = session_for(owner, main)
            assert burst is not main
            assert session_for(other, main) is main

            async def send() -> None:
                assert await _post(session_for(owner, main), url, ca_file, b"burst", None) == 201

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(send)
            burst_ports = received.ports[-8:]
            assert received.open_connections() == 9  # eight at once, and the main one
        assert burst.closed
        assert session_for(owner, main) is main
        assert main_port not in burst_ports
        assert len(set(burst_ports)) == 8
        await _until(lambda: received.open_connections() == 1)
        assert await _post(session_for(owner, main), url, ca_file, b"after", None) == 201
        assert received.ports[-1] == main_port


async def test_a_burst_pool_is_closed_when_its_body_fails(
    server: tuple[URL, Path, Received],
) -> None:
    """An error inside the burst still closes its session, and the owner's requests go back
    to the main pool."""
    url, ca_file, received = server
    owner = object()

    opener = functools.partial(open_session, ca_file=ca_file, timeout=30, headers={})
    bursts: list[aiohttp.ClientSession] = []

    async def fail_inside(main: aiohttp.ClientSession) -> None:
        async with burst_pool(owner, opener):
            bursts.append(session_for(owner, main))
            assert await _post(bursts[0], url, ca_file, b"burst", None) == 201
            raise RuntimeError("the probe failed")

    async with opener() as main:
        with pytest.raises(RuntimeError, match="the probe failed"):
            await fail_inside(main)
        assert bursts[0] is not main
        assert bursts[0].closed
        assert session_for(owner, main) is main
        await _until(lambda: received.open_connections() == 0)
