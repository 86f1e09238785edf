"""One database for the bot's records: SQLite under ``DATA_DIR`` by default, PostgreSQL with ``DATABASE_URL``.

Why stdlib ``sqlite3`` plus psycopg 3 and no ORM: the schema is a dozen tables written once in portable SQL
(``?`` placeholders, ``ON CONFLICT`` upserts and ``RETURNING`` exist on SQLite >= 3.35 and PostgreSQL alike);
the only differences (id columns, placeholders, how a transaction takes its write lock) are handled here,
and migrations are a numbered list (``records.schema``), as simonw/llm keeps its SQLite logs.

All calls are sync and short; the Model runs them in worker threads. Each thread has its own connection
(sqlite3 and psycopg connections are not shared between threads). A connection that fails (PostgreSQL
restarted, the network dropped) is dropped and the next call opens a new one, so the bot recovers by itself;
the call in flight raises :class:`DatabaseUnavailable`, whose text is safe to show.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from errors import TrainerError

log = logging.getLogger(__name__)

SQLITE_FILE = "trainer.db"
PING_AFTER = 10.0  # seconds a PostgreSQL connection may sit idle before it is checked at its next use
Row = tuple[Any, ...]
Params = Sequence[Any]


class DatabaseError(TrainerError):
    """The database refused or failed a statement; ``str()`` is safe to show."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached or written right now (server down, read-only file, full disk)."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason  # the driver's words, for the log (never shown: it may name hosts)


class SchemaTooNew(DatabaseError):
    """The database was migrated by a newer version of the bot: refused, nothing changed."""


def _sqlite_reason(exc: sqlite3.Error) -> str:
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text:
        return "the database file is read-only"
    if "full" in text:
        return "the disk is full"
    if "locked" in text or "busy" in text:
        return "the database is busy"
    return str(exc)


class Tx:
    """A transaction in progress: statements with ``?`` placeholders on either engine."""

    def __init__(self, db: Database, conn: Any) -> None:
        self._db = db
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> Any:
        return self._conn.execute(self._db.sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        if rows:
            cur = self._conn.cursor()
            cur.executemany(self._db.sql(sql), [tuple(r) for r in rows])

    def one(self, sql: str, params: Params = ()) -> Row | None:
        row = self.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: Params = ()) -> list[Row]:
        return [tuple(r) for r in self.execute(sql, params).fetchall()]

    def scalar(self, sql: str, params: Params = (), default: Any = None) -> Any:
        row = self.one(sql, params)
        return default if row is None or row[0] is None else row[0]


