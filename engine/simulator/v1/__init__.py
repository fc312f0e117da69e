"""A faithful local simulator of the retired Constant Contact v1 XML API.

`serve(config)` runs it on real sockets (https with a private CA); `create_app(config)` builds
the bare aiohttp application; `AccountStore` is the account it serves, for seeding and
inspection.
"""

from __future__ import annotations

from .app import create_app
from .config import SimulatorConfig
from .server import RunningSimulator, serve
from .store import AccountStore

__all__ = ["AccountStore", "RunningSimulator", "SimulatorConfig", "create_app", "serve"]
