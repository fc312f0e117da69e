"""The `simulate` command line: one `serving …` line, clean stop on SIGTERM, state saved."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest

from engine.simulator import AccountStore
from engine.simulator.cli import main

REPO = Path(__file__).resolve().parents[2]
LAUNCH = "import sys; from engine.simulator.cli import main; sys.exit(main())"
ATOM_CT = {"Content-Type": "application/atom+xml"}
NEW_LIST = (
    '<entry xmlns="http://www.w3.org/2005/Atom"><content type="application/vnd.ctct+xml">'
    '<ContactList xmlns="http://ws.constantcontact.com/ns/1.0/"><Name>From CLI</Name>'
    "</ContactList></content></entry>"
)


async def start(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    """Start the command and return it with its first stdout line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LAUNCH,
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 20)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return process, line.decode()


async def stop(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """SIGTERM, then the exit status and the rest of stdout and stderr."""
    process.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(process.communicate(), 20)
    return process.returncode or 0, out.decode(), err.decode()


async def test_serve_request_sigterm_saves_state(tmp_path: Path) -> None:
    """The command prints one `serving <url> ca=<file>` line, serves https, and on SIGTERM
    exits 0 after saving the state file; secrets never reach its output."""
    state = tmp_path / "state.json"
    process, line = await start(
        "--port", "0", "--state", str(state), "--password", "pw-s3cret", "--api-key", "key-s3cret"
    )
    try:
        words = line.split()
        assert words[0] == "serving"
        assert len(words) == 3
        base_url, ca = words[1], words[2]
        assert base_url.startswith("https://127.0.0.1:")
        assert base_url.endswith("/ws/customers/demo/")
        assert ca.startswith("ca=")
        context = ssl.create_default_context(cafile=ca[3:])
        headers = {"Authorization": aiohttp.encode_basic_auth("key-s3cret%demo", "pw-s3cret")}
        connector = aiohttp.TCPConnector(ssl=context)
        async with (
            aiohttp.ClientSession(connector=connector, headers=headers) as session,
            session.post(base_url + "lists", data=NEW_LIST, headers=ATOM_CT) as response,
        ):
            assert response.status == 201
    finally:
        status, out, err = await stop(process)
    assert status == 0
    assert out == ""
    assert "s3cret" not in line + out + err
    saved = AccountStore.load(state)
    assert saved.list_by_name("From CLI") is not None
    assert json.loads(state.read_text())["format"] == "ctct-v1-simulator-state"


async def test_state_is_loaded_and_no_tls_line(tmp_path: Path) -> None:
    """An existing state file is loaded at start; with --no-tls the line has no `ca=`."""
    state = tmp_path / "state.json"
    seeded = AccountStore()
    seeded.add_contact("kept@example.com", lists=[seeded.create_list("Kept")])
    seeded.save(state)
    process, line = await start("--no-tls", "--state", str(state))
    try:
        words = line.split()
        assert len(words) == 2
        assert words[1].startswith("http://127.0.0.1:")
        headers = {"Authorization": aiohttp.encode_basic_auth("demo-key%demo", "demo-password")}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.get(words[1] + "contacts?email=kept%40example.com") as response,
        ):
            assert "kept@example.com" in await response.text()
    finally:
        status, _, _ = await stop(process)
    assert status == 0


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--rate-limit", "-1"], id="negative-rate"),
        pytest.param(["--username", "bad/name"], id="bad-username"),
    ],
)
def test_invalid_settings_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid setting exits with status 2 and prints nothing to stdout."""
    assert main(args) == 2
    assert capsys.readouterr().out == ""


def test_invalid_probability_is_a_usage_error() -> None:
    """A rate outside [0, 1] is rejected by the parser."""
    with pytest.raises(SystemExit) as caught:
        main(["--error-rate", "2"])
    assert caught.value.code == 2


async def test_a_killed_simulator_keeps_the_writes_it_answered(tmp_path: Path) -> None:
    """With --state, writes are saved as they happen: SIGKILL after a write loses nothing
    that is more than --save-every old, and the next start logs the state's age."""
    state = tmp_path / "state.json"
    process, line = await start(
        "--no-tls", "--port", "0", "--state", str(state), "--save-every", "0.1"
    )
    try:
        base_url = line.split()[1]
        headers = {"Authorization": aiohttp.encode_basic_auth("demo-key%demo", "demo-password")}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.post(base_url + "lists", data=NEW_LIST, headers=ATOM_CT) as response,
        ):
            assert response.status == 201
        for _ in range(100):  # the saver runs every 0.1 s
            if state.exists() and AccountStore.load(state).list_by_name("From CLI"):
                break
            await asyncio.sleep(0.05)
    finally:
        process.kill()
        await asyncio.wait_for(process.communicate(), 20)
    assert AccountStore.load(state).list_by_name("From CLI") is not None
    process, line = await start("--no-tls", "--port", "0", "--state", str(state))
    status, _, err = await stop(process)
    assert status == 0
    assert re.search(r"loaded 0 contacts from .*state\.json, saved \d+ s ago", err), err
