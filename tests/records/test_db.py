"""The records' database on both engines: transactions, and faults turned into one plain line."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import Settings
from dataset import corrections as records
from errors import NotSaved
from records.db import Database, DatabaseUnavailable
from sandbox.server import Sandbox
from storage import GuildSpace, saved
from tests.harness import running_bot
from tests.postgres import PostgresServer


def test_a_transaction_commits_or_rolls_back_whole(db: Database) -> None:
    with db.tx() as tx:
        tx.execute("INSERT INTO guild_state (guild_id, key, value) VALUES (?, ?, ?)", (1, "a", "1"))
    with pytest.raises(RuntimeError):
        with db.tx() as tx:
            tx.execute("INSERT INTO guild_state (guild_id, key, value) VALUES (?, ?, ?)", (1, "b", "2"))
            raise RuntimeError("stop")
    with db.tx(write=False) as tx:
        assert tx.all("SELECT key FROM guild_state ORDER BY key") == [("a",)]


def test_servers_never_see_each_others_records(db: Database, tmp_path: Path) -> None:
    a = GuildSpace(1, tmp_path / "d", tmp_path / "c", db)
    b = GuildSpace(2, tmp_path / "d", tmp_path / "c", db)
    records.record_answer(a, message_ids=[10], channel_id=1, prompt="q", answer="a", prompt_message_id=9,
                          author_id=3, model=None)
    records.add_feedback(a, text="hello", author_id=3, author_name="x", channel_id=1, reply_to=None)
    assert records.find_answer(a, 10) is not None and records.find_answer(b, 10) is None
    assert records.list_feedback(b) == [] and len(records.list_feedback(a)) == 1


def test_sqlite_is_in_wal_mode_under_data_dir(tmp_path: Path) -> None:
    db = Database.open(None, tmp_path / "data")
    with db.tx(write=False) as tx:
        assert str(tx.scalar("PRAGMA journal_mode")).lower() == "wal"
    assert (tmp_path / "data" / "trainer.db").is_file()
    db.close()


def test_a_read_only_database_refuses_writes_with_one_line(tmp_path: Path) -> None:
    db = Database.open(None, tmp_path / "data")
    space = GuildSpace(1, tmp_path / "data", tmp_path / "c", db)
    records.add_feedback(space, text="kept", author_id=1, author_name="x", channel_id=1, reply_to=None)
    db._conn().execute("PRAGMA query_only = ON")  # what SQLite says for a read-only file: SQLITE_READONLY
    with pytest.raises(DatabaseUnavailable) as err:
        records.add_feedback(space, text="lost", author_id=1, author_name="x", channel_id=1, reply_to=None)
    assert str(err.value) == "I could not use my database (the database file is read-only)."
    assert [f.text for f in records.list_feedback(space)] == ["kept"]  # reads still work
    db.close()


def test_a_full_disk_refuses_writes_with_one_line(tmp_path: Path) -> None:
    db = Database.open(None, tmp_path / "data")
    space = GuildSpace(1, tmp_path / "data", tmp_path / "c", db)
    records.add_feedback(space, text="kept", author_id=1, author_name="x", channel_id=1, reply_to=None)
    conn = db._conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    with pytest.raises(DatabaseUnavailable) as err:
        records.add_feedback(space, text="x" * 19_000, author_id=1, author_name="x", channel_id=1, reply_to=None)
    assert "the disk is full" in str(err.value)
    assert [f.text for f in records.list_feedback(space)] == ["kept"]
    db.close()


async def test_a_refused_write_says_plainly_that_it_was_not_saved() -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise DatabaseUnavailable("I could not use my database (the disk is full).", reason="full")

    with pytest.raises(NotSaved) as err:
        await saved("your feedback", refuse)
    assert str(err.value).startswith("Your feedback was not saved: I could not use my database (the disk is full).")


def test_postgresql_going_away_fails_the_call_in_flight_then_recovers(pg_server: PostgresServer, pg_url: str,
                                                                      tmp_path: Path) -> None:
    db = Database.open(pg_url, tmp_path / "data")
    space = GuildSpace(1, tmp_path / "data", tmp_path / "c", db)
    records.add_feedback(space, text="before", author_id=1, author_name="x", channel_id=1, reply_to=None)
    pg_server.stop()
    try:
        with pytest.raises(DatabaseUnavailable) as err:
            records.add_feedback(space, text="during", author_id=1, author_name="x", channel_id=1, reply_to=None)
        assert "could not reach my database" in str(err.value)
        with pytest.raises(DatabaseUnavailable):  # still down: a new connection fails the same way
            records.list_feedback(space)
    finally:
        pg_server.start()
    records.add_feedback(space, text="after", author_id=1, author_name="x", channel_id=1, reply_to=None)
    assert [f.text for f in records.list_feedback(space)] == ["before", "after"]
    db.close()


async def test_the_bot_rides_out_postgresql_going_away(pg_server: PostgresServer, pg_url: str, settings: Settings,
                                                       sandbox: Sandbox, error_log: object) -> None:
    """The real bot on PostgreSQL: while the server is down, a command fails with one plain line and nothing is
    half-saved; once it is back, the bot works again by itself (no restart)."""
    async with running_bot(sandbox, settings, database_url=pg_url) as h:
        assert (await h.ask("!feedback before the outage")).startswith("Thanks for the feedback!")
        pg_server.stop()
        try:
            said = await h.ask("!feedback during the outage")
            assert said.startswith("Your feedback was not saved: I could not reach my database; it may be "
                                   "restarting. Try again in a moment. Nothing was changed"), said
            said = await h.ask("!jobs")  # a read: one line too
            assert "could not reach my database" in said, said
        finally:
            pg_server.start()
        assert (await h.ask("!feedback after the outage")).startswith("Thanks for the feedback!")
        space = GuildSpace(h.guild_id, settings.data_dir, settings.corrections_dir, h.bot.db)
        assert [f.text for f in records.list_feedback(space)] == ["before the outage", "after the outage"]
