"""Run the simulator on real sockets, with https from a private certificate authority."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trustme
from aiohttp import web

from .app import STORE_KEY, create_app
from .config import SimulatorConfig
from .store import AccountStore

__all__ = ["RunningSimulator", "serve", "server_tls"]


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


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


#: The CA's files in `ca_dir`: its certificate (what clients trust) and its key.
CA_FILE = "ctct-simulator-ca.pem"
CA_KEY_FILE = "ctct-simulator-ca.key"


def _certificate_authority(ca_dir: Path, keep: bool) -> trustme.CA:
    """The CA found in `ca_dir` when `keep` and both its files are there, else a new one
    (saved there when `keep`, its key readable by the owner only).

    A kept CA is what lets a client that trusts its file talk to the simulator after a
    restart (a new CA on every start would break every running https client).
    """
    cert_path, key_path = ca_dir / CA_FILE, ca_dir / CA_KEY_FILE
    if keep and cert_path.is_file() and key_path.is_file():
        return trustme.CA.from_pem(cert_path.read_bytes(), key_path.read_bytes())
    ca = trustme.CA(organization_name="ctct v1 simulator")
    if keep:
        ca_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(ca.private_key_pem.bytes())
    return ca


def _server_tls(host: str, ca_dir: Path, *, keep: bool = False) -> tuple[ssl.SSLContext, Path]:
    """A CA (the one kept in `ca_dir` with `keep`), a server certificate for loopback
    names, and the CA file for clients."""
    ca = _certificate_authority(ca_dir, keep)
    names = ["127.0.0.1", "localhost", "::1"]
    if host not in names and host not in ("0.0.0.0", "::", ""):
        names.append(host)
    cert = ca.issue_cert(*names)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_dir.mkdir(parents=True, exist_ok=True)
    ca_path = ca_dir / CA_FILE
    ca.cert_pem.write_to_path(str(ca_path))
    return context, ca_path


def server_tls(
    stack: contextlib.ExitStack, host: str, tls: bool, ca_dir: Path | None
) -> tuple[ssl.SSLContext | None, Path | None]:
    """The server's TLS context and the CA file clients trust, for either simulator.

    Args:
        stack: Owns the temporary CA folder (removed when it closes) when `ca_dir` is `None`.
        host: The address served, named in the certificate besides the loopback names.
        tls: `False` gives `(None, None)`: plain http.
        ca_dir: The folder of a kept CA (made there the first time), or `None`.
    """
    if not tls:
        return None, None
    if ca_dir is not None:
        return _server_tls(host, Path(ca_dir), keep=True)
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="ctct-sim-"))
    return _server_tls(host, Path(tmp), keep=False)


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
            sock = stack.enter_context(_bind(config.host, config.port))
            await web.SockSite(runner, sock, ssl_context=ssl_context).start()
            host = _url_host(config.host)
            scheme = "https" if config.tls else "http"
            port = sock.getsockname()[1]
            origin = f"{scheme}://{host}:{port}"
            http_base_url = None
            if config.tls and config.http_port is not None:
                plain = stack.enter_context(_bind(config.host, config.http_port))
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
