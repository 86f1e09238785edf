"""Training-job records and each server's current model, in the database.

A job is one row of ``jobs``, updated in place (never rewritten whole into a log); its loss points are rows of
``job_losses``, one per step, so a job's records grow linearly with its steps. Records travel as
:data:`training.backend.JobRecord` dicts: the columns (id, backend, method, status, created_at, updated_at,
finished_at, started_by, channel_id, status_message_id, model, step, total_steps, error) plus everything else
(estimate, events, contributors, evaluation, candidate, activated, backend bookkeeping, ...) kept as JSON;
``last_loss`` ([step, loss]) is filled in when read.

The current model is a row of ``current_models`` per server and backend, with the ones before it
(``!model previous`` goes back through them).

All functions here are sync and short; the Model calls them in a thread.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from errors import InvalidInput, NotFound
from records.db import Database, Row, Tx
from storage import GuildSpace
from training.backend import TERMINAL, JobRecord

log = logging.getLogger(__name__)

KEEP_EVENTS = 5
HISTORY_KEPT = 50
COLUMNS = ("id", "backend", "method", "status", "created_at", "updated_at", "finished_at", "started_by",
           "channel_id", "status_message_id", "model", "step", "total_steps", "error")
LEASE = ("watcher", "lease_until")  # read with the record, written only by claim and release
_NOT_DATA = frozenset(COLUMNS) | frozenset(LEASE) | {"losses", "last_loss", "guild_id", "data"}
_SELECT = (f"SELECT {', '.join('j.' + c for c in COLUMNS + LEASE)}, j.data, "
           "(SELECT l.step FROM job_losses l WHERE l.guild_id = j.guild_id AND l.job_id = j.id "
           "ORDER BY l.step DESC LIMIT 1), "
           "(SELECT l.loss FROM job_losses l WHERE l.guild_id = j.guild_id AND l.job_id = j.id "
           "ORDER BY l.step DESC LIMIT 1) FROM jobs j")


def _record(row: Row) -> JobRecord:
    n = len(COLUMNS) + len(LEASE)
    record: JobRecord = dict(zip(COLUMNS + LEASE, row[:n], strict=True))
    record.update(json.loads(row[n] or "{}"))
    step, loss = row[n + 1], row[n + 2]
    record["last_loss"] = None if step is None else [int(step), float(loss)]
    return record


# ---------------------------------------------------------------- job records

def save_job(space: GuildSpace, record: JobRecord, losses: Iterable[tuple[int, float]] = ()) -> JobRecord:
    """Insert or update the job (and add new loss points; a step's newer loss wins); returns the record."""
    if not record.get("id"):
        raise ValueError("a job record needs an id")
    record["updated_at"] = time.time()
    record["events"] = list(record.get("events") or [])[-KEEP_EVENTS:]
    record.setdefault("created_at", record["updated_at"])
    record.setdefault("method", "supervised")
    with space.db.tx() as tx:
        upsert(tx, space.guild_id, record, losses)
        last = tx.one("SELECT step, loss FROM job_losses WHERE guild_id = ? AND job_id = ? ORDER BY step DESC "
                      "LIMIT 1", (space.guild_id, record["id"]))
    record["last_loss"] = None if last is None else [int(last[0]), float(last[1])]
    return record


def upsert(tx: Tx, guild_id: int, record: JobRecord, losses: Iterable[tuple[int, float]] = (), *,
           keep_existing: bool = False) -> None:
    """Write a job row (and loss points) in a transaction; ``keep_existing`` leaves a stored job as it is."""
    data = json.dumps({k: v for k, v in record.items() if k not in _NOT_DATA}, ensure_ascii=False)
    values = [record.get(c) for c in COLUMNS]
    values[COLUMNS.index("step")] = int(record.get("step") or 0)
    values[COLUMNS.index("method")] = record.get("method") or "supervised"
    values[COLUMNS.index("updated_at")] = record.get("updated_at") or time.time()
    values[COLUMNS.index("created_at")] = record.get("created_at") or values[COLUMNS.index("updated_at")]
    update = "NOTHING" if keep_existing else "UPDATE SET " + ", ".join(
        f"{c} = excluded.{c}" for c in (*COLUMNS[1:], "data"))
    tx.execute(f"INSERT INTO jobs (guild_id, {', '.join(COLUMNS)}, data) VALUES ({', '.join('?' * (len(COLUMNS) + 2))})"
               f" ON CONFLICT (guild_id, id) DO {update}", (guild_id, *values, data))
    _add_losses(tx, guild_id, record["id"], losses)


def _add_losses(tx: Tx, guild_id: int, job_id: str, losses: Iterable[tuple[int, float]]) -> None:
    tx.executemany("INSERT INTO job_losses (guild_id, job_id, step, loss) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (guild_id, job_id, step) DO UPDATE SET loss = excluded.loss",
                   [(guild_id, job_id, int(s), float(v)) for s, v in losses])


def job_losses(space: GuildSpace, job_id: str) -> list[tuple[int, float]]:
    """A job's (step, loss) points, by step."""
    with space.db.tx(write=False) as tx:
        rows = tx.all("SELECT step, loss FROM job_losses WHERE guild_id = ? AND job_id = ? ORDER BY step",
                      (space.guild_id, job_id))
    return [(int(s), float(v)) for s, v in rows]


def list_jobs(space: GuildSpace, limit: int = 10) -> list[JobRecord]:
    """The newest ``limit`` jobs (all with 0), newest first."""
    sql = f"{_SELECT} WHERE j.guild_id = ? ORDER BY j.created_at DESC"
    params: tuple[Any, ...] = (space.guild_id,)
    if limit:
        sql, params = sql + " LIMIT ?", (space.guild_id, int(limit))
    with space.db.tx(write=False) as tx:
        return [_record(r) for r in tx.all(sql, params)]


def get_job(space: GuildSpace, job_id: str) -> JobRecord:
    """A job by id or by a unique start of its id; NotFound otherwise."""
    job_id = (job_id or "").strip().strip("`")
    with space.db.tx(write=False) as tx:
        row = tx.one(f"{_SELECT} WHERE j.guild_id = ? AND j.id = ?", (space.guild_id, job_id))
        if row is not None:
            return _record(row)
        matches = [] if not job_id else tx.all(
            f"{_SELECT} WHERE j.guild_id = ? AND substr(j.id, 1, ?) = ? LIMIT 2", (space.guild_id, len(job_id), job_id))
    if len(matches) == 1:
        return _record(matches[0])
    if len(matches) > 1:
        raise InvalidInput(f"`{job_id}` matches several jobs; give more of the id.")
    raise NotFound(f"There is no training job `{job_id}` on this server.")


def unfinished_jobs(space: GuildSpace) -> list[JobRecord]:
    """This server's jobs not yet succeeded/failed/cancelled, oldest first (the watcher resumes these)."""
    marks = ", ".join("?" * len(TERMINAL))
    with space.db.tx(write=False) as tx:
        rows = tx.all(f"{_SELECT} WHERE j.guild_id = ? AND j.status NOT IN ({marks}) ORDER BY j.created_at",
                      (space.guild_id, *sorted(TERMINAL)))
    return [_record(r) for r in rows]


def guilds_with_unfinished_jobs(db: Database) -> list[int]:
    """Ids of the servers that have an unfinished job (any backend)."""
    marks = ", ".join("?" * len(TERMINAL))
    with db.tx(write=False) as tx:
        return [int(r[0]) for r in tx.all(f"SELECT DISTINCT guild_id FROM jobs WHERE status NOT IN ({marks})",
                                          tuple(sorted(TERMINAL)))]


def set_status_message(space: GuildSpace, job_id: str, message_id: int) -> None:
    """The message the watcher edits for this job (survives restarts)."""
    with space.db.tx() as tx:
        row = tx.one("SELECT data FROM jobs WHERE guild_id = ? AND id = ?", (space.guild_id, job_id))
        if row is None:
            raise NotFound(f"There is no training job `{job_id}` on this server.")
        tx.execute("UPDATE jobs SET status_message_id = ? WHERE guild_id = ? AND id = ?",
                   (message_id, space.guild_id, job_id))


# ---------------------------------------------------------------- who watches a job (several processes)

def claim(space: GuildSpace, job_id: str, watcher: str, seconds: float) -> bool:
    """Take or renew the lease on watching a job for ``seconds``; False while another watcher holds it.

    One conditional UPDATE, atomic on both engines: two processes can never both hold a lease.
    """
    now = time.time()
    with space.db.tx() as tx:
        cur = tx.execute("UPDATE jobs SET watcher = ?, lease_until = ? WHERE guild_id = ? AND id = ? AND "
                         "(watcher IS NULL OR watcher = ? OR lease_until IS NULL OR lease_until < ?)",
                         (watcher, now + seconds, space.guild_id, job_id, watcher, now))
        return bool(cur.rowcount)


def release(space: GuildSpace, job_id: str, watcher: str) -> None:
    """Give up watching a job (it ended, or this process stops)."""
    with space.db.tx() as tx:
        tx.execute("UPDATE jobs SET watcher = NULL, lease_until = NULL WHERE guild_id = ? AND id = ? AND watcher = ?",
                   (space.guild_id, job_id, watcher))


def release_all(db: Database, watcher: str) -> int:
    """Give up watching every job ``watcher`` holds, in all servers (this process stops cleanly); returns how many."""
    with db.tx() as tx:
        cur = tx.execute("UPDATE jobs SET watcher = NULL, lease_until = NULL WHERE watcher = ?", (watcher,))
        return int(cur.rowcount or 0)


def free_for(job: JobRecord, watcher: str) -> bool:
    """Whether ``watcher`` may watch ``job`` now: nobody else holds a lease that still runs."""
    holder, until = job.get("watcher"), job.get("lease_until")
    return holder in (None, watcher) or until is None or float(until) < time.time()


# ---------------------------------------------------------------- current model

def _model_row(tx: Tx, guild_id: int, backend: str) -> tuple[str | None, list[str]]:
    row = tx.one("SELECT current, history FROM current_models WHERE guild_id = ? AND backend = ?",
                 (guild_id, backend))
    return (None, []) if row is None else (row[0], list(json.loads(row[1] or "[]")))


def current_model(space: GuildSpace, backend: str) -> str | None:
    """The model this guild answers with on ``backend``, or None (not trained yet)."""
    with space.db.tx(write=False) as tx:
        return _model_row(tx, space.guild_id, backend)[0]


def model_history(space: GuildSpace, backend: str) -> list[str]:
    """Earlier current models, oldest first (``previous`` goes back through these)."""
    with space.db.tx(write=False) as tx:
        return _model_row(tx, space.guild_id, backend)[1]


def set_current_model(space: GuildSpace, backend: str, name: str | None, *, back: bool = False) -> str | None:
    """Make ``name`` current (the old current goes to history), or with ``back`` go back to the last one.

    Returns the new current model.
    """
    with space.db.tx() as tx:
        current, history = _model_row(tx, space.guild_id, backend)
        if back:
            if not history:
                raise NotFound("There is no previous model to go back to.")
            current = history.pop()
        elif name != current:
            if current:
                history = (history + [current])[-HISTORY_KEPT:]
            current = name
        tx.execute("INSERT INTO current_models (guild_id, backend, current, history) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (guild_id, backend) DO UPDATE SET current = excluded.current, "
                   "history = excluded.history", (space.guild_id, backend, current, json.dumps(history)))
    return current
