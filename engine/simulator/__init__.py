"""Faithful local simulators of Constant Contact's APIs, one folder per dialect.

`v1/` simulates the retired v1 XML API and `v3/` today's V3 REST API with its OAuth2 server.
Shared by both: `_server` (sockets, https from a private CA), `_shared` (request counters,
state files, the serve-until-signalled loop), `_throttle` (token buckets and the daily quota),
`_faults` (seeded latency, 5xx, resets and lost answers), `_activities` (the background
activity runner) and `testing` (helpers for tests that serve a simulator from a thread);
`cli` runs either (`simulate --api v1|v3`). Each dialect keeps its routes, its account rules
and the shapes of its answers.

The v1 names stay here, as before: `serve(config)` runs it on real sockets (https with a
private CA); `create_app(config)` builds the bare aiohttp application; `AccountStore` is the
account it serves, for seeding and inspection.
"""

from __future__ import annotations

from .v1 import AccountStore, RunningSimulator, SimulatorConfig, create_app, serve

__all__ = ["AccountStore", "RunningSimulator", "SimulatorConfig", "create_app", "serve"]
