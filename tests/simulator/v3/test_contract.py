"""Every JSON body the V3 simulator produces, checked against Constant Contact's contract.

The contract (`swagger.yaml`, Swagger 2.0) is proprietary and never copied into the project:
this test reads it from the path in `CTCT_V3_CONTRACT` (`.ci/run` sets it; a relative path is
taken from the repository root) and skips, saying why, when the variable or the file is
missing. A scenario drives each route of the simulator to each status it can answer; each
answer is then checked:

* its status is one the contract declares for the operation (429 is allowed everywhere: "All
  requests that exceed a rate limit return a 429", ctct-v3-api.md §2.3), except the deviations
  listed in `DEVIATIONS`, each an [I] choice of the fact sheet;
* a body the contract gives a schema for is validated against it with jsonschema (Draft 4,
  which Swagger 2.0 schemas follow), `$ref`s resolved in the contract's `definitions`, and
  made strict: an object may carry only the properties its schema declares;
* an error body without a schema is an `APIErrorSchema` (array) or, for 401 and 429, an
  `AuthorizationErrorSchema` (object), as §2.2 says.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml

from engine.simulator.v3 import RunningSimulator

from .conftest import FakeClock, V3Starter, open_session, wait_for_activity

CONTRACT_ENV = "CTCT_V3_CONTRACT"
REPO = Path(__file__).resolve().parents[3]
#: (method, contract path, status): statuses the contract does not declare, and why.
DEVIATIONS = {
    ("PUT", "/contact_lists/{list_id}", 409): "a rename to a taken name: 409 [I] (§4.1)",
}


@pytest.fixture(scope="module")
def contract() -> dict[str, Any]:
    """The contract document, or a skip that says why it is not here."""
    setting = os.environ.get(CONTRACT_ENV)
    if not setting:
        pytest.skip(
            f"{CONTRACT_ENV} is not set: this test needs Constant Contact's V3 contract "
            "(swagger.yaml), which the project must not contain; .ci/run points it at "
            "../shared/reference/ctct-v3-contract/swagger.yaml"
        )
    path = Path(setting)
    if not path.is_absolute():
        path = REPO / path
    if not path.is_file():
        pytest.skip(
            f"{CONTRACT_ENV}={setting}: no such file ({path}), so the contract test cannot run"
        )
    with path.open(encoding="utf-8") as handle:
        document: dict[str, Any] = yaml.safe_load(handle)
    assert document["swagger"] == "2.0"
    return document


@dataclass(frozen=True, slots=True)
class Answer:
    """One recorded answer of the simulator."""

    method: str
    path: str
    status: int
    content_type: str
    body: Any


class Recorder:
    """Sends requests and keeps every answer for the checks."""

    def __init__(self, sim: RunningSimulator, session: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.session = session
        self.answers: list[Answer] = []

    async def call(
        self, method: str, path: str, *, expect: int | tuple[int, ...], **kwargs: Any
    ) -> Any:
        """Send one request; assert its status (one of `expect`); return the JSON (or text)
        body."""
        url = path if path.startswith("http") else self.sim.base_url + path.removeprefix("/v3/")
        async with self.session.request(method, url, **kwargs) as response:
            text = await response.text()
            body: Any = text
            if response.content_type == "application/json":
                body = await response.json()
            self.answers.append(
                Answer(method, response.url.path, response.status, response.content_type, body)
            )
            allowed = expect if isinstance(expect, tuple) else (expect,)
            assert response.status in allowed, (method, path, body)
            return body


def _strict(schema: Any) -> Any:
    """A copy in which every object schema with `properties` allows no other property."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _operation(contract: dict[str, Any], method: str, path: str) -> tuple[str, dict[str, Any]]:
    """The contract path template and operation for a request path under `/v3`."""
    relative = path.removeprefix("/v3")
    templates = [t for t in contract["paths"] if method.lower() in contract["paths"][t]]
    exact = [t for t in templates if t == relative]
    matching = exact or [
        t for t in templates if re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", t), relative)
    ]
    assert matching, f"{method} {path} is not an operation of the contract"
    template = matching[0]
    return template, contract["paths"][template][method.lower()]


def _check(contract: dict[str, Any], answers: list[Answer]) -> Iterator[str]:
    """Problems found in the answers (none expected)."""
    definitions = _strict(contract["definitions"])

    def validate(schema: dict[str, Any], body: Any) -> list[str]:
        root = {"definitions": definitions, "allOf": [_strict(schema)]}
        validator = jsonschema.Draft4Validator(
            root, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER
        )
        return [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(body)
        ]

    for answer in answers:
        template, operation = _operation(contract, answer.method, answer.path)
        where = f"{answer.method} {template} {answer.status}"
        declared = operation["responses"]
        undeclared = str(answer.status) not in declared and answer.status != 429
        if undeclared and (answer.method, template, answer.status) not in DEVIATIONS:
            yield f"{where}: status not declared by the contract"
        schema = declared.get(str(answer.status), {}).get("schema")
        if answer.status == 204:
            if answer.body != "":
                yield f"{where}: a 204 with a body"
            continue
        if answer.content_type != "application/json":
            produces = operation.get("produces", contract["produces"])
            if answer.content_type not in produces:
                yield f"{where}: {answer.content_type} is not one of {produces}"
            for problem in validate(schema or {}, answer.body):
                yield f"{where}: {problem}"
            continue
        if schema is None and answer.status >= 400:
            name = "AuthorizationErrorSchema" if answer.status in (401, 429) else "APIErrorSchema"
            schema = {"$ref": f"#/definitions/{name}"}
        if schema is None:
            yield f"{where}: a JSON body where the contract has no schema"
            continue
        for problem in validate(schema, answer.body):
            yield f"{where}: {problem}"


