"""`ingest erase`: remove every stored row of a person, and keep them from being stored again.

`--email ADDRESS` / `--profile ID [--database ID]` (repeatable) or `--from-file FILE` (one per
line: an address, or a profile id); `--dry-run` shows what would go; `--list` the audit table.
Registered through `ingest.cli.COMMAND_MODULES`; the work is in `workers.storage.erasure`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

from common.settings import Settings
from ingest.cli.base import EXIT_USAGE, fail

log = logging.getLogger("ingest.cli.erase")

_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+")
_ID = re.compile(r"[0-9]{1,18}")


def register(subparsers: Any) -> None:
    """Add the `erase` command to the `ingest` parser."""
    erase = subparsers.add_parser(
        "erase",
        help="remove every stored row of a person (right to be forgotten)",
        description="Remove every event, message row and rejected call that holds a person, in every "
        "partition, one transaction per person, and keep them from being stored again (their keyed hash "
        "goes on the erased list). Safe to repeat. Needs INGEST_ERASURE_KEY (except --dry-run and --list).",
    )
    erase.add_argument("--email", action="append", default=[], metavar="ADDRESS", help="an e-mail address")
    erase.add_argument("--profile", action="append", default=[], metavar="ID", help="a Copernica profile id")
    erase.add_argument("--database", metavar="ID", help="the database of every --profile (default: any)")
    erase.add_argument("--from-file", type=Path, metavar="FILE", help="one address or profile id a line ('#' comments)")
    erase.add_argument("--dry-run", action="store_true", help="show what would be removed, per table; change nothing")
    erase.add_argument("--list", action="store_true", help="show the erasures done: when, keyed hash, rows removed")
    erase.add_argument("--limit", type=int, default=100, help="with --list: show at most N (default 100)")
    erase.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    erase.set_defaults(handler=cmd_erase)


class _Bad(ValueError):
    """A selector that cannot be erased: the message is the usage error."""


def _profile_selector(raw: str, database: int | None) -> Any:
    from workers.storage.erased import Selector

    if not _ID.fullmatch(raw.strip()):
        raise _Bad(f"not a profile id: {raw.strip()[:60]!r}")
    return Selector.profile(int(raw.strip()), database)


def _email_selector(raw: str) -> Any:
    from workers.storage.erased import Selector

    if not _ADDRESS.fullmatch(raw.strip()):
        raise _Bad(f"not an e-mail address: {raw.strip()[:80]!r}")
    return Selector.email(raw)


def selectors(args: argparse.Namespace) -> list[Any]:
    """Every person named, in order, without repeats; `_Bad` for the first that cannot be."""
    database = None
    if args.database is not None:
        if not _ID.fullmatch(args.database.strip()):
            raise _Bad(f"--database: not a database id: {args.database.strip()[:60]!r}")
        database = int(args.database.strip())
    found = [_email_selector(a) for a in args.email] + [_profile_selector(p, database) for p in args.profile]
    if args.from_file is not None:
        try:
            lines = args.from_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise _Bad(f"--from-file: cannot read {args.from_file}: {getattr(exc, 'strerror', None) or exc}") from None
        for number, line in enumerate(lines, 1):
            entry = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if not entry:
                continue
            try:
                found.append(_email_selector(entry) if "@" in entry else _profile_selector(entry, database))
            except _Bad as exc:
                raise _Bad(f"{args.from_file}:{number}: {exc}") from None
    return list(dict.fromkeys(found))


def cmd_erase(settings: Settings, args: argparse.Namespace) -> int:
    if args.list:
        if args.email or args.profile or args.from_file or args.dry_run:
            return fail("erase: --list takes no address, profile or --dry-run", EXIT_USAGE)
        return _show_list(settings, args)
    try:
        people = selectors(args)
    except _Bad as exc:
        return fail(f"erase: {exc}", EXIT_USAGE)
    if not people:
        return fail("erase: give --email ADDRESS, --profile ID or --from-file FILE (or --list)", EXIT_USAGE)
    key = settings.erasure_key
    if key is None and not args.dry_run:
        return fail(
            "erase: INGEST_ERASURE_KEY is not set (a secret of 16+ characters, the same for every worker and "
            "command; see the README's Personal data)",
            EXIT_USAGE,
        )
    from workers.storage import erased, store
    from workers.storage.erasure import erase

    if key is not None:
        erased.set_key(key)
    results = []
    with store.connect(settings.required("database_url")) as conn:
        conn.autocommit = True
        conn.execute("SET statement_timeout = 0")  # a scan of every partition may take minutes
        with _progress(len(people)) as advance:
            for selector in people:
                results.append(erase(conn, selector, key.encode() if key else None, dry_run=args.dry_run))
                advance()
    _report(results, dry_run=args.dry_run, as_json=args.json)
    return 0


class _progress:
    """A bar over the people on stderr (a terminal only), for long --from-file runs."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import Progress

        console = Console(stderr=True)
        self.progress = Progress(console=console, transient=True, disable=total < 2 or not console.is_terminal)
        self.task = self.progress.add_task("erasing", total=total)

    def __enter__(self) -> Any:
        self.progress.__enter__()
        return lambda: self.progress.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)


