"""Migrations: from an empty database and from each earlier version, and a newer database refused."""

from __future__ import annotations

import pytest

from records import schema
from records.db import Database, SchemaTooNew


def _tables(db: Database) -> set[str]:
    with db.tx(write=False) as tx:
        if db.engine == "sqlite":
            rows = tx.all("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            rows = tx.all("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    return {r[0] for r in rows}


def test_an_empty_database_is_migrated_to_the_newest_schema(db: Database) -> None:
    assert db.schema_version() == 0
    db.migrate()
    assert db.schema_version() == schema.LATEST
    assert {"answers", "corrections", "reviews", "feedback", "test_errors", "reactions", "asks", "jobs",
            "job_losses", "current_models", "guild_state", "eval_cases", "budget", "forget_journal"} <= _tables(db)
    assert schema.migrate(db) == []  # nothing left to do, and running it again is harmless


@pytest.mark.parametrize("start", range(1, schema.LATEST))
def test_each_earlier_version_migrates_and_keeps_its_rows(db: Database, start: int) -> None:
    assert schema.migrate(db, upto=start) == list(range(1, start + 1))
    with db._transaction(write=True) as tx:
        tx.execute("INSERT INTO jobs (guild_id, id, backend, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (5, "job-1", "local", "running", 1.0, 1.0))
    assert schema.migrate(db) == list(range(start + 1, schema.LATEST + 1))
    with db.tx(write=False) as tx:
        assert tx.all("SELECT id, status, watcher, lease_until FROM jobs") == [("job-1", "running", None, None)]


def test_a_database_from_a_newer_bot_is_refused_and_left_alone(db: Database) -> None:
    db.migrate()
    with db.tx() as tx:
        tx.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (schema.LATEST + 1, 0.0))
    fresh = Database(sqlite_path=db.sqlite_path) if db.sqlite_path else Database(url=db.url)
    with pytest.raises(SchemaTooNew) as err:
        fresh.migrate()
    assert "written by a newer version of this bot" in str(err.value) and "Nothing was changed" in str(err.value)
    assert fresh.schema_version() == schema.LATEST + 1
    fresh.close()
