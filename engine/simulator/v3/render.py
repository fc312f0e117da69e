"""The V3 simulator's JSON bodies, built from store records (`ctct-v3-api.md` §3-§5).

Absent values are left out rather than written as `null`: the contract types every property
as a string, integer or object, and a PUT's nulled core properties simply disappear.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from ._json import iso_date, iso_time
from .store import CORE_FIELDS, StoredActivity, StoredContact, StoredList

__all__ = ["Renderer"]

_IMPORT_COUNTERS = (
    "items_total_count",
    "person_count",
    "error_count",
    "correctable_count",
    "cannot_add_to_list_count",
)


class Renderer:
    """Writes JSON bodies; `mixed` mixes the three timestamp forms (§2.1).

    Args:
        mixed: `SimulatorConfig.mixed_timestamps`.
    """

    def __init__(self, *, mixed: bool = False) -> None:
        self._mixed = mixed

    def time(self, t: float) -> str:
        """One timestamp."""
        return iso_time(t, mixed=self._mixed)

    def _times(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            k: self.time(v) if k.endswith("_at") and isinstance(v, float | int) else v
            for k, v in item.items()
        }

    def contact(self, contact: StoredContact, include: Collection[str] = ()) -> dict[str, Any]:
        """A `ContactResource`: core properties always, subresources only when included."""
        body: dict[str, Any] = {"contact_id": contact.id}
        if contact.email is not None:
            email: dict[str, Any] = {
                "address": contact.email,
                "permission_to_send": contact.permission,
                "created_at": self.time(contact.email_created_at),
                "updated_at": self.time(contact.email_updated_at),
            }
            if contact.opt_in_source is not None:
                email["opt_in_source"] = contact.opt_in_source
            if contact.opt_in_date is not None:
                email["opt_in_date"] = self.time(contact.opt_in_date)
            if contact.opt_out_source is not None:
                email["opt_out_source"] = contact.opt_out_source
            if contact.opt_out_date is not None:
                email["opt_out_date"] = self.time(contact.opt_out_date)
            if contact.opt_out_reason is not None:
                email["opt_out_reason"] = contact.opt_out_reason
            email["confirm_status"] = contact.confirm_status
            body["email_address"] = email
        for name in CORE_FIELDS:
            if contact.core.get(name) is not None:
                body[name] = contact.core[name]
        body["create_source"] = contact.create_source
        if contact.update_source is not None:
            body["update_source"] = contact.update_source
        body["created_at"] = self.time(contact.created_at)
        body["updated_at"] = self.time(contact.updated_at)
        if contact.deleted_at is not None:
            body["deleted_at"] = iso_date(contact.deleted_at)
        for name in include:
            if name == "list_memberships":
                body[name] = list(contact.lists)
            elif name == "taggings":
                body[name] = list(contact.subresources.get(name, []))
            elif name == "sms_channel":
                if "sms_channel" in contact.subresources:
                    body[name] = dict(contact.subresources[name])
            else:
                body[name] = [self._times(i) for i in contact.subresources.get(name, [])]
        return body

    def contact_list(
        self, stored: StoredList, membership_count: int | None = None
    ) -> dict[str, Any]:
        """A `ContactList` (with `membership_count` when given) or `ContactListPutPost`.

        The description is kept but not written: the contract's list schemas have none."""
        body: dict[str, Any] = {
            "list_id": stored.id,
            "name": stored.name,
            "favorite": stored.favorite,
        }
        body["created_at"] = self.time(stored.created_at)
        body["updated_at"] = self.time(stored.updated_at)
        if stored.deleted_at is not None:
            body["deleted_at"] = self.time(stored.deleted_at)
        if membership_count is not None:
            body["membership_count"] = membership_count
        return body

    def activity(self, activity: StoredActivity, *, brief: bool = False) -> dict[str, Any]:
        """An activity status object (§5.5), with the counters of its kind; `brief` leaves
        out `status` and the run times (the 202 answer of a list DELETE)."""
        if brief:
            return {
                "activity_id": activity.id,
                "state": activity.state,
                "created_at": self.time(activity.created_at),
                "updated_at": self.time(activity.updated_at),
                "percent_done": activity.percent_done,
                "activity_errors": list(activity.errors),
                "_links": {"self": {"href": f"/v3/activities/{activity.id}"}},
            }
        body: dict[str, Any] = {"activity_id": activity.id, "state": activity.state}
        if activity.started_at is not None:
            body["started_at"] = self.time(activity.started_at)
        if activity.completed_at is not None:
            body["completed_at"] = self.time(activity.completed_at)
        body["created_at"] = self.time(activity.created_at)
        body["updated_at"] = self.time(activity.updated_at)
        body["percent_done"] = activity.percent_done
        body["activity_errors"] = list(activity.errors)
        counts = activity.counts
        if activity.kind == "contacts_json_import":
            body["status"] = {k: counts.get(k, 0) for k in _IMPORT_COUNTERS}
        else:
            body["status"] = dict(counts)
        links: dict[str, Any] = {"self": {"href": f"/v3/activities/{activity.id}"}}
        if activity.kind == "contact_exports" and activity.result is not None:
            links["results"] = {"href": f"/v3/contact_exports/{activity.id}"}
        body["_links"] = links
        return body

    def activities(self, items: Iterable[StoredActivity]) -> list[dict[str, Any]]:
        """Activity status objects."""
        return [self.activity(a) for a in items]
