"""Queries that answer exactly one row (a count, a setting, a function's answer, RETURNING)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from typing import LiteralString, TypeAlias

    from psycopg import sql
    from psycopg.abc import Params

    Query: TypeAlias = LiteralString | sql.SQL | sql.Composed


def one(conn: psycopg.Connection, query: Query, params: Params | None = None) -> Any:
    """The one row `query` answers."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise psycopg.ProgrammingError("the query answered no row")
    return row


def scalar(conn: psycopg.Connection, query: Query, params: Params | None = None) -> Any:
    """The first value of the one row `query` answers."""
    return one(conn, query, params)[0]
