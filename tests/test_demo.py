"""`python -m engine demo`: the V3 demo (the default, with its scripted device login) and the
v1 one (`--api v1`), each run end to end through `main` on small sizes, on 127.0.0.1."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from engine.cli import main

#: The claims each demo proves, in the order it prints them.
V3_CHECKS = (
    "every contact still has every list it had",
    "every valid, mailable row is on its target lists",
    "the rows' new field values were written",
    "unsubscribed and deleted contacts of the source are untouched",
    "every row has exactly one outcome",
    "no sign_up_form, remove_list_memberships, contact_delete, list_delete or DELETE",
)
V1_CHECKS = (
    "memberships before the run still present",
    "every valid, mailable row is on its target lists",
    "every row has exactly one outcome",
)


def assert_checks_passed(out: str, claims: tuple[str, ...]) -> None:
    """Every claim is printed as a numbered check that passed, and none failed."""
    for number, claim in enumerate(claims, start=1):
        line = next((x for x in out.splitlines() if x.startswith(f"check {number}:")), "")
        assert claim in line, out
        assert line.endswith(": yes"), line
    assert ": NO" not in out


def demo_folder(out: str) -> Path:
    """The folder the demo printed its source CSV in."""
    found = re.search(r"^source: +(\S+)/contacts\.csv ", out, re.MULTILINE)
    assert found is not None, out
    return Path(found.group(1))


@pytest.mark.timeout(30)
def test_v3_demo_logs_in_by_device_flow_migrates_and_passes_every_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The V3 demo logs in with the device flow (approval scripted), passes all six checks,
    and never shows a token, which it keeps in a 0600 token file."""
    status = main(["demo", "--api", "v3", "--contacts", "300", "--keep", str(tmp_path)])
    out, err = capsys.readouterr()

    assert status == 0, out + err
    assert out.startswith("V3 demo: the V3 REST API")
    assert re.search(r"To log in, open https://127\.0\.0\.1:\d+/activate\?user_code=", out)
    assert "this is the person's part" in out
    assert "simulator: https://127.0.0.1:" in out
    assert_checks_passed(out, V3_CHECKS)
    assert "V3 demo passed in" in out
    token_file = tmp_path / "config" / "v3-demo-client.json"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    saved = json.loads(token_file.read_text())
    for name in ("access_token", "refresh_token"):
        assert len(saved[name]) >= 16
        assert saved[name] not in out + err
    report = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
    assert {r["outcome"] for r in report} >= {"created", "updated", "bulk_added", "skipped"}


@pytest.mark.timeout(30)
def test_v3_demo_is_the_default_and_removes_its_files(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --api the demo is the V3 one; without --keep its folder (tokens included) is
    removed when it ends."""
    status = main(["demo", "--contacts", "300"])
    out, err = capsys.readouterr()

    assert status == 0, out + err
    assert out.startswith("V3 demo:")
    assert_checks_passed(out, V3_CHECKS)
    assert not demo_folder(out).exists()


@pytest.mark.timeout(30)
def test_v1_demo_migrates_on_the_v1_simulator_and_passes_every_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--api v1` runs the legacy v1 demo (at least 4,100 contacts), which passes its three
    checks and removes its folder."""
    status = main(["demo", "--api", "v1", "--contacts", "1"])
    out, err = capsys.readouterr()

    assert status == 0, out + err
    assert out.startswith("v1 demo: the legacy v1 XML API")
    assert "/ws/customers/demo/" in out
    assert "account:   4100 contacts" in out
    assert_checks_passed(out, V1_CHECKS)
    assert not demo_folder(out).exists()
