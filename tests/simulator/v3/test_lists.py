"""Contact lists: exact name lookup, unique names, the 1,000-list cap, DELETE as an activity."""

from __future__ import annotations

import aiohttp

from engine.simulator.v3 import RunningSimulator

from .conftest import V3Starter, get_json, post_json, put_json, wait_for_activity

Served = tuple[RunningSimulator, aiohttp.ClientSession]


async def test_exact_name_lookup_and_duplicate_names(v3: Served) -> None:
    """`?name=` matches the full name only; a duplicate name (any case) is 409; a rename to a
    taken name is 409 too."""
    _, api = v3
    _, created = await post_json(api, "contact_lists", {"name": "Customers"}, expect=201)
    assert created["favorite"] is False
    await post_json(api, "contact_lists", {"name": "Customers 2024"}, expect=201)
    found = await get_json(api, "contact_lists", name="Customers")
    assert [s["list_id"] for s in found["lists"]] == [created["list_id"]]
    assert (await get_json(api, "contact_lists", name="Custom"))["lists"] == []
    status, body = await post_json(api, "contact_lists", {"name": "customers"})
    assert status == 409
    assert isinstance(body, list)
    status, _ = await put_json(
        api, f"contact_lists/{created['list_id']}", {"name": "Customers 2024"}
    )
    assert status == 409
    assert (await post_json(api, "contact_lists", {"favorite": True}))[0] == 400


async def test_list_cap_is_1000(v3: Served) -> None:
    """The 1,001st list is refused with 400 (the default of the [U] cap behaviour)."""
    sim, api = v3
    for number in range(1000):
        sim.store.add_list(f"List {number}")
    status, body = await post_json(api, "contact_lists", {"name": "One too many"})
    assert status == 400
    assert body[0]["error_key"] == "contact_lists.api.limit"


async def test_membership_counts_status_and_paging(v3: Served) -> None:
    """`include_membership_count` and `include_count` count; deleted lists show only with
    status=deleted or all; pages follow `_links.next.href`; limit over 500 is 400."""
    sim, api = v3
    ids = [sim.store.add_list(f"L{i}") for i in range(5)]
    sim.store.add_contact("m@example.com", lists=ids[:2])
    sim.store.delete_list(ids[4])
    page = await get_json(
        api, "contact_lists", limit="2", include_count="true", include_membership_count="all"
    )
    assert page["lists_count"] == 4
    assert [s["membership_count"] for s in page["lists"]] == [1, 1]
    second = await get_json(api, sim.origin + page["_links"]["next"]["href"])
    assert [s["list_id"] for s in second["lists"]] == ids[2:4]
    assert second["_links"] == {}
    deleted = await get_json(api, "contact_lists", status="deleted")
    assert [s["list_id"] for s in deleted["lists"]] == [ids[4]]
    await get_json(api, "contact_lists", limit="501", expect=400)
    await get_json(api, f"contact_lists/{ids[4]}", expect=404)
    one = await get_json(api, f"contact_lists/{ids[0]}", include_membership_count="active")
    assert one["membership_count"] == 1


async def test_delete_list_is_an_activity_that_strips_memberships(v3: Served) -> None:
    """DELETE answers 202 with a Location and an activity; once it completes no contact is
    on the list; the call is logged as destructive."""
    sim, api = v3
    doomed, kept = sim.store.add_list("Doomed"), sim.store.add_list("Kept")
    contact_id = sim.store.add_contact("x@example.com", lists=[doomed, kept])
    async with api.delete(f"contact_lists/{doomed}") as response:
        assert response.status == 202
        body = await response.json()
        assert response.headers["Location"] == f"/v3/activities/{body['activity_id']}"
    done = await wait_for_activity(api, body["activity_id"])
    assert done["state"] == "completed"
    assert sim.store.get_contact(contact_id).lists == [kept]
    assert [w.endpoint for w in sim.store.destructive_calls()] == ["contact_lists.delete"]


async def test_deleted_names_may_be_reused_unless_configured(start_v3: V3Starter) -> None:
    """A deleted list's name is free again by default; `deleted_list_names_block` keeps it."""
    for block, status in ((False, 201), (True, 409)):
        async with start_v3(deleted_list_names_block=block) as (sim, api):
            sim.store.delete_list(sim.store.add_list("Old"))
            assert (await post_json(api, "contact_lists", {"name": "Old"}))[0] == status
