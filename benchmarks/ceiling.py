"""The ceiling: the engine's HTTP requests from a bare aiohttp loop, with no engine logic.

Same requests as the engine's per-contact path, at the same concurrency: one search of up
to 50 emails, then for each contact found a GET of its entry and a PUT of that entry with
the target list spliced in (no PUT when the workload's contacts are already on it); a POST
for each email not found. Same shape as the engine: `max(4, c // 16)` search workers, each
GETting the contacts its search found at once, and `c` write workers; at most `c`
requests in flight. What it leaves out is everything else: no parsing beyond two regular
expressions, no merge proof, retries, governor, outcomes, report or progress. It is the
most any Python client on this loop and this machine can get from the simulator.

`run_ceiling_v3` does the same for the V3 API's requests (see its docstring).
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
import ssl
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from benchmarks.child import CREDENTIALS, v3_access_token

if TYPE_CHECKING:
    from benchmarks.child import Job

__all__ = ["run_ceiling", "run_ceiling_v3", "v3_new_body", "v3_put_body"]

ATOM = "application/atom+xml"
_FOUND = re.compile(rb"<id>[^<]*/contacts/(\d+)</id>")
_EMAIL = re.compile(rb"<EmailAddress>([^<]*)</EmailAddress>")
_NEW_CONTACT = (
    '<entry xmlns="http://www.w3.org/2005/Atom"><title type="text"> </title>'
    "<updated>2000-01-01T00:00:00.000Z</updated><author></author><id>data:,none</id>"
    '<summary type="text">Contact</summary><content type="application/vnd.ctct+xml">'
    '<Contact xmlns="http://ws.constantcontact.com/ns/1.0/"><EmailAddress>{email}'
    "</EmailAddress><FirstName>Bench</FirstName><OptInSource>ACTION_BY_CUSTOMER</OptInSource>"
    '<ContactLists><ContactList id="{list_uri}" /></ContactLists></Contact></content></entry>'
)


def read_emails(source: str, limit: int | None = None) -> list[str]:
    """The first column of a CSV source (its first `limit` rows), without the header."""
    with open(source, newline="") as file:
        rows = csv.reader(file)
        next(rows)
        return [row[0].strip().lower() for row in rows][:limit]


def list_uri(feed: bytes, name: str) -> str:
    """The id URI of the list called `name` in a lists feed."""
    found = re.search(
        rb"<id>([^<]*/lists/\d+)</id>\s*<title[^>]*>" + re.escape(name.encode()) + rb"</title>",
        feed,
    )
    if found is None:
        raise LookupError(f"no list {name!r} in the lists feed")
    return found.group(1).decode()


async def run_ceiling(job: Job) -> dict[str, Any]:
    """Do the engine's requests for `job.source` as fast as a bare loop can."""
    c = job.concurrency
    gate = asyncio.Semaphore(c)
    sent = 0
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    context = ssl.create_default_context(cafile=job.ca_path)
    connector = aiohttp.TCPConnector(ssl=context, limit=0, keepalive_timeout=30)
    headers = {"Accept": ATOM, "Authorization": CREDENTIALS.auth()}
    put_headers = {"Content-Type": ATOM}
    base = job.base_url
    writes: asyncio.Queue[tuple[str, bytes | None] | None] = asyncio.Queue(1024)

    async def request(
        session: aiohttp.ClientSession, method: str, url: str, data: bytes | None = None
    ) -> bytes:
        nonlocal sent
        async with gate:
            sent += 1
            async with session.request(
                method, url, data=data, headers=put_headers if data else None
            ) as answer:
                body = await answer.read()
                if answer.status >= 300:
                    raise RuntimeError(f"{method} {url}: {answer.status}")
                return body

    async def search(session: aiohttp.ClientSession, emails: list[str]) -> None:
        query = "&".join("email=" + quote(e, safe="") for e in emails)
        feed = await request(session, "GET", f"{base}contacts?{query}")
        found = _FOUND.findall(feed)
        known = set(_EMAIL.findall(feed))

        async def get(key: bytes) -> None:
            entry = await request(session, "GET", f"{base}contacts/{key.decode()}")
            await writes.put((key.decode(), entry))

        async with asyncio.TaskGroup() as tg:
            for key in found:
                tg.create_task(get(key))
        for email in emails:
            if email.encode() not in known:
                await writes.put((email, None))

    async def searcher(session: aiohttp.ClientSession, chunks: list[list[str]]) -> None:
        while chunks:
            await search(session, chunks.pop())

    async def writer(session: aiohttp.ClientSession, target: str) -> None:
        element = f'<ContactList id="{target}" />'.encode()
        while (item := await writes.get()) is not None:
            key, entry = item
            if entry is None:
                body = _NEW_CONTACT.format(email=key, list_uri=target).encode()
                await request(session, "POST", f"{base}contacts", body)
                counts["created"] += 1
            elif not job.write_existing:
                counts["unchanged"] += 1
            else:
                body = entry.replace(b"</ContactLists>", element + b"</ContactLists>", 1)
                await request(session, "PUT", f"{base}contacts/{key}", body)
                counts["updated"] += 1

    cpu, wall = time.process_time(), time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        await request(session, "GET", base)
        target = list_uri(await request(session, "GET", f"{base}lists"), job.lists[0])
        emails = await asyncio.to_thread(read_emails, job.source, job.limit)
        chunks = [emails[i : i + 50] for i in range(0, len(emails), 50)][::-1]
        async with asyncio.TaskGroup() as tg:
            searchers = [tg.create_task(searcher(session, chunks)) for _ in range(max(4, c // 16))]
            writers = [tg.create_task(writer(session, target)) for _ in range(c)]
            await asyncio.gather(*searchers)
            for _ in writers:
                await writes.put(None)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "rows": len(emails),
        "outcomes": {k: v for k, v in counts.items() if v},
        "requests": sent,
    }


# --- V3 ---------------------------------------------------------------------------------------

JSON = "application/json"
#: What the engine's lookup includes (the lists, and what a field write would resend).
V3_INCLUDE = "list_memberships,phone_numbers,street_addresses"
#: Contact ids per `add_list_memberships` (the API's cap, the engine's batch).
V3_APPEND_MAX = 500
#: The core properties a V3 PUT resends (it nulls those it does not receive).
V3_CORE = (
    "first_name",
    "last_name",
    "job_title",
    "company_name",
    "birthday_month",
    "birthday_day",
    "anniversary",
)


def v3_put_body(contact: dict[str, Any], target: str) -> bytes:
    """The whole-contact PUT of a looked-up contact with `target` added to its lists."""
    email = contact["email_address"]
    body: dict[str, Any] = {
        "email_address": {
            "address": email["address"],
            "permission_to_send": email.get("permission_to_send"),
        }
    }
    for name in V3_CORE:
        if contact.get(name) is not None:
            body[name] = contact[name]
    body["list_memberships"] = [*contact.get("list_memberships", []), target]
    body["update_source"] = "Account"
    return json.dumps(body, separators=(",", ":")).encode()


def v3_new_body(email: str, target: str) -> bytes:
    """A `POST /contacts` body: an owner's import of a new contact onto `target`."""
    body = {
        "email_address": {"address": email, "permission_to_send": "implicit"},
        "create_source": "Account",
        "first_name": "Bench",
        "list_memberships": [target],
    }
    return json.dumps(body, separators=(",", ":")).encode()


async def run_ceiling_v3(job: Job) -> dict[str, Any]:
    """Do the engine's V3 requests for `job.source` as fast as a bare loop can.

    `c` workers, each taking the next email: `GET /contacts?email=…&status=all&include=…`
    (one address a search, the lists included), then by what it found: nothing for a
    contact already on the target (`write_existing` False); its id into the open append
    batch (`job.append`: `POST /activities/add_list_memberships` of 500 ids, the last batch
    at the end of the input, each polled with `GET /activities/{id}` from 0.2 s, each wait
    half as long again up to 1 s, as the engine's settings and schedule in this harness) or
    its PUT with the target added; a
    `POST /contacts` for an email not found. At most `c` requests in flight.
    """
    c = job.concurrency
    gate = asyncio.Semaphore(c)
    sent = 0
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    context = ssl.create_default_context(cafile=job.ca_path)
    connector = aiohttp.TCPConnector(ssl=context, limit=0, keepalive_timeout=30)
    token = v3_access_token(job)
    headers = {"Accept": JSON, "Authorization": f"Bearer {token}"}
    body_headers = {"Content-Type": JSON}
    base = job.base_url
    batch: list[str] = []
    appends: list[asyncio.Task[None]] = []

    async def request(
        session: aiohttp.ClientSession, method: str, url: str, data: bytes | None = None
    ) -> Any:
        nonlocal sent
        async with gate:
            sent += 1
            async with session.request(
                method, url, data=data, headers=body_headers if data else None
            ) as answer:
                body = await answer.read()
                if answer.status >= 300:
                    raise RuntimeError(f"{method} {url}: {answer.status} {body[:200]!r}")
                return json.loads(body) if body else None

    async def append(session: aiohttp.ClientSession, ids: list[str], target: str) -> None:
        data = json.dumps({"source": {"contact_ids": ids}, "list_ids": [target]}).encode()
        activity = await request(session, "POST", f"{base}activities/add_list_memberships", data)
        delay = 0.2
        while activity.get("state") not in ("completed", "failed", "cancelled", "timed_out"):
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 1.5)  # the engine's MigrationConfig.next_poll
            activity = await request(session, "GET", f"{base}activities/{activity['activity_id']}")
        counts["updated"] += len(ids)

    async def worker(session: aiohttp.ClientSession, emails: list[str], target: str) -> None:
        while emails:
            email = emails.pop()
            page = await request(
                session,
                "GET",
                f"{base}contacts?email={quote(email, safe='')}&status=all&include={V3_INCLUDE}",
            )
            found = page["contacts"]
            if not found:
                await request(session, "POST", f"{base}contacts", v3_new_body(email, target))
                counts["created"] += 1
            elif not job.write_existing:
                counts["unchanged"] += 1
            elif job.append:
                batch.append(found[0]["contact_id"])
                if len(batch) >= V3_APPEND_MAX:
                    ids = batch[:]
                    batch.clear()
                    appends.append(asyncio.create_task(append(session, ids, target)))
            else:
                contact_id = found[0]["contact_id"]
                body = v3_put_body(found[0], target)
                await request(session, "PUT", f"{base}contacts/{contact_id}", body)
                counts["updated"] += 1

    cpu, wall = time.process_time(), time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        # The engine's set-up: a check of the token, then the lists.
        await request(session, "GET", f"{base}contact_lists?limit=1")
        lists = await request(session, "GET", f"{base}contact_lists?limit=500")
        target = next(x["list_id"] for x in lists["lists"] if x["name"] == job.lists[0])
        emails = (await asyncio.to_thread(read_emails, job.source, job.limit))[::-1]
        rows = len(emails)
        async with asyncio.TaskGroup() as tg:
            for _ in range(c):
                tg.create_task(worker(session, emails, target))
        if batch:
            appends.append(asyncio.create_task(append(session, batch[:], target)))
        await asyncio.gather(*appends)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "rows": rows,
        "outcomes": {k: v for k, v in counts.items() if v},
        "requests": sent,
    }
