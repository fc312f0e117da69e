"""The V3 contact document and bulk bodies, pure: no I/O, no client.

Everything here turns JSON the API sent into neutral records, or neutral records into JSON
the API will receive: the status of a contact, its fields under the engine's names, the safe
`PUT /contacts/{id}` body and its proof, the `POST /contacts` body, the
`contacts_json_import` body, and an activity's neutral form (`ctct-v3-api.md` §3, §5, §9).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine import fastjson
from engine.backend._bulk import slices
from engine.backend.protocol import (
    ActivityState,
    BulkActivity,
    ContactRef,
    ContactState,
    ContactStatus,
    ListId,
)
from engine.errors import ActivityTooLargeError, MalformedResponseError, UnsafeMergeError

__all__ = [
    "APPEND_MAX_IDS",
    "CORE_PROPERTIES",
    "FIELD_LIMITS",
    "IMPORT_EMAIL_MAX",
    "IMPORT_MAX_BYTES",
    "IMPORT_MAX_ROWS",
    "LISTS_PER_CONTACT",
    "JsonImport",
    "V3Activity",
    "Version",
    "activity_state",
    "append_body",
    "bulk_activity",
    "contact_permission",
    "contact_state",
    "contact_status",
    "create_body",
    "encode_import",
    "is_import_activity",
    "member_email",
    "member_state",
    "put_body",
]

#: The core properties a PUT nulls unless they are sent again (§3.5): every one present in the
#: contact as read is resent verbatim. `email_address` is handled on its own.
CORE_PROPERTIES: tuple[str, ...] = (
    "first_name",
    "last_name",
    "job_title",
    "company_name",
    "birthday_month",
    "birthday_day",
    "anniversary",
)

#: A contact can be on at most 50 lists (§4.2, `maxItems: 50`).
LISTS_PER_CONTACT = 50
#: Contact ids per `add_list_memberships` (§5.4).
APPEND_MAX_IDS = 500
#: `contacts_json_import` caps (§5.2): rows, and a body that must stay under 4 MB, since the
#: server silently drops what lies beyond.
IMPORT_MAX_ROWS = 40_000
IMPORT_MAX_BYTES = 4_000_000
#: An import row's `email` takes 50 characters where a contact takes 80 (§5.2).
IMPORT_EMAIL_MAX = 50

#: Engine field (the v1 element name) -> where V3 keeps it: ("core", property), ("phone",
#: kind) or ("address", part of the home address), and its json-import column. Only fields
#: V3 can hold on both paths are here: MiddleName, Addr2/Addr3, StateName, SubPostalCode,
#: Note and the custom fields have no column that a PUT and an import would both write the
#: same way, so V3 declares them not writable (the pipeline then leaves them alone).
_FIELDS: dict[str, tuple[str, str, str]] = {
    "FirstName": ("core", "first_name", "first_name"),
    "LastName": ("core", "last_name", "last_name"),
    "JobTitle": ("core", "job_title", "job_title"),
    "CompanyName": ("core", "company_name", "company_name"),
    "HomePhone": ("phone", "home", "home_phone"),
    "WorkPhone": ("phone", "work", "work_phone"),
    "Addr1": ("address", "street", "street"),
    "City": ("address", "city", "city"),
    "StateCode": ("address", "state", "state"),
    "PostalCode": ("address", "postal_code", "zip"),
    "CountryCode": ("address", "country", "country"),
}

#: The longest value V3 accepts for each writable field (§3.1: core strings 50, a contact's
#: phone number 25 where the import takes 50, street 255, the other address parts 50).
FIELD_LIMITS: dict[str, int] = {
    "FirstName": 50,
    "LastName": 50,
    "JobTitle": 50,
    "CompanyName": 50,
    "HomePhone": 25,
    "WorkPhone": 25,
    "Addr1": 255,
    "City": 50,
    "StateCode": 50,
    "PostalCode": 50,
    "CountryCode": 50,
}

#: The json-import rows' addresses are of kind `home` (§5.2): the per-contact path writes
#: that one, so a row gives the same contact on both paths.
_ADDRESS_KIND = "home"
_ADDRESS_PARTS = ("street", "city", "state", "postal_code", "country")


def _dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedResponseError(f"{what} is not a JSON object")
    return value


def _email_of(document: Mapping[str, Any]) -> Mapping[str, Any]:
    email = document.get("email_address")
    return email if isinstance(email, dict) else {}


def contact_permission(document: Mapping[str, Any]) -> str:
    """A contact's `permission_to_send` as the API gave it ("" when absent)."""
    permission = _email_of(document).get("permission_to_send")
    return permission if isinstance(permission, str) else ""


