"""`ingest import`: logfiles downloaded by hand, stored as the REST backfill stores them.

Every path is checked before anything is stored (`plan_import`); the format comes from the
name, else from the first bytes (`sniff_format`); each file is then stored through
`workers.backfill.files.store_records`, with its progress in `backfill_files` as
`origin='import'`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from workers.backfill import zonecheck
from workers.backfill.files import (
    FORMATS,
    BackfillError,
    FileResult,
    Run,
    RunSummary,
    Source,
    Stopped,
    begin_file,
    check_types,
    check_zone,
    date_from_name,
    fail_file,
    finish_file,
    store_records,
)
from workers.events.logfiles import log_type_from_name


def sniff_format(path: Path) -> str:
    """The format from the extension (`.json`, `.csv`, `.xml`, before any `.gz`), else from
    the first bytes: `[`/`{` JSON, `<` XML, anything else CSV."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    if suffixes and suffixes[-1].lstrip(".") in FORMATS:
        return suffixes[-1].lstrip(".")
    import gzip

    with open(path, "rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw
        try:
            head = stream.read(4096)
        except (OSError, EOFError):
            head = b""
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head[:1] in (b"[", b"{"):
        return "json"
    if head[:1] == b"<":
        return "xml"
    return "csv"


def plan_import(paths: Sequence[str], log_type: str | None, fmt: str | None) -> list[tuple[Path, Source]]:
    """Check every path before anything is stored: missing files and unknown types are bad input."""
    planned: list[tuple[Path, Source]] = []
    if log_type is not None:
        log_type = check_types([log_type])[0]
    if fmt is not None and fmt not in FORMATS:
        raise BackfillError(f"unknown format {fmt!r} (json, csv or xml)")
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise BackfillError(f"{raw}: no such file")
        kind = log_type or log_type_from_name(path.name)
        if kind is None:
            raise BackfillError(f"{raw}: cannot tell the log type from the name; pass --type (e.g. cdm-click)")
        kind = check_types([kind])[0]
        source = Source(
            "import", str(path.resolve()), path.name, kind, fmt or sniff_format(path), date_from_name(path.name)
        )
        planned.append((path, source))
    return planned


def import_files(run: Run, planned: Sequence[tuple[Path, Source]]) -> RunSummary:
    """Store files read from disk. Every file is read (importing twice is harmless: the second
    time everything is a duplicate); progress is kept in `backfill_files` as `origin='import'`.
    Raises `zonecheck.ZoneMismatch` (the file's failure recorded, nothing of it stored)."""
    conn, reporter = run.conn, run.reporter
    summary = RunSummary()
    reporter.add_files(len(planned))
    for path, source in planned:
        result = FileResult(source.label, source.log_type, source.log_date)
        summary.files.append(result)
        reporter.file_started(source.label)
        row = begin_file(conn, source.origin, source.name, source.log_type, source.fmt, source.log_date)
        try:
            with open(path, "rb") as stream:
                check_zone(run, stream, source)
                store_records(run, stream, source, row, result)
        except zonecheck.ZoneMismatch as exc:
            result.status, result.error = "failed", str(exc)
            fail_file(conn, row.id, result.error)
            reporter.file_finished(result)
            raise
        except Stopped:
            result.status = "stopped"
            fail_file(conn, row.id, "interrupted")
            summary.stopped = True
            reporter.file_finished(result)
            break
        except OSError as exc:
            result.status, result.error = "failed", f"cannot read: {exc.strerror or exc}"
            fail_file(conn, row.id, result.error)
        else:
            finish_file(conn, row.id, complete=True)
            result.status = "done"
        reporter.file_finished(result)
    return summary
