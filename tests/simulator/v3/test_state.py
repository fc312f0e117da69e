"""State files: an account saved with an unfinished activity is completed after loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.simulator.v3 import AccountStore, SimulatorConfig

from .conftest import FakeClock, V3Starter, get_json, open_session, wait_for_activity


async def test_unfinished_activity_completes_after_load(
    start_v3: V3Starter, clock: FakeClock, tmp_path: Path
) -> None:
    """An activity left `initialized` by a stopped simulator is run to the end by a
    simulator started on the saved state; contacts, lists and grants survive the trip."""
    state = tmp_path / "state.json"
    async with start_v3(activity_delay=1000.0) as (sim, api):
        news = sim.store.add_list("News")
        sim.store.add_contact("kept@example.com", lists=[news], first_name="K")
        body = {"list_ids": [news], "import_data": [{"email": "late@example.com"}]}
        async with api.post("activities/contacts_json_import", json=body) as response:
            assert response.status == 201
            activity_id = (await response.json())["activity_id"]
        tokens = sim.issue_tokens()
        sim.store.save(state)
    assert json.loads(state.read_text())["format"] == "ctct-v3-simulator-state"
    loaded = AccountStore.load(state, clock=clock)
    assert loaded.get_activity(activity_id).state == "initialized"
    async with (
        start_v3(store=loaded) as (sim, _),
        open_session(sim, tokens.access_token) as api,
    ):
        done = await wait_for_activity(api, activity_id)
        assert done["state"] == "completed"
        found = await get_json(
            api, "contacts", email="late@example.com", include="list_memberships"
        )
        assert found["contacts"][0]["list_memberships"] == [news]
        kept = await get_json(api, "contacts", email="kept@example.com")
        assert kept["contacts"][0]["first_name"] == "K"


def test_unfinished_activities_can_be_failed_on_load(clock: FakeClock) -> None:
    """With `unfinished_activities="fail"` a loaded unfinished activity ends `failed`."""
    store = AccountStore(clock=clock)
    news = store.add_list("News")
    activity = store.submit_json_import({"list_ids": [news], "import_data": [{"email": "a@b.co"}]})
    config = SimulatorConfig(unfinished_activities="fail")
    loaded = AccountStore.from_json(store.to_json(), config, clock=clock)
    assert loaded.get_activity(activity.id).state == "failed"
    assert loaded.contact_by_email("a@b.co") is None


def test_not_a_state_file() -> None:
    """A document of another format is refused with ValueError."""
    with pytest.raises(ValueError, match="not a ctct v3 simulator state"):
        AccountStore.from_json({"format": "ctct-v1-simulator-state", "version": 1})


def test_config_rejects_invalid_settings() -> None:
    """Invalid settings are refused with a message naming the field."""
    with pytest.raises(ValueError, match=r"SimulatorConfig\.rps"):
        SimulatorConfig(rps=0)
    with pytest.raises(ValueError, match="activity_fail_rate"):
        SimulatorConfig(activity_fail_rate=0.6, activity_timeout_rate=0.6)
    with pytest.raises(ValueError, match="activity_error_format"):
        SimulatorConfig(activity_error_format="{row}")