class Database:
    """The bot's record store. ``Database.open(url, data_dir)`` picks the engine; ``tx()`` is a transaction."""

    def __init__(self, *, sqlite_path: Path | None = None, url: str | None = None) -> None:
        if (sqlite_path is None) == (url is None):
            raise ValueError("give a SQLite path or a PostgreSQL URL")
        self.sqlite_path = sqlite_path
        self.url = url
        self.engine = "sqlite" if sqlite_path is not None else "postgresql"
        self._local = threading.local()
        # Bumped when a connection is found broken: every thread then reconnects before its next use, so
        # the pool of worker threads recovers together once the server is back (not one failed command each).
        self._generation = 0
        self._conns: list[Any] = []
        self._conns_guard = threading.Lock()
        self._migrated = False
        self._migrate_guard = threading.Lock()

    @classmethod
    def open(cls, url: str | None, data_dir: Path) -> Database:
        """PostgreSQL when ``url`` (``postgresql://…``) is given, else SQLite at ``DATA_DIR/trainer.db``."""
        if url:
            return cls(url=url)
        return cls(sqlite_path=Path(data_dir) / SQLITE_FILE)

    @property
    def where(self) -> str:
        """Where the records are, for the log (a URL without its password)."""
        if self.sqlite_path is not None:
            return f"SQLite {self.sqlite_path}"
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(self.url or "")
        return f"PostgreSQL {info.get('dbname', '?')} on {info.get('host') or 'the local socket'}"

    # ------------------------------------------------------------ connections

    def sql(self, statement: str) -> str:
        """A statement written with ``?`` placeholders, in this engine's style."""
        return statement if self.engine == "sqlite" else statement.replace("?", "%s")

    def _connect(self) -> Any:
        conn: Any
        if self.sqlite_path is not None:
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.sqlite_path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA foreign_keys = ON")
            # Deleted rows are overwritten, so a forgotten person's text does not linger in free pages.
            conn.execute("PRAGMA secure_delete = ON")
            # WAL: readers never wait for the writer; synchronous=FULL keeps every commit on disk.
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                except sqlite3.OperationalError as exc:  # a read-only file still reads
                    log.warning("could not switch %s to WAL: %s", self.sqlite_path, exc)
            conn.execute("PRAGMA synchronous = FULL")
        else:
            import psycopg

            conn = psycopg.connect(self.url or "", autocommit=True, connect_timeout=10)
        with self._conns_guard:
            self._conns.append(conn)
        return conn

    def _conn(self) -> Any:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and self.engine == "postgresql":
            stale = getattr(local, "generation", 0) != self._generation or conn.closed or conn.broken
            if not stale and time.monotonic() - getattr(local, "used", 0.0) > PING_AFTER:
                # Idle a while: the server may have restarted since. A cheap ping outside any transaction,
                # so a dead connection is replaced before a command meets it.
                try:
                    conn.execute("SELECT 1")
                except Exception:  # noqa: BLE001 - any driver error means: reconnect (all threads)
                    stale = True
                    self._generation += 1
            if stale:
                self._drop()
                conn = None
        if conn is None:
            conn = local.conn = self._connect()
            local.generation = self._generation
        local.used = time.monotonic()
        return conn

    def _drop(self) -> None:
        """Forget this thread's connection (it failed); the next call opens a new one."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._conns_guard:
                if conn in self._conns:
                    self._conns.remove(conn)
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close too
                pass

    def close(self) -> None:
        """Close every connection this object opened (threads that still run get new ones on demand)."""
        with self._conns_guard:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
        self._local = threading.local()

    # ------------------------------------------------------------ transactions

    @contextmanager
    def tx(self, *, write: bool = True) -> Iterator[Tx]:
        """One transaction: committed when the block ends, rolled back when it raises.

        Driver errors become :class:`DatabaseUnavailable` (connection lost, read-only, disk full) or
        :class:`DatabaseError`; the project's own exceptions raised in the block pass through unchanged.
        """
        self.migrate()
        with self._transaction(write=write) as tx:
            yield tx

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Tx]:
        try:
            conn = self._conn()
        except Exception as exc:  # noqa: BLE001 - any driver's connect error
            self._drop()
            raise self._translate(exc) from None
        if self.engine == "sqlite":
            try:
                # IMMEDIATE takes the write lock up front: a read-then-write block cannot deadlock or go stale.
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise self._translate(exc) from None
            try:
                yield Tx(self, conn)
            except BaseException as exc:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc) from None
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise self._translate(exc) from None
        else:
            import psycopg

            try:
                with conn.transaction():
                    yield Tx(self, conn)
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError) or conn.closed or conn.broken:
                    self._generation += 1  # every thread's connection may be dead: all reconnect
                    self._drop()
                raise self._translate(exc) from None

    def _translate(self, exc: BaseException) -> DatabaseError:
        if isinstance(exc, DatabaseError):
            return exc
        if isinstance(exc, sqlite3.OperationalError):
            reason = _sqlite_reason(exc)
            log.warning("database %s: %s", self.sqlite_path, exc)
            return DatabaseUnavailable(f"I could not use my database ({reason}).", reason=reason)
        if isinstance(exc, sqlite3.Error):
            log.warning("database %s: %s", self.sqlite_path, exc)
            return DatabaseError(f"My database refused that ({type(exc).__name__}).")
        try:
            import psycopg
        except ImportError:  # pragma: no cover - only SQLite in use
            psycopg = None  # type: ignore[assignment]
        if psycopg is not None and isinstance(exc, psycopg.OperationalError):
            log.warning("database unreachable: %s", str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
            return DatabaseUnavailable("I could not reach my database; it may be restarting. Try again in a moment.",
                                       reason=str(exc))
        if psycopg is not None and isinstance(exc, psycopg.Error):
            log.warning("database error: %s", exc)
            return DatabaseError(f"My database refused that ({type(exc).__name__}).")
        if isinstance(exc, OSError):  # SQLite's folder cannot be made, ...
            return DatabaseUnavailable(f"I could not open my database ({exc.strerror or type(exc).__name__}).",
                                       reason=str(exc))
        return DatabaseError(f"My database failed ({type(exc).__name__}).")

    def checkpoint(self) -> None:
        """SQLite: fold the write-ahead log into the file and truncate it (after a forget, so deleted text
        does not linger in the log); PostgreSQL reclaims dead rows itself (autovacuum)."""
        if self.engine != "sqlite":
            return
        try:
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # busy readers: the next checkpoint folds it
            log.info("could not checkpoint %s: %s", self.sqlite_path, exc)

    # ------------------------------------------------------------ schema

    def migrate(self) -> None:
        """Bring the schema to the newest version once per object (see ``records.schema``)."""
        if self._migrated:
            return
        with self._migrate_guard:
            if self._migrated:
                return
            from records.schema import migrate

            migrate(self)
            self._migrated = True

    def schema_version(self) -> int:
        """The version the database is at (0: empty)."""
        from records.schema import current_version

        return current_version(self)
