"""Run the simulator in its own process, so the engine's and the server's CPU are apart."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["SimulatorProcess", "simulator_process"]


@dataclass(frozen=True, slots=True)
class SimulatorProcess:
    """A simulator running as `python -m engine simulate` (`--api v1` or `--api v3`).

    Attributes:
        base_url: the API base URL it printed.
        ca_path: its CA file (None without TLS).
        pid: its process id.
        auth_url: the V3 simulator's authorization server (None for v1).
    """

    base_url: str
    ca_path: Path | None
    pid: int
    auth_url: str | None = None

    @property
    def origin(self) -> str:
        """Scheme, host and port: where the `/_sim/` hooks are, for either API."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def stats_url(self) -> str:
        """The `/_sim/stats` URL."""
        return f"{self.origin}/_sim/stats"

    def _context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.ca_path)) if self.ca_path else None

    def issue_tokens(self) -> dict[str, Any]:
        """V3 only: a fresh login's tokens from the `POST /_sim/tokens` hook (no browser, no
        device flow), as the token endpoint answers them (`access_token`, `refresh_token`,
        `expires_in`, `scope`)."""
        request = urllib.request.Request(
            f"{self.origin}/_sim/tokens",
            data=json.dumps({"scopes": "contact_data offline_access"}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, context=self._context(), timeout=30) as answer:
            tokens: dict[str, Any] = json.load(answer)
            return tokens

    def stats(self) -> dict[str, Any]:
        """The request counters (GET /_sim/stats): `total`, `by_route`, `by_status`."""
        with urllib.request.urlopen(self.stats_url, context=self._context(), timeout=30) as answer:
            result: dict[str, Any] = json.load(answer)
            return result

    def reset_stats(self) -> None:
        """Zero the request counters (DELETE /_sim/stats)."""
        request = urllib.request.Request(self.stats_url, method="DELETE")
        urllib.request.urlopen(request, context=self._context(), timeout=30).close()

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the simulator process has used so far."""
        with open(f"/proc/{self.pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def peak_rss_mb(self) -> float:
        """The simulator's peak resident memory so far (VmHWM), in MiB."""
        with open(f"/proc/{self.pid}/status") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0


@contextmanager
def simulator_process(
    args: Sequence[str] = (),
    *,
    state: Path | None = None,
    keep_state: bool = False,
    cwd: Path | None = None,
) -> Iterator[SimulatorProcess]:
    """Start the simulator on 127.0.0.1, port 0; stop it on exit.

    Args:
        args: more `simulate` options (`--latency-ms`, `--rate-limit`, …).
        state: a state file to load.
        keep_state: stop with SIGTERM, which saves the state over a copy of `state`
            (seconds for a million contacts). By default the process is killed instead,
            and its periodic saves are off (`--save-every 0`), so nothing is saved: the
            state file is shared by every run of its workload (a run must not start from
            what the one before it wrote), and the CA file lives in a folder removed here.
        cwd: the folder to run in; `python -m engine` imports the engine found there.
    """
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        folder = Path(tmp)
        command = [sys.executable, "-m", "engine", "simulate", "--port", "0", "--host"]
        command += ["127.0.0.1", "--ca-dir", str(folder), *args]
        if state is not None:
            if keep_state:
                copy = folder / "state.json"
                copy.write_bytes(state.read_bytes())
                state = copy
            command += ["--state", str(state)]
            if not keep_state:
                command += ["--save-every", "0"]
        log_path = folder / "stderr.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=cwd
            )
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if not line.startswith("serving "):
                process.wait(timeout=30)
                raise RuntimeError(
                    f"the simulator did not start: {line!r}\n{log_path.read_text()[-2000:]}"
                )
            parts = line.split()
            ca = next((p[3:] for p in parts if p.startswith("ca=")), None)
            auth = next((p[5:] for p in parts if p.startswith("auth=")), None)
            yield SimulatorProcess(parts[1], Path(ca) if ca else None, process.pid, auth)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM if keep_state else signal.SIGKILL)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
