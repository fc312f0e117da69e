"""Run the V3 simulator on real sockets, with https from the same private CA as v1's."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

# The shared socket, URL and TLS helpers: one copy of the listening code for both dialects.
from .._server import bind, server_tls, url_host
from .app import AUTH_PREFIX, STORE_KEY, create_app
from .config import SimulatorConfig
from .oauth import TokenSet
from .store import AccountStore

__all__ = ["RunningSimulator", "serve"]


@dataclass(frozen=True, slots=True)
class RunningSimulator:
    """A V3 simulator that is listening.

    Attributes:
        base_url: The API base, ending in `/v3/`, e.g. `https://127.0.0.1:40123/v3/`.
        auth_url: The authorization server's base, ending in `/oauth2/default/v1/`
            (`token`, `device/authorize`, `authorize`, `revoke` are under it).
        ca_path: PEM file of the CA that signed the server certificate (`None` without TLS).
        store: The served account; tests seed and inspect it directly.
        config: The settings in force.
        stats_url: `GET` for request counters as JSON, `DELETE` to reset them.
        origin: Scheme, host and port, for the `/_sim/` hooks and `_links` hrefs.
    """

    base_url: str
    auth_url: str
    ca_path: Path | None
    store: AccountStore
    config: SimulatorConfig
    stats_url: str
    origin: str

    @property
    def token_url(self) -> str:
        """`POST` here for tokens (every grant type)."""
        return self.auth_url + "token"

    @property
    def device_url(self) -> str:
        """`POST` here to start the device flow."""
        return self.auth_url + "device/authorize"

    @property
    def writes_url(self) -> str:
        """`GET` for the write log as JSON (`{"writes": [{method, path, endpoint, status}]}`)."""
        return self.origin + "/_sim/writes"

    def issue_tokens(
        self,
        scopes: Sequence[str] | str = ("contact_data", "offline_access"),
        *,
        access_ttl: float | None = None,
    ) -> TokenSet:
        """Mint tokens as a completed login would, without the device flow."""
        names = scopes if isinstance(scopes, str) else tuple(scopes)
        return self.store.auth.issue_tokens(names, access_ttl=access_ttl)

    def approve(self, user_code: str) -> None:
        """Approve a device's user code, as the person at the verification page would."""
        self.store.auth.approve(user_code)

    def deny(self, user_code: str) -> None:
        """Deny a device's user code."""
        self.store.auth.deny(user_code)


@asynccontextmanager
async def serve(
    config: SimulatorConfig, store: AccountStore | None = None
) -> AsyncIterator[RunningSimulator]:
    """Serve the V3 simulator until the block exits.

    Args:
        config: Settings: host, port (0 = a free port), TLS, limits, faults….
        store: The account to serve; a new empty one by default. Its unfinished activities
            are run to the end.

    Yields:
        The `RunningSimulator` with the real port in its URLs.

    The CA is the one kept in `config.ca_dir`, or a new one in a temporary folder (removed on
    exit). Runner, site and background tasks are cleaned up on exit.
    """
    app = create_app(config, store)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    with contextlib.ExitStack() as stack:
        try:
            ssl_context, ca_path = server_tls(stack, config.host, config.tls, config.ca_dir)
            sock = stack.enter_context(bind(config.host, config.port))
            await web.SockSite(runner, sock, ssl_context=ssl_context).start()
            scheme = "https" if config.tls else "http"
            origin = f"{scheme}://{url_host(config.host)}:{sock.getsockname()[1]}"
            yield RunningSimulator(
                base_url=f"{origin}/v3/",
                auth_url=origin + AUTH_PREFIX,
                ca_path=ca_path,
                store=app[STORE_KEY],
                config=config,
                stats_url=f"{origin}/_sim/stats",
                origin=origin,
            )
        finally:
            await runner.cleanup()