async def _scenario(rec: Recorder) -> None:
    """Drive every route to every status the simulator answers with."""
    sim, store = rec.sim, rec.sim.store
    tag = "e7ddac60-51da-11eb-b3a4-fa163e6b01c1"
    field_id = store.create_custom_field("car")
    unknown = "00000000-0000-1000-8000-000000000000"
    # Lists.
    news = (await rec.call("POST", "contact_lists", json={"name": "News"}, expect=201))["list_id"]
    other = (await rec.call("POST", "contact_lists", json={"name": "Other"}, expect=201))["list_id"]
    await rec.call("POST", "contact_lists", json={"name": "news"}, expect=409)
    await rec.call("POST", "contact_lists", json={"favorite": True}, expect=400)
    await rec.call("PUT", f"contact_lists/{other}", json={"name": "Others"}, expect=200)
    await rec.call("PUT", f"contact_lists/{other}", json={"name": "News"}, expect=409)
    await rec.call("PUT", f"contact_lists/{unknown}", json={"name": "X"}, expect=404)
    await rec.call(
        "GET", f"contact_lists/{news}", params={"include_membership_count": "all"}, expect=200
    )
    await rec.call("GET", f"contact_lists/{unknown}", expect=404)
    # Contacts.
    full = {
        "create_source": "Account",
        "email_address": {"address": "full@example.com", "permission_to_send": "explicit"},
        "first_name": "Ful",
        "last_name": "Contact",
        "job_title": "Chef",
        "company_name": "Acme",
        "birthday_month": 11,
        "birthday_day": 24,
        "anniversary": "2006-11-15",
        "list_memberships": [news],
        "taggings": [tag],
        "custom_fields": [{"custom_field_id": field_id, "value": "Tesla"}],
        "phone_numbers": [{"phone_number": "+1-555-555-5555", "kind": "home"}],
        "street_addresses": [{"kind": "home", "street": "1 Main St", "city": "Chicago"}],
        "notes": [{"content": "A note"}],
        "sms_channel": {"full_sms_address": "7815551212", "sms_channel_consents": []},
    }
    contact = await rec.call("POST", "contacts", json=full, expect=201)
    contact_id = contact["contact_id"]
    await rec.call("POST", "contacts", json=full, expect=409)
    await rec.call("POST", "contacts", json={"first_name": "No source"}, expect=400)
    await rec.call(
        "POST", "contacts", data="{}", headers={"Content-Type": "text/plain"}, expect=415
    )
    everything = "custom_fields,list_memberships,phone_numbers,street_addresses,taggings,notes"
    await rec.call("GET", f"contacts/{contact_id}", params={"include": everything}, expect=200)
    await rec.call("GET", "contacts/not-a-uuid", expect=404)
    put = {key: contact[key] for key in ("email_address", "first_name", "last_name")}
    put |= {"update_source": "Account", "list_memberships": [news, other]}
    await rec.call("PUT", f"contacts/{contact_id}", json=put, expect=200)
    await rec.call("PUT", f"contacts/{contact_id}", json={"update_source": "Account"}, expect=400)
    await rec.call("PUT", f"contacts/{unknown}", json=put, expect=404)
    second = store.add_contact("second@example.com", lists=[news])
    taken = put | {"email_address": {"address": "second@example.com"}}
    await rec.call("PUT", f"contacts/{contact_id}", json=taken, expect=409)
    store.add_contact("out@example.com", permission="unsubscribed")
    signup = {"email_address": "new@example.com", "list_memberships": [news], "first_name": "N"}
    await rec.call("POST", "contacts/sign_up_form", json=signup, expect=201)
    await rec.call("POST", "contacts/sign_up_form", json=signup, expect=200)
    await rec.call("POST", "contacts/sign_up_form", json={"email_address": "x@e.co"}, expect=400)
    await rec.call("DELETE", f"contacts/{second}", expect=204)
    await rec.call("DELETE", f"contacts/{second}", expect=404)
    await rec.call("GET", f"contacts/{second}", params={"include": "list_memberships"}, expect=200)
    page = await rec.call(
        "GET",
        "contacts",
        params={"status": "all", "include": everything, "include_count": "true", "limit": "2"},
        expect=200,
    )
    await rec.call("GET", sim.origin + page["_links"]["next"]["href"], expect=200)
    await rec.call("GET", "contacts", params={"email": "full@example.com"}, expect=200)
    await rec.call("GET", "contacts", params={"limit": "501"}, expect=400)
    await rec.call("GET", "contacts", params={"segment_id": "14"}, expect=404)
    await rec.call("GET", "contacts/counts", params={"include": "new_subscriber"}, expect=200)
    await rec.call(
        "GET",
        "contact_lists",
        params={"include_count": "true", "include_membership_count": "active"},
        expect=200,
    )
    await rec.call("GET", "contact_lists", params={"status": "nope"}, expect=400)
    await rec.call("GET", "account/summary", expect=200)
    # Activities.
    activities = []
    rows = [{"email": "i1@example.com", "cf:car": "Saab"}, {"email": "l" * 60 + "@example.com"}]
    body = {"list_ids": [news], "import_data": rows}
    activities.append(
        await rec.call("POST", "activities/contacts_json_import", json=body, expect=201)
    )
    await rec.call(
        "POST", "activities/contacts_json_import", json={"import_data": rows}, expect=400
    )
    source = {"source": {"contact_ids": [contact_id, unknown]}, "list_ids": [other]}
    activities.append(
        await rec.call("POST", "activities/add_list_memberships", json=source, expect=201)
    )
    await rec.call(
        "POST", "activities/add_list_memberships", json={"list_ids": [other]}, expect=400
    )
    remove = {"source": {"contact_ids": [contact_id]}, "list_ids": [other]}
    activities.append(
        await rec.call("POST", "activities/remove_list_memberships", json=remove, expect=201)
    )
    export = {"fields": ["email_address", "first_name"]}
    activities.append(await rec.call("POST", "activities/contact_exports", json=export, expect=201))
    deleted = await rec.call(
        "POST", "activities/contact_delete", json={"contact_ids": [second]}, expect=201
    )
    activities.append(deleted)
    doomed = store.add_list("Doomed")
    activities.append(
        await rec.call("POST", "activities/list_delete", json={"list_ids": [doomed]}, expect=201)
    )
    await rec.call("DELETE", f"contact_lists/{other}", expect=202)
    await rec.call("DELETE", f"contact_lists/{other}", expect=404)
    for activity in activities:
        await wait_for_activity(rec.session, activity["activity_id"])
        await rec.call("GET", f"activities/{activity['activity_id']}", expect=200)
    await rec.call("GET", f"activities/{unknown}", expect=404)
    listing = await rec.call("GET", "activities", params={"limit": "3"}, expect=200)
    await rec.call("GET", sim.origin + listing["_links"]["next"]["href"], expect=200)
    await rec.call("GET", "activities", params={"state": "nope"}, expect=400)
    export_id = activities[3]["activity_id"]
    await rec.call("GET", f"contact_exports/{export_id}", expect=200)
    await rec.call("GET", f"contact_exports/{unknown}", expect=404)
    await rec.call("GET", "contact_lists", params={"status": "all"}, expect=200)


