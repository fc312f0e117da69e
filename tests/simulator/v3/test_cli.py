"""`simulate --api v3`: the one start line, https with the printed CA, clean stop."""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
from pathlib import Path

import aiohttp

from engine.simulator.v3 import AccountStore

REPO = Path(__file__).resolve().parents[3]
LAUNCH = "import sys; from engine.simulator.cli import main; sys.exit(main())"


async def test_start_line_and_device_flow_over_the_cli(tmp_path: Path) -> None:
    """`--api v3` prints exactly `serving <base> auth=<auth> ca=<file>`, serves the auth server
    and the API over https, and on SIGTERM exits 0 after saving the state."""
    state = tmp_path / "state.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LAUNCH,
        "--api",
        "v3",
        "--port",
        "0",
        "--auto-approve",
        "--state",
        str(state),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        words = line.split()
        assert len(words) == 4
        assert words[0] == "serving"
        base_url, auth, ca = words[1:]
        assert base_url.startswith("https://127.0.0.1:")
        assert base_url.endswith("/v3/")
        assert auth.startswith("auth=https://127.0.0.1:")
        assert auth.endswith("/oauth2/default/v1/")
        assert ca.startswith("ca=")
        auth_url = auth.removeprefix("auth=")
        context = ssl.create_default_context(cafile=ca.removeprefix("ca="))
        timeout = aiohttp.ClientTimeout(total=20)
        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            form = {"client_id": "demo-client", "scope": "contact_data offline_access"}
            async with session.post(auth_url + "device/authorize", data=form) as response:
                device = await response.json()
            poll = {
                "client_id": "demo-client",
                "device_code": device["device_code"],
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            }
            async with session.post(auth_url + "token", data=poll) as response:
                assert response.status == 200
                tokens = await response.json()
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            body = {"name": "From CLI"}
            async with session.post(
                base_url + "contact_lists", json=body, headers=headers
            ) as response:
                assert response.status == 201
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert out == b""
    assert tokens["access_token"] not in err.decode()
    assert AccountStore.load(state).list_by_name("From CLI") is not None
