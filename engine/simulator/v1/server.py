"""Run the simulator on real sockets, with https from a private certificate authority."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .._server import bind, server_tls, url_host
from .app import STORE_KEY, create_app
from .config import SimulatorConfig
from .store import AccountStore

__all__ = ["RunningSimulator", "serve"]


@dataclass(frozen=True, slots=True)
class RunningSimulator:
    """A simulator that is listening.

    Attributes:
        base_url: The API base, with its trailing slash, e.g.
            `https://127.0.0.1:40123/ws/customers/demo/`.
        ca_path: PEM file of the CA that signed the server certificate (`None` without TLS);
            trust it with `ssl.create_default_context(cafile=...)`.
        store: The served account; tests seed and inspect it directly.
        config: The settings in force.
        stats_url: `GET` for request counters as JSON, `DELETE` to reset them.
        http_base_url: The API base on the plain-http listener that refuses everything, or
            `None` when there is no such listener.
    """

    base_url: str
    ca_path: Path | None
    store: AccountStore
    config: SimulatorConfig
    stats_url: str
    http_base_url: str | None = None


@asynccontextmanager
async def serve(
    config: SimulatorConfig, store: AccountStore | None = None
) -> AsyncIterator[RunningSimulator]:
    """Serve the simulator until the block exits.

    Args:
        config: Settings: host, port (0 = a free port), TLS, faults….
        store: The account to serve; a new empty one by default.

    Yields:
        The `RunningSimulator` with the real port in its URLs.

    With TLS on, the CA kept in `config.ca_dir` is used (one is made and kept there the first
    time), or a new CA in a temporary folder (removed on exit). Runner, sites and background
    tasks are cleaned up on exit.
    """
    app = create_app(config, store)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    with contextlib.ExitStack() as stack:
        try:
            ssl_context, ca_path = server_tls(stack, config.host, config.tls, config.ca_dir)
            sock = stack.enter_context(bind(config.host, config.port))
            await web.SockSite(runner, sock, ssl_context=ssl_context).start()
            host = url_host(config.host)
            scheme = "https" if config.tls else "http"
            port = sock.getsockname()[1]
            origin = f"{scheme}://{host}:{port}"
            http_base_url = None
            if config.tls and config.http_port is not None:
                plain = stack.enter_context(bind(config.host, config.http_port))
                await web.SockSite(runner, plain).start()
                http_base_url = (
                    f"http://{host}:{plain.getsockname()[1]}/ws/customers/{config.username}/"
                )
            yield RunningSimulator(
                base_url=f"{origin}/ws/customers/{config.username}/",
                ca_path=ca_path,
                store=app[STORE_KEY],
                config=config,
                stats_url=f"{origin}/_sim/stats",
                http_base_url=http_base_url,
            )
        finally:
            await runner.cleanup()
