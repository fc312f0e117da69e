"""The naive baseline: the support thread's algorithm, written plainly with aiohttp.

For each contact, one after the other: search its email, GET the entry found, append the
target list to its `ContactLists`, PUT it back (POST a new contact when the search finds
nothing). One request in flight, one email per search, a full XML parse and re-serialise
per contact (ElementTree), no batching, no bulk. It does keep the other lists, which the
thread's first version did not; its cost is what is measured. `run_naive_v3` is the same
loop on the V3 API (a search that gives the lists, then the whole-contact PUT).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

import aiohttp

from benchmarks.ceiling import list_uri, read_emails, v3_new_body, v3_put_body
from benchmarks.child import CREDENTIALS, v3_access_token

if TYPE_CHECKING:
    from benchmarks.child import Job

__all__ = ["run_naive", "run_naive_v3"]

ATOM_NS = "http://www.w3.org/2005/Atom"
CTCT_NS = "http://ws.constantcontact.com/ns/1.0/"
NS = {"atom": ATOM_NS, "cc": CTCT_NS}
HEADERS = {"Content-Type": "application/atom+xml"}

ET.register_namespace("", ATOM_NS)
ET.register_namespace("cc", CTCT_NS)


def new_contact(email: str, target: str) -> bytes:
    """A POST body for a new contact on `target`."""
    entry = ET.Element(f"{{{ATOM_NS}}}entry")
    ET.SubElement(entry, f"{{{ATOM_NS}}}title").text = " "
    ET.SubElement(entry, f"{{{ATOM_NS}}}updated").text = "2000-01-01T00:00:00.000Z"
    ET.SubElement(entry, f"{{{ATOM_NS}}}author")
    ET.SubElement(entry, f"{{{ATOM_NS}}}id").text = "data:,none"
    content = ET.SubElement(entry, f"{{{ATOM_NS}}}content", type="application/vnd.ctct+xml")
    contact = ET.SubElement(content, f"{{{CTCT_NS}}}Contact")
    ET.SubElement(contact, f"{{{CTCT_NS}}}EmailAddress").text = email
    ET.SubElement(contact, f"{{{CTCT_NS}}}OptInSource").text = "ACTION_BY_CUSTOMER"
    lists = ET.SubElement(contact, f"{{{CTCT_NS}}}ContactLists")
    ET.SubElement(lists, f"{{{CTCT_NS}}}ContactList", id=target)
    return ET.tostring(entry)


def with_list(entry_xml: bytes, target: str) -> bytes:
    """The entry with `target` appended to its lists."""
    entry = ET.fromstring(entry_xml)
    contact = entry.find("atom:content/cc:Contact", NS)
    assert contact is not None, "an entry without a Contact"
    lists = contact.find("cc:ContactLists", NS)
    if lists is None:
        lists = ET.SubElement(contact, f"{{{CTCT_NS}}}ContactLists")
    ET.SubElement(lists, f"{{{CTCT_NS}}}ContactList", id=target)
    return ET.tostring(entry)


async def run_naive(job: Job) -> dict[str, Any]:
    """Migrate the first `job.limit` rows of `job.source`, one contact at a time."""
    sent = 0
    counts = {"created": 0, "updated": 0}
    context = ssl.create_default_context(cafile=job.ca_path)
    headers = {"Accept": "application/atom+xml", "Authorization": CREDENTIALS.auth()}
    base = job.base_url

    async def call(
        session: aiohttp.ClientSession, method: str, url: str, body: bytes | None = None
    ) -> bytes:
        nonlocal sent
        sent += 1
        async with session.request(
            method, url, data=body, headers=HEADERS if body else None
        ) as answer:
            answer.raise_for_status()
            return await answer.read()

    cpu, wall = time.process_time(), time.perf_counter()
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        target = list_uri(await call(session, "GET", f"{base}lists"), job.lists[0])
        emails = await asyncio.to_thread(read_emails, job.source, job.limit)
        for email in emails:
            feed = ET.fromstring(await call(session, "GET", f"{base}contacts?email={email}"))
            found = feed.find("atom:entry/atom:id", NS)
            if found is None or not found.text:
                await call(session, "POST", f"{base}contacts", new_contact(email, target))
                counts["created"] += 1
                continue
            url = f"{base}contacts/{found.text.rsplit('/', 1)[1]}"
            entry = await call(session, "GET", url)
            await call(session, "PUT", url, with_list(entry, target))
            counts["updated"] += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "rows": len(emails),
        "outcomes": {k: v for k, v in counts.items() if v},
        "requests": sent,
    }


async def run_naive_v3(job: Job) -> dict[str, Any]:
    """The same loop on the V3 API: for each contact, one after the other, search its email
    (`GET /contacts?email=…&include=list_memberships`, which gives its lists), then PUT the
    whole contact back with the target list added (`POST /contacts` when the search finds
    nothing). One request in flight, no appends, no bulk: the loop a V3 tutorial gives."""
    sent = 0
    counts = {"created": 0, "updated": 0}
    context = ssl.create_default_context(cafile=job.ca_path)
    token = v3_access_token(job)
    headers = {"Accept": "application/json", "Authorization": f"Bearer {token}"}
    base = job.base_url

    async def call(
        session: aiohttp.ClientSession, method: str, url: str, body: bytes | None = None
    ) -> Any:
        nonlocal sent
        sent += 1
        extra = {"Content-Type": "application/json"} if body else None
        async with session.request(method, url, data=body, headers=extra) as answer:
            answer.raise_for_status()
            return json.loads(await answer.read())

    cpu, wall = time.process_time(), time.perf_counter()
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        lists = await call(session, "GET", f"{base}contact_lists")
        target = next(x["list_id"] for x in lists["lists"] if x["name"] == job.lists[0])
        emails = await asyncio.to_thread(read_emails, job.source, job.limit)
        for email in emails:
            query = f"email={email}&status=all&include=list_memberships"
            found = (await call(session, "GET", f"{base}contacts?{query}"))["contacts"]
            if not found:
                await call(session, "POST", f"{base}contacts", v3_new_body(email, target))
                counts["created"] += 1
                continue
            url = f"{base}contacts/{found[0]['contact_id']}"
            await call(session, "PUT", url, v3_put_body(found[0], target))
            counts["updated"] += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "rows": len(emails),
        "outcomes": {k: v for k, v in counts.items() if v},
        "requests": sent,
    }