def contact_status(document: Mapping[str, Any]) -> ContactStatus:
    """The neutral status of a V3 contact.

    Unsubscribed comes first: a deleted contact that had opted out stays untouchable (I2),
    where reviving it would write to it. `pending_confirmation` is `unconfirmed` (written to
    like an active contact, its permission resent as read); `not_set`, `temp_hold`,
    `implicit` and `explicit` are `active`.
    """
    permission = _email_of(document).get("permission_to_send")
    if permission == "unsubscribed":
        return "opted_out"
    if document.get("deleted_at"):
        return "deleted"
    if permission == "pending_confirmation":
        return "unconfirmed"
    return "active"


def _phones(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    items = document.get("phone_numbers")
    return [p for p in items if isinstance(p, dict)] if isinstance(items, list) else []


def _addresses(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    items = document.get("street_addresses")
    return [a for a in items if isinstance(a, dict)] if isinstance(items, list) else []


def contact_fields(document: Mapping[str, Any]) -> dict[str, str]:
    """The contact's writable fields under the engine's names (absent ones left out)."""
    fields: dict[str, str] = {}
    home = next((a for a in _addresses(document) if a.get("kind") == _ADDRESS_KIND), {})
    for name, (where, key, _) in _FIELDS.items():
        value: object = None
        if where == "core":
            value = document.get(key)
        elif where == "phone":
            value = next(
                (p.get("phone_number") for p in _phones(document) if p.get("kind") == key), None
            )
        else:
            value = home.get(key)
        if isinstance(value, str) and value:
            fields[name] = value
    return fields


class Version:
    """A contact document's version: equal to another read's when the two documents are
    the same, so any change (a list, a field, a permission) shows, where `updated_at`, to
    the second, could miss two writes within one second.

    The digest is taken when first compared: most reads never are (only a write's read
    that went stale is read again and compared), and it cost a canonical JSON dump a read.
    The document is never changed after it is read.
    """

    __slots__ = ("_digest", "_document")

    def __init__(self, document: Mapping[str, Any]) -> None:
        self._document = document
        self._digest: str | None = None

    def digest(self) -> str:
        """The SHA-256 of the document's canonical JSON."""
        if self._digest is None:
            text = json.dumps(
                self._document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
            self._digest = hashlib.sha256(text.encode()).hexdigest()
        return self._digest

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.digest() == other.digest()

    def __hash__(self) -> int:
        return hash(self.digest())


def contact_state(document: object) -> ContactState:
    """The neutral state of a contact read with `include=list_memberships` (and the phone
    and address subresources, which a field write resends)."""
    doc = _dict(document, "a contact")
    member = member_state(doc)
    return ContactState(
        ref=member.ref,
        lists=member.lists,
        fields=contact_fields(doc),
        version=Version(doc),
        document=doc,
    )


def member_state(document: object) -> ContactState:
    """Who a contact read with `include=list_memberships` is, its status and its lists,
    and nothing else (no fields, version or document to write from): what settling an
    activity reads, a million times in a large run, kept small and cheap to build."""
    doc = _dict(document, "a contact")
    contact_id = doc.get("contact_id")
    if not isinstance(contact_id, str) or not contact_id:
        raise MalformedResponseError("a contact has no contact_id")
    lists = doc.get("list_memberships", [])
    if not isinstance(lists, list) or not all(isinstance(i, str) for i in lists):
        raise MalformedResponseError(f"contact {contact_id}: list_memberships is not a list of ids")
    email = member_email(doc)
    return ContactState(ContactRef(contact_id, email, contact_status(doc)), tuple(lists))


def member_email(document: Mapping[str, Any]) -> str:
    """A contact document's email as `member_state` gives it: trimmed and lower-cased, ""
    when it has none."""
    address = _email_of(document).get("address")
    return address.strip().lower() if isinstance(address, str) else ""


def _changes(fields: Mapping[str, str] | None, current: Mapping[str, str]) -> dict[str, str]:
    """The writable fields of `fields` that change the contact (an empty value never clears)."""
    return {n: v for n, v in (fields or {}).items() if n in _FIELDS and v and current.get(n) != v}


def _subresource_writes(
    document: Mapping[str, Any], changes: Mapping[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """`phone_numbers` and `street_addresses` to send when a change touches them.

    An included subresource replaces the stored one ([I] §3.5), so each is sent whole: every
    item as read, with the one of the changed kind replaced (or added).
    """
    out: dict[str, list[dict[str, Any]]] = {}
    phones = {_FIELDS[n][1]: v for n, v in changes.items() if _FIELDS[n][0] == "phone"}
    if phones:
        items: list[dict[str, Any]] = []
        for phone in _phones(document):
            kind = phone.get("kind")
            number = phones.pop(kind, None) if isinstance(kind, str) else None
            items.append({"phone_number": number or phone.get("phone_number"), "kind": kind})
        items += [{"phone_number": number, "kind": kind} for kind, number in phones.items()]
        if len(items) > 3:
            raise UnsafeMergeError(
                f"a V3 contact holds at most 3 phone numbers; writing this one would make "
                f"{len(items)}"
            )
        out["phone_numbers"] = items
    parts = {_FIELDS[n][1]: v for n, v in changes.items() if _FIELDS[n][0] == "address"}
    if parts:
        addresses: list[dict[str, Any]] = []
        found = False
        for address in _addresses(document):
            item = {k: address[k] for k in ("kind", *_ADDRESS_PARTS) if address.get(k)}
            if address.get("kind") == _ADDRESS_KIND and not found:
                item.update(parts)
                found = True
            addresses.append(item)
        if not found:
            addresses.append({"kind": _ADDRESS_KIND, **parts})
        if len(addresses) > 3:
            raise UnsafeMergeError("a V3 contact holds at most 3 street addresses")
        out["street_addresses"] = addresses
    return out


def put_body(
    state: ContactState,
    targets: Sequence[ListId],
    fields: Mapping[str, str] | None = None,
    *,
    lists: bool = True,
) -> tuple[bytes, tuple[ListId, ...], tuple[str, ...]] | None:
    """The safe `PUT /contacts/{id}` body that puts the contact on `targets` and writes
    `fields`, with the lists it adds and the fields it writes; None when nothing changes.

    With `lists=False` the body writes the fields only and carries no `list_memberships`
    at all, which the API then leaves as they are ([C] §3.5): no list can be dropped, even
    one another writer added since the read (the lists then go by append).

    The recipe of §9.1: `email_address` (address and permission as read: consent is never
    changed), every core property present resent verbatim (a PUT nulls those it does not
    receive), the changed fields applied, `list_memberships` the union (the contact's lists
    first, in order), no other subresource unless a field write needs it (omitted ones are
    kept), and `update_source: "Account"` (which also revives a deleted contact). The body
    is then decoded again and checked; nothing that fails the check is ever returned.

    Raises:
        UnsafeMergeError: the union is over 50 lists, a field does not fit, or the encoded
            body would not keep every list and core property.
    """
    document = _dict(state.document, "a V3 write needs the contact document read")
    email = _email_of(document)
    if not isinstance(email.get("address"), str):
        raise UnsafeMergeError(f"contact {state.ref.id} has no email address to resend")
    existing = list(dict.fromkeys(state.lists))
    added = tuple(t for t in dict.fromkeys(targets) if t not in set(existing)) if lists else ()
    changes = _changes(fields, state.fields)
    if not added and not changes:
        return None
    union = [*existing, *added]
    if len(union) > LISTS_PER_CONTACT:
        raise UnsafeMergeError(
            f"the contact would be on {len(union)} lists; V3 allows {LISTS_PER_CONTACT} "
            "(no list is dropped to make room: the contact is left as it is)"
        )
    body: dict[str, Any] = {
        "email_address": {
            "address": email["address"],
            "permission_to_send": email.get("permission_to_send"),
        }
    }
    for name in CORE_PROPERTIES:
        if document.get(name) is not None:
            body[name] = document[name]
    for name, value in changes.items():
        if _FIELDS[name][0] == "core":
            body[_FIELDS[name][1]] = value
    body.update(_subresource_writes(document, changes))
    if lists:
        body["list_memberships"] = union
    body["update_source"] = "Account"
    encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    _prove(encoded, document, existing, targets if lists else None, changes)
    return encoded, added, tuple(sorted(changes))


def _prove(
    encoded: bytes,
    document: Mapping[str, Any],
    existing: Sequence[ListId],
    targets: Sequence[ListId] | None,
    changes: Mapping[str, str],
) -> None:
    """Read the encoded body back: it keeps every list (or, with `targets` None, names no
    list at all), the address, the permission and each core property not deliberately
    changed, and carries no consent or source change."""
    sent = json.loads(encoded)
    lists = sent.get("list_memberships")
    if targets is None:
        if "list_memberships" in sent:
            raise UnsafeMergeError("the fields-only PUT body, read back, names lists")
    elif not isinstance(lists, list) or not set(existing) | set(targets) <= set(lists):
        raise UnsafeMergeError("the PUT body, read back, does not keep every list")
    email = _email_of(document)
    sent_email = sent.get("email_address") or {}
    same = ("address", "permission_to_send")
    if any(sent_email.get(k) != email.get(k) for k in same):
        raise UnsafeMergeError("the PUT body, read back, changes the email address or consent")
    changed = {_FIELDS[n][1] for n in changes if _FIELDS[n][0] == "core"}
    for name in CORE_PROPERTIES:
        kept = name in changed or document.get(name) is None or sent.get(name) == document[name]
        if not kept:
            raise UnsafeMergeError(f"the PUT body, read back, does not keep {name}")
    if sent.get("update_source") != "Account":
        raise UnsafeMergeError("the PUT body, read back, lacks update_source Account")


def create_body(email: str, targets: Sequence[ListId], fields: Mapping[str, str]) -> bytes:
    """The `POST /contacts` body of a new contact: an owner import (`create_source`
    `Account`, permission `implicit`, which is what the json import gives a new contact, so
    both paths create the same contact), the writable fields, and `targets`."""
    if len(set(targets)) > LISTS_PER_CONTACT:
        raise UnsafeMergeError(f"a V3 contact can be on at most {LISTS_PER_CONTACT} lists")
    body: dict[str, Any] = {
        "email_address": {"address": email.strip().lower(), "permission_to_send": "implicit"},
        "create_source": "Account",
    }
    changes = _changes(fields, {})
    for name, value in changes.items():
        if _FIELDS[name][0] == "core":
            body[_FIELDS[name][1]] = value
    body.update(_subresource_writes({}, changes))
    body["list_memberships"] = list(dict.fromkeys(targets))
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class JsonImport:
    """A `contacts_json_import` request, encoded within the caps.

    Attributes:
        body: the JSON body.
        targets: the lists it adds.
        left_out: emails too long for an import row (over 50 characters): not in the body;
            `settle` reports them `unknown`, so they go contact by contact.
    """

    body: bytes = field(repr=False)
    targets: tuple[ListId, ...]
    left_out: frozenset[str] = frozenset()


def encode_import(
    contacts: Iterable[tuple[str, Mapping[str, str]]],
    targets: Sequence[ListId],
    columns: Sequence[str],
    *,
    max_rows: int,
    max_bytes: int,
) -> JsonImport:
    """One json import: a row per contact with `email` and the non-empty values of
    `columns` that V3 can hold (an absent key leaves the contact's value alone), `list_ids`
    the targets. `contacts` is read once, a thousand rows encoded at a time (an import of
    40,000 is never held as row objects), and gives each email once: duplicates in a
    payload are [U] (§5.2), and the pipeline coalesces them before.

    Raises:
        ActivityTooLargeError: over the row cap, or the body is not under `max_bytes` (the
            server silently drops whatever lies beyond 4 MB).
        ValueError: an email given twice.
    """
    lists = list(dict.fromkeys(targets))
    if not 1 <= len(lists) <= LISTS_PER_CONTACT:
        raise ActivityTooLargeError(f"a json import takes 1 to {LISTS_PER_CONTACT} lists")
    limit = min(max_rows, IMPORT_MAX_ROWS)
    names = [(name, _FIELDS[name][2]) for name in columns if name in _FIELDS]
    seen: set[str] = set()
    left_out: set[str] = set()
    pieces: list[bytes] = []
    for chunk in slices(contacts):
        rows: list[dict[str, str]] = []
        for given, values in chunk:
            email = given.strip().lower()
            if email in seen:
                raise ValueError(f"{email} is given twice: an import takes each email once")
            seen.add(email)
            if len(email) > IMPORT_EMAIL_MAX:
                left_out.add(email)
                continue
            row = {"email": email}
            for name, key in names:
                value = values.get(name)
                if value:
                    row[key] = value
            rows.append(row)
        if len(seen) - len(left_out) > limit:
            raise ActivityTooLargeError(
                f"{len(seen) - len(left_out)} rows or more are over the cap of {limit}"
            )
        if rows:
            pieces.append(fastjson.dumps(rows)[1:-1])
    body = b'{"import_data":[%b],"list_ids":%b}' % (b",".join(pieces), fastjson.dumps(lists))
    del pieces
    cap = min(max_bytes, IMPORT_MAX_BYTES)
    if len(body) >= cap:
        raise ActivityTooLargeError(f"the import body of {len(body)} bytes is not under {cap}")
    return JsonImport(body, tuple(lists), frozenset(left_out))


@dataclass(frozen=True, slots=True)
class V3Activity:
    """A V3 activity as the backend keeps it.

    Attributes:
        raw: the status object the API sent.
    """

    raw: Mapping[str, Any] = field(repr=False)


_STATES: dict[str, ActivityState] = {
    "initialized": "pending",
    "processing": "running",
    "completed": "complete",
    "failed": "failed",
    "cancelled": "failed",
    "timed_out": "failed",
}


def activity_state(state: str) -> ActivityState:
    """The neutral state of a V3 activity state (an unknown one keeps polling: `running`)."""
    return _STATES.get(state, "running")


def append_body(ids: Sequence[str], lists: Sequence[str]) -> bytes:
    """An `add_list_memberships` body (§5.4): ≤ 500 contact ids onto ≤ 50 lists."""
    if not 0 < len(ids) <= APPEND_MAX_IDS or not 0 < len(lists) <= LISTS_PER_CONTACT:
        raise ValueError(f"an append takes 1-{APPEND_MAX_IDS} ids and 1-50 lists")
    body = {"source": {"contact_ids": list(ids)}, "list_ids": list(lists)}
    return json.dumps(body, separators=(",", ":")).encode()


def is_import_activity(raw: Mapping[str, Any]) -> bool:
    """Whether a status object is a json import's: V3 activities carry no type (§5.1), but
    only imports count persons ([I] from the `ActivityImport` schema)."""
    status = raw.get("status")
    return isinstance(status, dict) and "person_count" in status


def bulk_activity(raw: object) -> BulkActivity:
    """The neutral form of a V3 activity status object."""
    doc = _dict(raw, "an activity")
    activity_id, state = doc.get("activity_id"), doc.get("state")
    if not isinstance(activity_id, str) or not isinstance(state, str):
        raise MalformedResponseError("an activity lacks its activity_id or state")
    created = doc.get("created_at")
    return BulkActivity(
        id=activity_id,
        state=activity_state(state),
        status=state,
        progress=(state, doc.get("percent_done")),
        created=created if isinstance(created, str) else "",
        document=V3Activity(doc),
        partial=state in ("timed_out", "cancelled"),
    )