async def test_every_body_matches_the_contract(
    contract: dict[str, Any], start_v3: V3Starter, clock: FakeClock
) -> None:
    """Each route's answers, at each status the simulator produces, carry a status the
    contract declares and a body its schemas accept."""
    answers: list[Answer] = []
    async with start_v3(seed=5) as (sim, api):
        recorder = Recorder(sim, api)
        await _scenario(recorder)
        async with open_session(sim) as anonymous:
            await Recorder(sim, anonymous).call("GET", "contacts", expect=401)
        token = sim.issue_tokens(("account_read",)).access_token
        async with open_session(sim, token) as unscoped:
            scoped = Recorder(sim, unscoped)
            await scoped.call("GET", "contacts", expect=403)
            answers += scoped.answers
        answers += recorder.answers
    async with start_v3(rps=1.0, activity_queue_cap=1, activity_delay=1000.0) as (sim, api):
        recorder = Recorder(sim, api)
        news = sim.store.add_list("News")
        body = {"list_ids": [news], "import_data": [{"email": "q@example.com"}]}
        await recorder.call("POST", "activities/contacts_json_import", json=body, expect=201)
        await recorder.call("GET", "contacts", expect=429)
        clock.advance(1)
        await recorder.call("POST", "activities/contacts_json_import", json=body, expect=429)
        answers += recorder.answers
    async with start_v3(error_rate=1.0) as (sim, api):
        recorder = Recorder(sim, api)
        for _ in range(4):
            await recorder.call("GET", "contacts", expect=(500, 503))
        answers += recorder.answers
    # The checks are not vacuous: an undeclared property and a wrong type are caught.
    bogus = Answer("GET", "/v3/contacts", 200, "application/json", {"contacts": [{"x": 1}]})
    wrong = Answer("GET", "/v3/activities", 200, "application/json", {"activities": 3})
    assert len(list(_check(contract, [bogus, wrong]))) == 2
    problems = list(_check(contract, answers))
    assert problems == [], "\n".join(problems)
    routes = {(a.method, _operation(contract, a.method, a.path)[0]) for a in answers}
    assert len(routes) == 22
