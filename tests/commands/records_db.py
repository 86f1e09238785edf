"""Looking at the running bot's records in its database, below the domain functions: raw rows, where a text
is kept, and a database that refuses every write (as a read-only SQLite file does).

The end-to-end tests run the bot on SQLite (``DATA_DIR/trainer.db``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from records.db import Database
from storage import GuildSpace


def rows(space: GuildSpace, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows of a query of the records; its first ``?`` is the server's id, the rest are ``params``."""
    with space.db.tx(write=False) as tx:
        return tx.all(sql, (space.guild_id, *params))


def traces(space: GuildSpace, text: str) -> list[str]:
    """The tables with a row of this server that holds ``text`` in any column."""
    assert space.db.engine == "sqlite"
    found = []
    with space.db.tx(write=False) as tx:
        tables = [t for (t,) in tx.all("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [c[1] for c in tx.all(f"PRAGMA table_info({table})")]
            if "guild_id" not in columns:
                continue
            for row in tx.all(f"SELECT * FROM {table} WHERE guild_id = ?", (space.guild_id,)):
                if any(text in str(value) for value in row):
                    found.append(table)
                    break
    return found


@contextmanager
def writes_refused(monkeypatch: pytest.MonkeyPatch, db: Database) -> Iterator[None]:
    """Inside the block the bot's database refuses every write as a read-only SQLite file does; reads still work.

    Each thread has its own connection (the Model runs the records' functions in worker threads), so every
    connection is made query-only as a transaction takes it, and writable again after the block.
    """
    assert db.engine == "sqlite"
    refused = [True]
    real = db._conn

    def conn() -> Any:
        c = real()
        c.execute(f"PRAGMA query_only = {'ON' if refused[0] else 'OFF'}")
        return c

    monkeypatch.setattr(db, "_conn", conn)
    try:
        yield
    finally:
        refused[0] = False
