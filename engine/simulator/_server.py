"""What both simulators share to listen: sockets, and https from a private certificate
authority (trustme) that clients trust by its file."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import tempfile
from pathlib import Path

import trustme

__all__ = ["CA_FILE", "CA_KEY_FILE", "bind", "server_tls", "url_host"]


def bind(host: str, port: int) -> socket.socket:
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


def url_host(host: str) -> str:
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
