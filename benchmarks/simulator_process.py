"""Run the simulator in its own process, so the engine's and the server's CPU are apart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.simulator import AccountStore

__all__ = ["SimulatorProcess", "seeded_state", "simulator_process"]


@dataclass(frozen=True, slots=True)
class SimulatorProcess:
    """A simulator running as `python -m engine simulate`.

    Attributes:
        base_url: the API base URL it printed.
        ca_path: its CA file (None without TLS).
        pid: its process id.
    """

    base_url: str
    ca_path: Path | None
    pid: int

    @property
    def stats_url(self) -> str:
        """The `/_sim/stats` URL."""
        origin = self.base_url.split("/ws/", 1)[0]
        return f"{origin}/_sim/stats"

    def stats(self) -> dict[str, Any]:
        """The request counters (GET /_sim/stats)."""
        import ssl

        context = ssl.create_default_context(cafile=str(self.ca_path)) if self.ca_path else None
        with urllib.request.urlopen(self.stats_url, context=context, timeout=30) as answer:
            result: dict[str, Any] = json.load(answer)
            return result

    def reset_stats(self) -> None:
        """Zero the request counters (DELETE /_sim/stats)."""
        import ssl

        context = ssl.create_default_context(cafile=str(self.ca_path)) if self.ca_path else None
        request = urllib.request.Request(self.stats_url, method="DELETE")
        urllib.request.urlopen(request, context=context, timeout=30).close()

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the simulator process has used so far."""
        with open(f"/proc/{self.pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks


def seeded_state(folder: Path, store: AccountStore) -> Path:
    """Write `store` as a state file the simulator loads at start."""
    path = folder / "state.json"
    store.save(path)
    return path


@contextmanager
def simulator_process(
    args: Sequence[str] = (), *, state: Path | None = None
) -> Iterator[SimulatorProcess]:
    """Start the simulator on 127.0.0.1, port 0; stop it (SIGTERM) on exit.

    The state file is copied first: the simulator saves its state over it on exit.
    """
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        command = [sys.executable, "-m", "engine", "simulate", "--port", "0", *args]
        if state is not None:
            copy = Path(tmp) / "state.json"
            copy.write_bytes(state.read_bytes())
            command += ["--state", str(copy)]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if not line.startswith("serving "):
                raise RuntimeError(f"the simulator did not start: {line!r}")
            parts = line.split()
            ca = next((p[3:] for p in parts if p.startswith("ca=")), None)
            yield SimulatorProcess(parts[1], Path(ca) if ca else None, process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
