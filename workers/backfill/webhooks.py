"""Copernica's webhooks as REST v4 resources: list, create, delete (copernica.md section 1).

`GET /v4/webhooks` (paged), `POST /v4/webhooks` with `{"handler", "trigger", "callers",
"database", "collection"}` (only handler and trigger required; the new id comes back in the
`X-Created` header), `DELETE /v4/webhook/{id}`. Requests, retries and secrets are the
`CopernicaClient`'s; this module only knows the resource.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson

from workers.backfill.api import PAGE_LIMIT, ApiError, CopernicaClient

log = logging.getLogger("workers.backfill.webhooks")

TRIGGERS: tuple[str, ...] = ("create", "update", "delete", "click", "delivery", "open", "bounce", "failure")
CALLERS: tuple[str, ...] = ("ms", "publisher")  # Marketing Suite, Publisher


class WebhookNotFound(ApiError):
    """No webhook has that id."""


def _id(value: object) -> int | str | None:
    """An id as Copernica gives it (`"1894"` or `1894`): an int when it is one."""
    if isinstance(value, bool) or value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    return int(text) if text.isdigit() else text


def _scope(value: object) -> int | str | None:
    """A database or collection limit; empty and 0 mean none."""
    found = _id(value)
    return None if found in (0, "") else found


@dataclass(frozen=True, slots=True)
class Webhook:
    id: int | str | None
    trigger: str
    handler: str
    callers: tuple[str, ...] = ()  # empty: every caller
    database: int | str | None = None
    collection: int | str | None = None

    @classmethod
    def from_api(cls, item: object) -> Webhook:
        if not isinstance(item, dict):
            raise ApiError(f"GET /webhooks: expected an object per webhook, got {type(item).__name__}")
        raw_callers = item.get("callers") or ()
        if isinstance(raw_callers, str):
            raw_callers = raw_callers.split(",")
        callers = (
            tuple(str(c).strip() for c in raw_callers if str(c).strip())
            if isinstance(raw_callers, list | tuple)
            else ()
        )
        return cls(
            id=_id(item.get("ID", item.get("id"))),
            trigger=str(item.get("trigger") or ""),
            handler=str(item.get("handler") or ""),
            callers=callers,
            database=_scope(item.get("database")),
            collection=_scope(item.get("collection")),
        )

    def same_as(self, other: Webhook) -> bool:
        """The same subscription (ids aside): Copernica would call the same URL for the same events."""
        return (
            self.trigger == other.trigger
            and self.handler == other.handler
            and set(self.callers or CALLERS) == set(other.callers or CALLERS)
            and str(self.database or "") == str(other.database or "")
            and str(self.collection or "") == str(other.collection or "")
        )

    def payload(self) -> dict[str, object]:
        """The body of `POST /v4/webhooks`: optional fields only when given."""
        body: dict[str, object] = {"handler": self.handler, "trigger": self.trigger}
        if self.callers:
            body["callers"] = list(self.callers)
        if self.database is not None:
            body["database"] = self.database
        if self.collection is not None:
            body["collection"] = self.collection
        return body


def list_webhooks(client: CopernicaClient) -> list[Webhook]:
    """Every webhook of the account, all pages."""
    return [Webhook.from_api(item) for item in client.paged("webhooks", {"start": 0, "limit": PAGE_LIMIT})]


def create_webhook(client: CopernicaClient, spec: Webhook) -> int | str | None:
    """Create one webhook; its id (None when the answer names none). Not retried once it may have
    been carried out, so an unsure failure never leaves two."""
    answer = client.send_json("POST", "webhooks", spec.payload(), idempotent=False)
    created = _id(answer.headers.get("X-Created"))
    if created is None:
        created = _id((answer.headers.get("Location") or "").rstrip("/").rpartition("/")[2])
    if created is None and answer.body.strip():
        try:
            body = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict):
            created = _id(body.get("ID", body.get("id")))
        elif isinstance(body, int | str):
            created = _id(body)
    log.info("created webhook %s (%s)", created, spec.trigger)
    return created


def delete_webhook(client: CopernicaClient, webhook_id: int) -> None:
    """Delete one webhook; `WebhookNotFound` when no webhook has that id."""
    retried = client.retried
    try:
        client.send_json("DELETE", f"webhook/{webhook_id}")
    except ApiError as exc:
        if exc.status != 404:
            raise
        note = " (an earlier try whose answer was lost may have deleted it)" if client.retried > retried else ""
        raise WebhookNotFound(f"no webhook with id {webhook_id}{note}", 404) from None
    log.info("deleted webhook %s", webhook_id)
