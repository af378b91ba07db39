"""Copernica's per-mailing statistics, and how they compare with what `events` holds.

`GET /v4/ms/emailing/{id}/statistics` (Marketing Suite) is asked first; on 404 the Publisher
path `GET /v4/html/emailing/{id}/statistics`; 404 on both is an unknown mailing. Transient
failures (429, 503, dropped connections) are retried by the client (`workers.backfill.api`);
what still fails is raised for the caller to report.

The comparison (`compare`) is pure: Copernica's figures and ours (`workers.storage.mailing_counts`)
in, one `Measure` per compared figure out. Definitions differ where the two sides count
differently (see `MEASURES`): Copernica's unique impressions and clicks are per destination
(profile/subprofile), ours per message; errors are our `failed` + `bounced` (not
`autoresponded`); abuses are `complained`; unsubscribes `unsubscribed`; deliveries `delivered`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from workers.backfill.api import ApiError, CopernicaClient

log = logging.getLogger("workers.backfill.statistics")

# Where a mailing's statistics live, in the order they are asked: (source, path template).
SOURCES: tuple[tuple[str, str], ...] = (
    ("ms", "ms/emailing/{id}/statistics"),
    ("publisher", "html/emailing/{id}/statistics"),
)
# The logfile prefix of each source (Marketing Suite `cdm-`, Publisher `pom-`).
LOG_PREFIX = {"ms": "cdm-", "publisher": "pom-"}

# Compared figures: name -> (Copernica's field, its part, our count in `MailingCounts`).
MEASURES: dict[str, tuple[str, str, str]] = {
    "deliveries": ("deliveries", "total", "delivered"),
    "impressions": ("impressions", "total", "opens"),
    "unique_impressions": ("impressions", "unique", "unique_opens"),
    "clicks": ("clicks", "total", "clicks"),
    "unique_clicks": ("clicks", "unique", "unique_clicks"),
    "errors": ("errors", "total", "errors"),
    "unsubscribes": ("unsubscribes", "total", "unsubscribes"),
    "abuses": ("abuses", "total", "abuses"),
}


class UnknownMailing(ApiError):
    """Neither the Marketing Suite nor the Publisher knows the mailing (404 on both paths)."""


@dataclass(frozen=True, slots=True)
class MailingStatistics:
    """One mailing's statistics as Copernica counts them. A figure the answer lacks is None
    (not compared); `raw` keeps the answer as received."""

    mailing_id: int
    source: str  # 'ms' or 'publisher'
    destinations: int | None = None
    figures: Mapping[str, int | None] = field(default_factory=dict)  # "deliveries.total" -> n
    raw: Mapping[str, object] = field(default_factory=dict)

    def figure(self, name: str, part: str) -> int | None:
        return self.figures.get(f"{name}.{part}")


def _count(value: object) -> int | None:
    """A count as Copernica may send it: a number or a numeric string; anything else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


_FIELDS = (
    "deliveries.total",
    "impressions.total",
    "impressions.unique",
    "clicks.total",
    "clicks.unique",
    "errors.total",
    "errors.unique",
    "unsubscribes.total",
    "unsubscribes.unique",
    "abuses.total",
    "abuses.unique",
    "retries.total",
    "unknown.total",
)


def parse_statistics(mailing_id: int, source: str, answer: object) -> MailingStatistics:
    """The statistics answer (`{"deliveries": {"total": n}, ...}`; a flat `"deliveries.total"`
    key is read too) as a MailingStatistics. Raises ApiError when the answer is no object."""
    if not isinstance(answer, dict):
        raise ApiError(f"mailing {mailing_id}: the statistics answer is not an object")
    figures: dict[str, int | None] = {}
    for name in _FIELDS:
        group, part = name.split(".")
        nested = answer.get(group)
        value = nested.get(part) if isinstance(nested, dict) else answer.get(name)
        figures[name] = _count(value)
    return MailingStatistics(mailing_id, source, _count(answer.get("destinations")), figures, answer)


def copernica_time(moment: datetime) -> str:
    """`begintime`/`endtime` as Copernica takes them: `YYYY-MM-DD HH:MM:SS` (its local time)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def fetch_statistics(client: CopernicaClient, mailing_id: int, *, begin: datetime | None = None) -> MailingStatistics:
    """One mailing's statistics: the Marketing Suite path, on 404 the Publisher path.
    `begin` (local Copernica time) limits them (`begintime`). Raises UnknownMailing (404 on
    both), AuthError, and ApiError (RetriesExhausted included) for what retries did not mend."""
    params: dict[str, str | int] | None = {"begintime": copernica_time(begin)} if begin is not None else None
    for source, template in SOURCES:
        try:
            answer = client.get_json(template.format(id=mailing_id), params)
        except ApiError as exc:
            if exc.status == 404:
                log.info("mailing %d: not a %s mailing (HTTP 404)", mailing_id, source)
                continue
            raise
        return parse_statistics(mailing_id, source, answer)
    raise UnknownMailing(f"mailing {mailing_id}: unknown to Copernica (HTTP 404 for both ms and html)", 404)


# --- the comparison (pure) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measure:
    """One compared figure. `missing`: how many fewer we hold than Copernica counts; `extra`:
    how many more (reported, never "fixed"). Both 0 when Copernica gave no figure."""

    name: str
    copernica: int | None
    stored: int

    @property
    def missing(self) -> int:
        return max(0, self.copernica - self.stored) if self.copernica is not None else 0

    @property
    def extra(self) -> int:
        return max(0, self.stored - self.copernica) if self.copernica is not None else 0


def compare(stats: MailingStatistics, stored: Mapping[str, int]) -> list[Measure]:
    """Copernica's figures against ours (`stored`: our count names of `MEASURES` -> n; absent
    is 0), one Measure per entry of `MEASURES`, in its order."""
    return [
        Measure(name, stats.figure(group, part), int(stored.get(ours, 0)))
        for name, (group, part, ours) in MEASURES.items()
    ]


def any_missing(measures: list[Measure]) -> bool:
    return any(m.missing for m in measures)
