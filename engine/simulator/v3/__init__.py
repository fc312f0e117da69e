"""A faithful local simulator of Constant Contact's V3 REST API (JSON, OAuth2).

`serve(config)` runs it on real sockets (https with the v1 simulator's private-CA approach):
the API under `/v3/`, its own OAuth2 authorization server under `/oauth2/default/v1/`, the
device verification page `/activate`, and test hooks under `/_sim/`. `create_app(config)`
builds the bare aiohttp application; `AccountStore` is the account it serves, for seeding
and inspection (its `writes` log shows every write request, so a test can prove that a
client never called `sign_up_form` or a destructive endpoint).
"""

from __future__ import annotations

from .app import create_app
from .config import SimulatorConfig
from .oauth import AuthServer, TokenSet
from .server import RunningSimulator, serve
from .store import DESTRUCTIVE_ENDPOINTS, AccountStore, WriteRecord

__all__ = [
    "DESTRUCTIVE_ENDPOINTS",
    "AccountStore",
    "AuthServer",
    "RunningSimulator",
    "SimulatorConfig",
    "TokenSet",
    "WriteRecord",
    "create_app",
    "serve",
]
