"""The failed-call part of `ingest reconcile --date`: Copernica's log of its failed webhook calls
(`feedback-loop-errors`, read by `workers.backfill.failed_calls`) as a second table after the
per-type table, and the lines that explain it."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.backfill.failed_calls import FailedCalls


def print_failed_calls(console: Any, calls: FailedCalls, day: date) -> None:
    """The second table of `reconcile`: Copernica's failed calls to this receiver that day, by
    response, and how many of their minutes `events` now covers (per minute: the records carry
    no message id; see `workers.backfill.failed_calls`)."""
    from rich.table import Table

    if calls.error:
        console.print(f"[red]failed[/red] feedback-loop-errors: {calls.error}", highlight=False)
    if not calls.logged:
        if not calls.error:
            console.print("failed calls (feedback-loop-errors): none logged")
        return
    title = f"Copernica's failed calls to this receiver, {day}"
    table = Table(title=title, title_justify="left", min_width=len(title))  # the title wraps at the table's width
    table.add_column("response")
    table.add_column("calls", justify="right")
    for response, number in sorted(calls.by_response.items(), key=lambda item: (-item[1], item[0])):
        table.add_row(response, f"[red]{number:,}[/red]")
    table.add_row("total", f"{calls.total:,}", style="bold")
    console.print(table)
    if calls.first and calls.last:
        console.print(f"first {calls.first.isoformat(sep=' ')}, last {calls.last.isoformat(sep=' ')}", highlight=False)
        console.print(
            f"{calls.minutes:,} minute(s) with failed calls; events stored for {calls.minutes_with_events_stored:,}"
            f" of them, none for {calls.minutes_without_events:,} (a hint, not proof: matched by minute)",
            highlight=False,
        )
    if calls.with_message_id:
        console.print(
            f"{calls.with_message_id:,} call(s) name a message id; {calls.message_ids_stored:,} of those ids stored",
            highlight=False,
        )
    if calls.rejected:
        console.print(
            f"[yellow]{calls.rejected:,} failed-call record(s) could not be read; they are in rejected_events[/yellow]",
            highlight=False,
        )