def _report(results: list[Any], *, dry_run: bool, as_json: bool) -> None:
    tables = sorted({t for r in results for t in r.removed})
    totals = {t: sum(r.removed.get(t, 0) for r in results) for t in tables}
    if as_json:
        print(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "people": [
                        {
                            "selector": str(r.selector),
                            "kind": r.selector.kind,
                            "removed": r.removed,
                            "total": r.total,
                            "profiles": r.profiles,
                            "addresses": r.addresses,
                        }
                        for r in results
                    ],
                    "removed": totals,
                    "total": sum(totals.values()),
                },
                indent=2,
            )
        )
        return
    verb = "would remove" if dry_run else "removed"
    for r in results:
        if not r.total:
            print(f"{r.selector}: nothing stored")
            continue
        parts = ", ".join(f"{t} {n}" for t, n in sorted(r.removed.items()) if n)
        also = f"; with profile(s) {', '.join(map(str, r.profiles))}" if r.profiles else ""
        if r.addresses:
            also += f"; with {r.addresses} address(es) stored with the profile"
        print(f"{r.selector}: {verb} {r.total} row(s) ({parts}){also}")
    empty = sum(1 for r in results if not r.total)
    summary = ", ".join(f"{t} {n}" for t, n in totals.items() if n) or "nothing"
    people = "person" if len(results) == 1 else "people"
    head = "dry run, nothing changed: " if dry_run else ""
    print(
        f"{head}{len(results)} {people}: {verb} {sum(totals.values())} row(s) ({summary}); {empty} had nothing stored"
    )


def _show_list(settings: Settings, args: argparse.Namespace) -> int:
    from workers.storage import store
    from workers.storage.erasure import count_erasures, list_erasures

    if args.limit < 1:
        return fail("erase: --limit must be at least 1", EXIT_USAGE)
    with store.connect(settings.required("database_url")) as conn:
        conn.autocommit = True
        records = list_erasures(conn, args.limit)
        total = count_erasures(conn)
    if args.json:
        rows = [
            {
                "id": r.id,
                "erased_at": r.erased_at.isoformat(),
                "kind": r.kind,
                "selector_hash": r.selector_hash,
                "removed": r.removed,
                "total": r.total,
            }
            for r in records
        ]
        print(json.dumps({"erasures": rows, "count": total}, indent=2))
        return 0
    if not records:
        print("no erasures")
        return 0
    print(f"{'id':>6}  {'erased (UTC)':<19}  {'kind':<7}  {'keyed hash':<16}  {'rows':>6}  per table")
    for r in records:
        when = r.erased_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        tables = ", ".join(f"{t} {n}" for t, n in sorted(r.removed.items()) if n) or "-"
        print(f"{r.id:>6}  {when:<19}  {r.kind:<7}  {r.selector_hash[:16]}  {r.total:>6}  {tables}")
    if total > len(records):
        print(f"({len(records)} of {total} shown; --limit N shows more)", file=sys.stdout)
    return 0
