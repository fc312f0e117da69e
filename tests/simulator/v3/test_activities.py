"""Bulk activities: lifecycle, outcomes, retention, caps, JSON import and list-membership
semantics, exports, and the destructive activities' log."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from typing import Any

import aiohttp

from engine.simulator.v3 import AccountStore, RunningSimulator

from .conftest import (
    FakeClock,
    V3Starter,
    get_json,
    post_json,
    wait_for_activity,
)

Served = tuple[RunningSimulator, aiohttp.ClientSession]


async def import_rows(
    api: aiohttp.ClientSession, rows: list[dict[str, Any]], list_ids: list[str]
) -> dict[str, Any]:
    _, body = await post_json(
        api,
        "activities/contacts_json_import",
        {"import_data": rows, "list_ids": list_ids},
        expect=201,
    )
    assert body["state"] == "initialized"
    return body


async def test_lifecycle_initialized_processing_completed(start_v3: V3Starter) -> None:
    """An import goes initialized → processing (percent_done between 0 and 100) → completed
    with its counters."""
    async with start_v3(activity_delay=0.05, activity_jitter=0.0, activity_rows_per_second=800) as (
        sim,
        api,
    ):
        news = sim.store.add_list("News")
        rows = [{"email": f"p{i}@example.com"} for i in range(240)]
        created = await import_rows(api, rows, [news])
        states, percents = {created["state"]}, set()
        async with asyncio.timeout(10):
            while True:
                body = await get_json(api, f"activities/{created['activity_id']}")
                states.add(body["state"])
                percents.add(body["percent_done"])
                if body["state"] == "completed":
                    break
                await asyncio.sleep(0.01)
        assert states == {"initialized", "processing", "completed"}
        assert any(0 < p < 100 for p in percents)
        assert body["percent_done"] == 100
        assert body["status"] == {
            "items_total_count": 240,
            "person_count": 240,
            "error_count": 0,
            "correctable_count": 0,
            "cannot_add_to_list_count": 0,
        }
        assert "started_at" in body
        assert "completed_at" in body
        assert len(sim.store.members(news)) == 240


async def test_activities_complete_out_of_order(start_v3: V3Starter) -> None:
    """A large activity submitted first completes after a small one submitted later."""
    async with start_v3(activity_jitter=0.0, activity_rows_per_second=5000) as (sim, api):
        news = sim.store.add_list("News")
        big = await import_rows(api, [{"email": f"b{i}@example.com"} for i in range(1500)], [news])
        small = await import_rows(api, [{"email": "s@example.com"}], [news])
        await wait_for_activity(api, small["activity_id"])
        assert sim.store.get_activity(big["activity_id"]).state != "completed"
        assert (await wait_for_activity(api, big["activity_id"]))["state"] == "completed"


async def test_fault_outcomes(start_v3: V3Starter) -> None:
    """Fault rates end activities failed or cancelled with nothing applied, or timed_out
    with half the rows applied."""
    for setting, state, applied in (
        ("activity_fail_rate", "failed", 0),
        ("activity_cancel_rate", "cancelled", 0),
        ("activity_timeout_rate", "timed_out", 2),
    ):
        async with start_v3(**{setting: 1.0}) as (sim, api):
            news = sim.store.add_list("News")
            rows = [{"email": f"f{i}@example.com"} for i in range(4)]
            done = await wait_for_activity(
                api, (await import_rows(api, rows, [news]))["activity_id"]
            )
            assert done["state"] == state
            assert len(sim.store.members(news)) == applied
            assert all(isinstance(e, str) for e in done["activity_errors"])


async def test_activities_expire_after_ten_days(start_v3: V3Starter, clock: FakeClock) -> None:
    """An activity is readable for 10 days of the injected clock, then 404 and unlisted."""
    async with start_v3(access_ttl=30 * 86400.0) as (sim, api):
        news = sim.store.add_list("News")
        created = await import_rows(api, [{"email": "e@example.com"}], [news])
        await wait_for_activity(api, created["activity_id"])
        clock.advance(10 * 86400 - 1)
        await get_json(api, f"activities/{created['activity_id']}")
        clock.advance(1)
        body = await get_json(api, f"activities/{created['activity_id']}", expect=404)
        assert body[0]["error_message"] == "Resource not found for the activity_id provided"
        assert (await get_json(api, "activities"))["activities"] == []


async def test_activity_listing_filters_and_pages(v3: Served) -> None:
    """`GET /activities` lists newest first, filters by state and pages by cursor."""
    sim, api = v3
    news = sim.store.add_list("News")
    ids = []
    for i in range(3):
        ids.append(
            (await import_rows(api, [{"email": f"l{i}@example.com"}], [news]))["activity_id"]
        )
    for activity_id in ids:
        await wait_for_activity(api, activity_id)
    page = await get_json(api, "activities", limit="2", state="completed")
    assert [a["activity_id"] for a in page["activities"]] == ids[:0:-1]
    rest = await get_json(api, sim.origin + page["_links"]["next"]["href"])
    assert [a["activity_id"] for a in rest["activities"]] == ids[:1]
    await get_json(api, "activities", state="initialized", expect=400)


async def test_queue_cap_of_1000_activities(start_v3: V3Starter, clock: FakeClock) -> None:
    """With 1,000 unfinished activities queued, a new one gets 429 with an object body."""
    store = AccountStore(clock=clock)
    news = store.add_list("News")
    contact_id = store.add_contact("q@example.com")
    for _ in range(1000):
        store.submit_list_memberships(
            {"source": {"contact_ids": [contact_id]}, "list_ids": [news]}, remove=False
        )
    async with start_v3(store=store, activity_delay=1000.0) as (_, api):
        status, body = await post_json(
            api,
            "activities/add_list_memberships",
            {"source": {"contact_ids": [contact_id]}, "list_ids": [news]},
        )
    assert status == 429
    assert body == {
        "error_key": "too_many_requests",
        "error_message": "You exceeded 1,000 queued activities for this user account.",
    }


async def test_json_import_row_cap_is_40000(start_v3: V3Starter) -> None:
    """40,000 rows are accepted; 40,001 are refused with 400."""
    async with start_v3(activity_delay=1000.0) as (sim, api):
        news = sim.store.add_list("News")
        rows = [{"email": f"r{i}@x.co"} for i in range(40_001)]
        body = {"list_ids": [news], "import_data": rows}
        status, refused = await post_json(api, "activities/contacts_json_import", body)
        assert status == 400
        assert "40000" in refused[0]["error_message"]
        body["import_data"] = rows[:40_000]
        _, accepted = await post_json(api, "activities/contacts_json_import", body, expect=201)
        assert accepted["status"]["items_total_count"] == 40_000


async def test_json_import_body_over_4mb_is_truncated_silently(start_v3: V3Starter) -> None:
    """A body over 4,000,000 bytes is cut there: the complete rows before the cut are
    imported, the rest dropped with no error."""
    async with start_v3() as (sim, api):
        news = sim.store.add_list("News")
        pad = "x" * 50
        rows = [
            {
                "email": f"t{i:05d}@example.com",
                "first_name": pad,
                "last_name": pad,
                "job_title": pad,
            }
            for i in range(30_000)
        ]
        head = f'{{"list_ids":["{news}"],"import_data":['
        texts = [json.dumps(row, separators=(",", ":")) for row in rows]
        data = (head + ",".join(texts) + "]}").encode()
        assert len(data) > 4_000_000
        kept, end = 0, len(head)
        while end + len(texts[kept]) <= 4_000_000:
            end += len(texts[kept]) + 1
            kept += 1
        headers = {"Content-Type": "application/json"}
        async with api.post(
            "activities/contacts_json_import", data=io.BytesIO(data), headers=headers
        ) as r:
            assert r.status == 201
            created = await r.json()
        done = await wait_for_activity(api, created["activity_id"], seconds=30)
        assert done["state"] == "completed"
        assert done["status"]["items_total_count"] == kept
        assert done["status"]["person_count"] == kept
        assert done["activity_errors"] == []
        assert sim.store.contact_by_email(rows[kept - 1]["email"]) is not None
        assert sim.store.contact_by_email(rows[kept]["email"]) is None


async def test_json_import_semantics(v3: Served) -> None:
    """Only sent properties change, lists are appended, unsubscribed contacts are counted in
    cannot_add_to_list_count, emails over 50 characters and unknown `cf:` columns are row
    errors, the last duplicate wins, new contacts are implicit/Account, deleted ones revived."""
    sim, api = v3
    store = sim.store
    old, new = store.add_list("Old"), store.add_list("New")
    store.create_custom_field("car")
    kept_id = store.add_contact("kept@example.com", lists=[old], first_name="K")
    store.update_contact(
        kept_id,
        {
            "update_source": "Account",
            "email_address": {"address": "kept@example.com"},
            "first_name": "K",
            "job_title": "Chef",
        },
    )
    out_id = store.add_contact("out@example.com", lists=[old], permission="unsubscribed")
    gone_id = store.add_contact("gone@example.com", deleted=True)
    long_email = "l" * 39 + "@example.com"  # 51 characters
    rows = [
        {"email": "kept@example.com", "first_name": "Kay", "cf:car": "Tesla"},
        {"email": "out@example.com"},
        {"email": long_email},
        {"email": "dup@example.com", "first_name": "First"},
        {"email": "dup@example.com", "first_name": "Last"},
        {"email": "cf@example.com", "cf:boat": "Yes"},
        {"email": "gone@example.com"},
        {"first_name": "No email"},
    ]
    done = await wait_for_activity(api, (await import_rows(api, rows, [new]))["activity_id"])
    assert done["status"] == {
        "items_total_count": 8,
        "person_count": 4,
        "error_count": 2,
        "correctable_count": 1,
        "cannot_add_to_list_count": 1,
    }
    assert any(e.startswith("Line 3: ") and "50" in e for e in done["activity_errors"])
    kept = store.get_contact(kept_id)
    assert kept.core["first_name"] == "Kay"
    assert kept.core["job_title"] == "Chef"
    assert kept.lists == [old, new]
    assert kept.subresources["custom_fields"][0]["value"] == "Tesla"
    assert store.get_contact(out_id).lists == [old]
    dup = store.contact_by_email("dup@example.com")
    assert dup is not None
    assert (dup.core["first_name"], dup.permission, dup.opt_in_source) == (
        "Last",
        "implicit",
        "Account",
    )
    assert store.contact_by_email("cf@example.com") is None
    assert store.get_contact(gone_id).deleted_at is None
    assert store.get_contact(gone_id).lists == [new]


async def test_json_import_validates_list_ids(v3: Served) -> None:
    """list_ids must hold 1-50 existing lists."""
    sim, api = v3
    lists = [sim.store.add_list(f"L{i}") for i in range(51)]
    for list_ids in ([], lists, ["00000000-0000-1000-8000-000000000000"]):
        body = {"list_ids": list_ids, "import_data": [{"email": "a@example.com"}]}
        assert (await post_json(api, "activities/contacts_json_import", body))[0] == 400


async def test_add_list_memberships_caps_and_semantics(v3: Served) -> None:
    """≤ 500 contact ids × ≤ 50 lists (else 400), exactly one source key; memberships are
    only appended, unsubscribed contacts skipped, unknown ids reported, 50 lists a cap."""
    sim, api = v3
    store = sim.store
    lists = [store.add_list(f"L{i}") for i in range(51)]
    target = lists[50]
    ids = [store.add_contact(f"a{i}@example.com", lists=[lists[0]]) for i in range(3)]
    full = store.add_contact("full@example.com", lists=lists[:50])
    out = store.add_contact("out@example.com", permission="unsubscribed")
    unknown = "00000000-0000-1000-8000-000000000000"
    path = "activities/add_list_memberships"
    too_many_lists = {"source": {"contact_ids": ids}, "list_ids": lists}
    assert (await post_json(api, path, too_many_lists))[0] == 400
    many = [f"00000000-0000-1000-8000-{i:012d}" for i in range(501)]
    assert (await post_json(api, path, {"source": {"contact_ids": many}, "list_ids": [target]}))[
        0
    ] == 400
    two_sources = {"source": {"contact_ids": ids, "list_ids": [lists[0]]}, "list_ids": [target]}
    assert (await post_json(api, path, two_sources))[0] == 400
    body = {"source": {"contact_ids": [*ids, full, out, unknown]}, "list_ids": [target]}
    _, created = await post_json(api, path, body, expect=201)
    assert created["status"] == {
        "items_total_count": 6,
        "items_completed_count": 0,
        "list_count": 1,
    }
    done = await wait_for_activity(api, created["activity_id"])
    assert done["status"]["items_completed_count"] == 6
    assert done["activity_errors"] == [f"Line 6: Contact {unknown} not found"]
    assert all(store.get_contact(i).lists == [lists[0], target] for i in ids)
    assert store.get_contact(full).lists == lists[:50]
    assert store.get_contact(out).lists == []


async def test_contact_export_and_csv_download(v3: Served) -> None:
    """An export activity completes with a results link to a CSV of the contacts."""
    sim, api = v3
    news = sim.store.add_list("News")
    sim.store.add_contact("x1@example.com", lists=[news], first_name="X")
    sim.store.add_contact("x2@example.com")
    body = {"list_ids": [news], "fields": ["email_address", "first_name", "list_memberships"]}
    _, created = await post_json(api, "activities/contact_exports", body, expect=201)
    done = await wait_for_activity(api, created["activity_id"])
    href = done["_links"]["results"]["href"]
    assert href == f"/v3/contact_exports/{created['activity_id']}"
    async with api.get(sim.origin + href) as response:
        assert response.status == 200
        assert response.content_type == "text/csv"
        table = list(csv.reader(io.StringIO(await response.text())))
    assert table == [
        ["email_address", "first_name", "list_memberships"],
        ["x1@example.com", "X", news],
    ]


async def test_destructive_activities_act_and_are_logged(v3: Served) -> None:
    """remove_list_memberships, contact_delete and list_delete exist, act, and are logged."""
    sim, api = v3
    store = sim.store
    a, b = store.add_list("A"), store.add_list("B")
    one = store.add_contact("one@example.com", lists=[a, b])
    two = store.add_contact("two@example.com", lists=[a])
    for path, body in (
        ("remove_list_memberships", {"source": {"contact_ids": [one]}, "list_ids": [a]}),
        ("contact_delete", {"contact_ids": [two]}),
        ("list_delete", {"list_ids": [b]}),
    ):
        _, created = await post_json(api, f"activities/{path}", body, expect=201)
        assert (await wait_for_activity(api, created["activity_id"]))["state"] == "completed"
    assert store.get_contact(one).lists == []
    assert store.get_contact(two).deleted_at is not None
    assert store.get_list(b, deleted=True).deleted_at is not None
    assert [w.endpoint for w in store.destructive_calls()] == [
        "activities.remove_list_memberships",
        "activities.contact_delete",
        "activities.list_delete",
    ]
