"""The writer of one transaction's rows (split out of `workers.storage.store`, whose writer
thread runs it): a direct COPY into `events` inside a savepoint, the stage when that meets a
stored row, the user agents and partitions the rows need first, the rejects last."""

from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Any

import psycopg

from workers.storage import agents, messages, partitions, store  # store imports this module
from workers.storage.copy_text import without_machine

log = logging.getLogger("workers.storage.writer")


# After a direct COPY met a row already stored, the next transactions of that connection go
# through the stage (a backfill of stored events would otherwise pay for every row twice);
# the pause doubles with each further collision, up to this many transactions.
MAX_DIRECT_PAUSE = 64
_pause: weakref.WeakKeyDictionary[psycopg.Connection, list[int]] = weakref.WeakKeyDictionary()
_SAVEPOINT = "direct_copy"


class Writer:
    """One transaction's rows, on the writer thread.

    Rows whose occurred_at follows from their key (nearly all) are COPYed straight into
    `events`, in one COPY that stays open from chunk to chunk (PostgreSQL stores each chunk as
    it arrives; no round trip per chunk), inside a savepoint. The unique constraint then
    refuses a second copy of an event: on that (or any error of the COPY) the savepoint is
    rolled back and the same rows go through the stage and `INSERT … ON CONFLICT DO NOTHING`
    (`insert_events`), as do the other rows (`_NEW_KEY`) and every row while the connection's
    direct COPY is paused (`MAX_DIRECT_PAUSE`). Rejects are written last."""

    def __init__(self, conn: psycopg.Connection, short_key: bool = True) -> None:
        self.conn = conn
        # The keys' form the lines were written in, so the stage is the one they fit: when
        # migration 0011 ran after they were written, its text key fails the INSERT (a
        # DatatypeMismatch, not a refusal of the rows): the job fails and its retry writes the
        # short keys into a new stage (`_stage_name`).
        self.short_key = short_key
        self.cur = conn.cursor()
        pause = _pause.setdefault(conn, [0, 0])  # [transactions still to skip, length of the last pause]
        self.direct = pause[0] == 0
        if not self.direct:
            pause[0] -= 1
        self.copy: Any = None  # the open COPY's context manager
        self.copy_in: Any = None  # and its psycopg.Copy
        self.savepoint = False
        self.since: list[bytes] = []  # rows sent since the savepoint (redone staged on failure)
        self.since_stored = 0  # rows of `since` known to be stored
        self.copying = 0  # rows sent into the open COPY
        self.stored = 0
        self.staged = False  # the stage was made in this transaction
        self.rejects: list[store.Rejected] = []
        self.kept = messages.kept(conn)  # the schema has `messages` (else: as before 0006)
        self.agents: dict[int, str] = {}  # user agents this transaction added to `user_agents`

    def add(self, lines: store.Lines) -> None:
        if lines.agents:  # before the rows that name them
            self._end_copy()
            agents.add(self.cur, lines.agents)
            self.agents.update(lines.agents)
        if lines.months and not partitions.known(self.conn, lines.months):
            self._end_copy()  # making a partition is a statement of its own
            partitions.ensure_months(self.conn, lines.months)
        staged = lines.staged
        if lines.direct_rows:
            if self.direct:
                self._copy(lines.direct, lines.direct_rows)
                if self.kept:  # the trigger folds the chunk while the next one is parsed
                    self._end_copy()
            else:
                staged = lines.direct + staged
        if staged:
            self._stage(staged)
        self.rejects.extend(lines.rejects)

    def finish(self) -> int:
        """End the COPY, write the rejects; return how many rows were new."""
        self._end_copy()
        if self.direct and self.savepoint:
            _pause[self.conn] = [0, 0]
        if self.rejects:
            store.insert_rejects(self.conn, self.rejects)
        return self.stored

    def _stage(self, data: bytes) -> None:
        self._end_copy()
        if self.savepoint and self.direct:
            self.since.append(data)
        new = store.insert_staged(self.cur, data, staged=self.staged, current=self.kept, short_key=self.short_key)
        self.staged = True
        self.stored += new
        if self.savepoint and self.direct:
            self.since_stored += new

    def _copy(self, data: bytes, rows: int) -> None:
        try:
            if self.copy is None:
                if not self.savepoint:
                    self.cur.execute(f"SAVEPOINT {_SAVEPOINT}")
                    self.savepoint = True
                self.copy = self.cur.copy(f"COPY events ({store.COLUMNS if self.kept else store.LEGACY}) FROM STDIN")
                self.copy_in = self.copy.__enter__()
            self.since.append(data)
            self.copying += rows
            self.copy_in.write(data if self.kept else without_machine(data.decode()).encode())
        except psycopg.Error as exc:
            self._fall_back(exc)

    def _end_copy(self) -> None:
        if self.copy is None:
            return
        copy, self.copy = self.copy, None
        try:
            copy.__exit__(None, None, None)
        except psycopg.Error as exc:
            self._fall_back(exc)
            return
        self.stored += self.copying
        self.since_stored += self.copying
        self.copying = 0

    def abandon(self, exc: BaseException) -> None:
        """End an open COPY with `exc` (the server drops its rows)."""
        if self.copy is not None:
            copy, self.copy = self.copy, None
            with contextlib.suppress(psycopg.Error):
                copy.__exit__(type(exc), exc, exc.__traceback__)

    def _fall_back(self, exc: psycopg.Error) -> None:
        """The direct COPY failed: undo the savepoint, and store what it held through the stage."""
        self.abandon(exc)
        if self.conn.closed or self.conn.broken:
            raise exc
        self.cur.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")  # raises when the server is gone
        agents.add(self.cur, self.agents)  # those added since the savepoint went with it
        self.direct = False
        self.staged = False  # a stage made inside the savepoint went with it
        self.stored -= self.since_stored  # and what the trigger folded of them: the redo folds it again
        if isinstance(exc, psycopg.errors.UniqueViolation):
            pause = _pause.setdefault(self.conn, [0, 0])
            pause[1] = min(MAX_DIRECT_PAUSE, pause[1] * 2 or 1)
            pause[0] = pause[1]
        log.debug("direct COPY failed (%s); its rows go through the stage", str(exc).splitlines()[0])
        redo, self.since, self.since_stored, self.copying = b"".join(self.since), [], 0, 0
        if redo:
            self._stage(redo)
