"""The CLI on a V3 account: `login`/`logout` (the OAuth2 device flow), `--backend v3` on
`migrate` (and its dry run), `lists` and `audit`, headless tokens from the environment, and
the configuration errors; against the V3 simulator over https on 127.0.0.1, served from a
thread (`main` runs its own event loop). No token ever appears in any output or file."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import ssl
import stat
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import platformdirs
import pytest

from engine.backend.v3 import FileTokenStore, TokenSet
from engine.cli import main
from engine.simulator.testing import read_stats, serve_v3_in_thread
from engine.simulator.v3 import AccountStore, RunningSimulator, SimulatorConfig

CLIENT_ID = "demo-client"
#: Fast settings: no rate limits, activities within ~20 ms, a device poll every second and
#: codes that expire after 30 s (a login test that fails ends its CLI thread soon).
CONFIG = SimulatorConfig(
    host="127.0.0.1",
    port=0,
    rps=None,
    daily_quota=None,
    token_rps=None,
    activity_delay=0.02,
    activity_jitter=0.5,
    activity_rows_per_second=1_000_000.0,
    device_interval=1,
    device_expires_in=30,
    client_id=CLIENT_ID,
    seed=77,
)
#: Tokens this file makes up: they must never be shown either.
MADE_UP_ACCESS = "AT-made-up-6d1f0c9e-never-shown"
MADE_UP_REFRESH = "RT-made-up-93be44a1-never-shown"
#: A bound on every wait of a login test.
WAIT = 20.0


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No backend, client id or token from the developer's environment; the config folder
    (where the default token file goes) under tmp_path."""
    for name in (
        "CTCT_BACKEND",
        "CTCT_V3_CLIENT_ID",
        "CTCT_V3_REFRESH_TOKEN",
        "CTCT_V3_ACCESS_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def store() -> AccountStore:
    """Customers (an existing contact, an unsubscribed one) and an empty Newsletter."""
    account = AccountStore(CONFIG)
    customers = account.add_list("Customers")
    account.add_list("Newsletter")
    account.add_contact("existing@example.com", lists=[customers], first_name="Old")
    account.add_contact("unsub@example.com", lists=[customers], permission="unsubscribed")
    return account


@contextmanager
def serving(store: AccountStore | None = None, **overrides: Any) -> Iterator[RunningSimulator]:
    """The V3 simulator (settings changed by `overrides`) served from its own thread."""
    config = dataclasses.replace(CONFIG, **overrides)
    with serve_v3_in_thread(config, store or AccountStore(config)) as sim:
        yield sim


@pytest.fixture
def sim(store: AccountStore) -> Iterator[RunningSimulator]:
    """The simulator serving `store`."""
    with serving(store) as running:
        yield running


def connection_args(sim: RunningSimulator) -> list[str]:
    """The simulator's API and authorization server, its CA, no real rate limit."""
    return [
        "--base-url",
        sim.base_url,
        "--auth-url",
        sim.auth_url,
        "--ca-file",
        str(sim.ca_path),
        "--rate-limit",
        "10000",
        "--concurrency",
        "16",
    ]


def v3_args(sim: RunningSimulator, token_file: Path) -> list[str]:
    """`--backend v3` on the simulator with this token file."""
    return [
        "--backend",
        "v3",
        "--client-id",
        CLIENT_ID,
        "--token-file",
        str(token_file),
        *connection_args(sim),
    ]


def auth_args(sim: RunningSimulator) -> list[str]:
    """The options of `login`/`logout` on the simulator."""
    return ["--client-id", CLIENT_ID, "--auth-url", sim.auth_url, "--ca-file", str(sim.ca_path)]


def log_in(sim: RunningSimulator, token_file: Path) -> list[str]:
    """Save a fresh login's tokens in `token_file` (as `login` would); returns the tokens."""
    issued = sim.issue_tokens()
    assert issued.refresh_token is not None
    FileTokenStore(token_file).save(
        TokenSet(
            issued.access_token,
            issued.refresh_token,
            time.time() + issued.expires_in,
            issued.scope,
        )
    )
    return [issued.access_token, issued.refresh_token]


def saved_tokens(token_file: Path) -> list[str]:
    """The tokens in a token file (after a refresh they are new ones)."""
    tokens = FileTokenStore(token_file).load()
    assert tokens is not None
    return [t for t in (tokens.access_token, tokens.refresh_token) if t]


def assert_hidden(secrets: Sequence[str], *texts: str | bytes) -> None:
    """No secret in any of the texts."""
    for text in texts:
        data = text.encode() if isinstance(text, str) else text
        for secret in secrets:
            assert secret.encode() not in data, "a token was shown"


def run_cli(
    capsys: pytest.CaptureFixture[str], argv: list[str], secrets: Sequence[str] = ()
) -> tuple[int, str, str]:
    """Run `main(argv)`; return the exit status, stdout and stderr, which show no token."""
    status = main(argv)
    out, err = capsys.readouterr()
    assert_hidden([*secrets, MADE_UP_ACCESS, MADE_UP_REFRESH], out, err)
    return status, out, err


def sim_request(sim: RunningSimulator, method: str, path: str, body: Any = None) -> Any:
    """Call a `/_sim/` hook (served on the simulator's own loop: thread-safe)."""
    context = ssl.create_default_context(cafile=str(sim.ca_path))
    request = urllib.request.Request(
        sim.origin + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as answer:
        text = answer.read()
    return json.loads(text) if text else None


def writes(sim: RunningSimulator) -> list[dict[str, Any]]:
    """The simulator's write log."""
    log: list[dict[str, Any]] = sim_request(sim, "GET", "/_sim/writes")["writes"]
    return log


def source(tmp_path: Path) -> Path:
    """Two new contacts, the existing one (on Customers) and the unsubscribed one."""
    path = tmp_path / "contacts.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["Email Address", "First Name"])
        writer.writerows(
            [
                ["new1@example.org", "Ann"],
                ["existing@example.com", "Old"],
                ["unsub@example.com", "Una"],
                ["new2@example.org", "Bob"],
            ]
        )
    return path


def migrate_args(sim: RunningSimulator, token_file: Path, path: Path, *extra: str) -> list[str]:
    """`migrate PATH --list Newsletter` with fast polls on the simulator."""
    return [
        "migrate",
        str(path),
        "--list",
        "Newsletter",
        "--poll-initial",
        "0.02",
        "--poll-max",
        "0.1",
        "--quiet",
        *extra,
        *v3_args(sim, token_file),
    ]


# --- login and logout -----------------------------------------------------------------------


class LoginInThread:
    """`with LoginInThread(argv) as login`: `main(["login", …])` in a thread, its stdout and
    stderr in buffers the test reads while it runs (a person reads the code from the
    terminal, the test from the buffer); the block's end waits for it (bounded) and puts
    the streams back."""

    def __init__(self, argv: list[str]) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.status: int | None = None
        self.thread = threading.Thread(target=self._run, args=(argv,), daemon=True)
        self._streams = (sys.stdout, sys.stderr)

    def __enter__(self) -> LoginInThread:
        sys.stdout, sys.stderr = self.out, self.err
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(WAIT)
        sys.stdout, sys.stderr = self._streams

    def _run(self, argv: list[str]) -> None:
        self.status = main(argv)

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first match of `pattern` in the stderr so far, waiting for it (bounded)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            found = re.search(pattern, self.err.getvalue())
            if found:
                return found
            if not self.thread.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} never appeared; stderr: {self.err.getvalue()}")

    def user_code(self) -> str:
        """The user code `login` printed."""
        return self.wait_for(r"code ([A-Z]{4}-[A-Z]{4})").group(1)

    def finish(self) -> int:
        """Wait (bounded) for the exit status."""
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "login did not finish"
        assert self.status is not None
        return self.status


def test_login_runs_the_device_flow_and_saves_the_tokens_privately(
    sim: RunningSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`login` shows URL and code, polls until approved, saves tokens 0600 in 0700, shows none."""
    with LoginInThread(["login", *auth_args(sim)]) as login:
        code = login.user_code()
        sim_request(sim, "POST", "/_sim/device", {"user_code": code, "decision": "approve"})
        status = login.finish()
    out, err = login.out.getvalue(), login.err.getvalue()

    assert status == 0, err
    assert f"{sim.origin}/activate?user_code={code}" in err  # verification_uri_complete
    token_file = Path(platformdirs.user_config_dir("ctct-migrate")) / f"v3-{CLIENT_ID}.json"
    assert token_file.is_relative_to(tmp_path)  # the config folder of the environment
    assert f"saved in {token_file}" in out
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    tokens = saved_tokens(token_file)
    assert len(tokens) == 2  # an access token and a refresh token (offline_access)
    assert_hidden(tokens, out, err)

    # After `login` no flag names the API or the application: the saved login says both.
    status, out, _ = run_cli(
        capsys,
        [
            "lists",
            "--auth-url",
            sim.auth_url,
            "--ca-file",
            str(sim.ca_path),
            "--base-url",
            sim.base_url,
        ],
        tokens,
    )
    assert status == 0
    assert "Newsletter" in out


@pytest.mark.parametrize(
    ("decision", "message"),
    [
        pytest.param("deny", "denied", id="denied"),
        pytest.param(None, "expired", id="expired"),
    ],
)
def test_login_denied_or_expired_exits_1_and_saves_nothing(
    decision: str | None, message: str, tmp_path: Path
) -> None:
    """A denied login, or a code that expires unapproved, exits 1 saying so; no token file."""
    token_file = tmp_path / "tokens" / "v3.json"
    with (
        serving(device_expires_in=30 if decision else 1) as sim,
        LoginInThread(["login", *auth_args(sim), "--token-file", str(token_file)]) as login,
    ):
        code = login.user_code()
        if decision is not None:
            sim_request(sim, "POST", "/_sim/device", {"user_code": code, "decision": decision})
        status = login.finish()

    err = login.err.getvalue()
    assert status == 1
    assert f"error: not logged in: the login {'was ' if decision else 'code '}{message}" in err
    assert not token_file.exists()


def test_logout_revokes_the_tokens_and_deletes_the_file(
    sim: RunningSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`logout` revokes both tokens and deletes the file; with no file it says so, exit 0."""
    token_file = tmp_path / "tokens" / "v3.json"
    secrets = log_in(sim, token_file)
    argv = ["logout", "--backend", "v3", *auth_args(sim), "--token-file", str(token_file)]

    status, out, err = run_cli(capsys, argv, secrets)
    assert status == 0, err
    assert f"revoke the refresh and access tokens, and {token_file} is deleted" in out
    assert not token_file.exists()
    assert read_stats(sim)["by_route"] == {"POST oauth2 revoke": 2}

    status, out, _ = run_cli(capsys, argv, secrets)
    assert status == 0
    assert f"no token file at {token_file}" in out


def test_revoked_tokens_no_longer_work(
    sim: RunningSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After `logout` the old tokens are refused: exit 2 saying to log in, no token shown."""
    token_file = tmp_path / "tokens" / "v3.json"
    access, refresh = log_in(sim, token_file)
    status, _, err = run_cli(
        capsys, ["logout", *auth_args(sim), "--token-file", str(token_file)], [access, refresh]
    )
    assert status == 0, err
    monkeypatch.setenv("CTCT_V3_ACCESS_TOKEN", access)
    monkeypatch.setenv("CTCT_V3_REFRESH_TOKEN", refresh)

    status, _, err = run_cli(capsys, ["lists", *v3_args(sim, token_file)], [access, refresh])

    assert status == 2
    assert "refresh token is invalid or expired" in err
    assert "python -m engine login" in err


# --- the commands on a V3 account -----------------------------------------------------------


def test_migrate_keeps_every_list_skips_the_unsubscribed_and_never_deletes(
    sim: RunningSimulator,
    store: AccountStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`migrate --backend v3` adds the target, keeps lists, skips unsubscribed, deletes nothing."""
    caplog.set_level("INFO")
    token_file = tmp_path / "tokens" / "v3.json"
    secrets = log_in(sim, token_file)
    report = tmp_path / "report.jsonl"

    status, out, err = run_cli(
        capsys, ["-v", *migrate_args(sim, token_file, source(tmp_path), "--report", str(report))]
    )

    assert status == 0, err
    outcomes = {
        line["email"]: (line["outcome"], line.get("reason"))
        for line in map(json.loads, report.read_text(encoding="utf-8").splitlines())
    }
    assert outcomes == {
        "new1@example.org": ("created", None),
        "new2@example.org": ("created", None),
        "existing@example.com": ("updated", None),
        "unsub@example.com": ("skipped", "opted-out"),
    }
    customers, newsletter = store.list_by_name("Customers"), store.list_by_name("Newsletter")
    assert customers is not None
    assert newsletter is not None
    existing, unsub = (
        store.contact_by_email("existing@example.com"),
        store.contact_by_email("unsub@example.com"),
    )
    assert existing is not None
    assert unsub is not None
    assert set(existing.lists) == {customers.id, newsletter.id}
    assert unsub.lists == [customers.id]
    assert store.members(newsletter.id) == {
        c.id for c in store.contacts() if c.email != "unsub@example.com"
    }
    log = writes(sim)
    assert log  # the run wrote
    assert all(w["method"] != "DELETE" for w in log)
    assert not [w for w in log if "sign_up_form" in w["path"]]
    assert store.destructive_calls() == []
    journal = tmp_path / "report.journal.sqlite"
    assert journal.is_file()
    assert f"journal: {journal}" in out
    every = [*secrets, *saved_tokens(token_file)]
    assert_hidden(every, out, err, caplog.text, report.read_bytes(), journal.read_bytes())

    status, out, err = run_cli(
        capsys, ["audit", "--report", str(report), *v3_args(sim, token_file)], every
    )
    assert status == 0, err
    assert "3 contacts re-read" in out  # the skipped one was not touched
    assert "no violation" in out


def test_dry_run_and_lists_write_nothing(
    sim: RunningSimulator,
    store: AccountStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`migrate --backend v3 --dry-run` prints the plan, `lists` the lists; neither writes."""
    token_file = tmp_path / "tokens" / "v3.json"
    secrets = log_in(sim, token_file)
    path = source(tmp_path)

    status, out, err = run_cli(
        capsys, migrate_args(sim, token_file, path, "--dry-run", "--lookup"), secrets
    )
    assert status == 0, err
    assert "rows read:              4" in out
    assert "nothing was written." in out

    status, out, err = run_cli(capsys, ["lists", *v3_args(sim, token_file)], secrets)
    assert status == 0, err
    rows = {line.split()[-1]: line.split() for line in out.splitlines()[1:]}
    for item in store.lists():
        assert rows[item.name][0] == item.id
        assert rows[item.name][1] == str(store.member_count(item.id))
    assert writes(sim) == []
    assert not Path(f"{path}.report.jsonl").exists()


def test_headless_run_takes_the_refresh_token_from_the_environment(
    sim: RunningSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CTCT_V3_REFRESH_TOKEN and no token file: the run works and keeps the rotated tokens."""
    issued = sim.issue_tokens()
    assert issued.refresh_token is not None
    monkeypatch.setenv("CTCT_BACKEND", "v3")
    monkeypatch.setenv("CTCT_V3_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("CTCT_V3_REFRESH_TOKEN", issued.refresh_token)
    token_file = Path(platformdirs.user_config_dir("ctct-migrate")) / f"v3-{CLIENT_ID}.json"
    assert not token_file.exists()

    status, out, err = run_cli(
        capsys, ["-v", "lists", *connection_args(sim)], [issued.refresh_token]
    )

    assert status == 0, err
    assert "Customers" in out
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    rotated = saved_tokens(token_file)
    assert issued.refresh_token not in rotated  # spent: its successor is what is kept
    assert_hidden(rotated, out, err)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        pytest.param(
            "CTCT_V3_ACCESS_TOKEN", MADE_UP_ACCESS, "no refresh token", id="unknown-access"
        ),
        pytest.param(
            "CTCT_V3_REFRESH_TOKEN", MADE_UP_REFRESH, "invalid or expired", id="unknown-refresh"
        ),
    ],
)
def test_a_refused_headless_token_exits_2_without_showing_it(
    variable: str,
    value: str,
    message: str,
    sim: RunningSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused token from the environment: exit 2, log in again, nothing written, not shown."""
    monkeypatch.setenv(variable, value)
    token_file = tmp_path / "tokens" / "v3.json"

    status, _, err = run_cli(
        capsys, ["-v", *migrate_args(sim, token_file, source(tmp_path))], [value]
    )

    assert status == 2
    assert message in err
    assert "python -m engine login" in err
    assert writes(sim) == []


# --- configuration errors -------------------------------------------------------------------


def test_no_client_id_exits_2_naming_the_option_and_variable(
    sim: RunningSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No client id: exit 2 naming --client-id and CTCT_V3_CLIENT_ID, before any request."""
    path = source(tmp_path)
    for argv in (
        ["migrate", str(path), "--list", "Newsletter", "--backend", "v3"],
        ["login", "--auth-url", sim.auth_url],
    ):
        status, _, err = run_cli(capsys, argv)
        assert status == 2
        assert "--client-id" in err
        assert "CTCT_V3_CLIENT_ID" in err
    assert read_stats(sim)["total"] == 0


def test_no_token_exits_2_saying_to_log_in(
    sim: RunningSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No token file or token: exit 2 giving the `login` command, before any request."""
    token_file = tmp_path / "missing" / "v3.json"

    status, _, err = run_cli(
        capsys, migrate_args(sim, token_file, source(tmp_path), "--no-journal")
    )

    assert status == 2
    assert f"python -m engine login --client-id {CLIENT_ID} --token-file {token_file}" in err
    assert "CTCT_V3_REFRESH_TOKEN" in err
    assert "nothing was written" in err
    assert read_stats(sim)["total"] == 0
    assert not token_file.exists()


@pytest.mark.parametrize("option", ["--base-url", "--auth-url"])
def test_plain_http_to_another_host_exits_2_before_any_request(
    option: str,
    sim: RunningSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Plain http to a non-loopback API or auth server: exit 2 before any request."""
    token_file = tmp_path / "tokens" / "v3.json"
    secrets = log_in(sim, token_file)
    argv = [*migrate_args(sim, token_file, source(tmp_path)), "--allow-http"]
    argv += [option, "http://api.example.com/v3/"]  # the last one wins

    status, _, err = run_cli(capsys, argv, secrets)

    assert status == 2
    assert "refusing plain http to a non-loopback host" in err
    assert "nothing was written" in err
    assert read_stats(sim)["total"] == 0


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        pytest.param(
            ["lists", "--client-id", CLIENT_ID],
            {"CTCT_BACKEND": "v1"},
            "--client-id is an option of --api v3, and the API is v1",
            id="v3-option-on-v1",
        ),
        pytest.param(
            ["lists", "--username", "someone"],
            {"CTCT_BACKEND": "v3"},
            "--username is an option of --api v1, and the API is v3",
            id="v1-option-on-v3",
        ),
        pytest.param(["lists"], {"CTCT_BACKEND": "v2"}, "CTCT_BACKEND is 'v2'", id="unknown"),
        pytest.param(
            ["lists", "--username", "someone", "--client-id", CLIENT_ID],
            {},
            "options of both APIs are given",
            id="options-of-both",
        ),
    ],
)
def test_options_of_the_other_backend_exit_2(
    argv: list[str],
    env: dict[str, str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An option of the other backend, or an unknown CTCT_BACKEND, exits 2 saying so."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    status, _, err = run_cli(capsys, argv)

    assert status == 2
    assert message in err


@pytest.mark.parametrize(
    ("env", "login", "message"),
    [
        pytest.param({}, False, "no account: log in to the V3 API", id="neither"),
        pytest.param(
            {"CTCT_USERNAME": "someone", "CTCT_API_KEY": "k"},
            False,
            "CTCT_PASSWORD",  # v1 chosen: its own missing credential is named
            id="v1-credentials",
        ),
        pytest.param(
            {"CTCT_V3_REFRESH_TOKEN": MADE_UP_REFRESH},
            False,
            "no V3 client id",  # V3 chosen: its own missing setting is named
            id="v3-tokens",
        ),
        pytest.param(
            {"CTCT_USERNAME": "someone", "CTCT_API_KEY": "k"},
            True,
            "credentials of both APIs are present",
            id="both",
        ),
    ],
)
def test_the_api_follows_the_credentials_present(
    env: dict[str, str],
    login: bool,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --api the CLI picks the API whose credentials are present, and says what to
    pass when there are none or both."""
    for name in ("CTCT_USERNAME", "CTCT_API_KEY", "CTCT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if login:
        folder = Path(platformdirs.user_config_dir("ctct-migrate"))
        FileTokenStore(folder / f"v3-{CLIENT_ID}.json").save(
            TokenSet(MADE_UP_ACCESS, MADE_UP_REFRESH, time.time() + 3600, "contact_data")
        )

    status, _, err = run_cli(capsys, ["lists"], [MADE_UP_ACCESS, MADE_UP_REFRESH])

    assert status == 2
    assert message in err
    if message.startswith("credentials of both"):
        assert "--api v3 or --api v1" in err


def test_copy_account_reads_a_v3_account_into_a_state_file(
    sim: RunningSimulator, store: AccountStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`copy-account` on V3 copies lists, contacts, permissions, deletions and memberships
    into a V3 simulator state, 500 contacts a request, writing nothing to the account."""
    vip = store.add_list("VIP")
    for n in range(1200):
        store.add_contact(f"bulk{n}@example.com", lists=[vip] if n % 3 == 0 else [])
    store.add_contact("gone@example.com", deleted=True)
    token_file = tmp_path / "tokens" / "v3.json"
    secrets = log_in(sim, token_file)
    target = tmp_path / "copy.json"
    before = read_stats(sim)["total"]

    status, out, err = run_cli(
        capsys, ["copy-account", "--to", str(target), *v3_args(sim, token_file)], secrets
    )

    assert status == 0, err
    assert "simulate --api v3 --state" in out
    sent = read_stats(sim)["total"] - before
    assert sent <= 3 + 2 + 1  # the token check, one page of lists, 3 pages of contacts
    copy = AccountStore.load(target, CONFIG)
    names = {item.id: item.name for item in copy.lists()}
    originals = {item.id: item.name for item in store.lists()}
    for contact in store.contacts():
        copied = copy.contact_by_email(contact.email or "")
        assert copied is not None, contact.email
        assert copied.status == contact.status
        assert copied.permission == contact.permission
        assert sorted(names[i] for i in copied.lists) == sorted(originals[i] for i in contact.lists)
    assert writes(sim) == []
