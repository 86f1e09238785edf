"""Training-job records and each server's current model, in the database.

A job is one row of ``jobs``, updated in place (never rewritten whole into a log); its loss points are rows of
``job_losses``, one per step, so a job's records grow linearly with its steps. Jobs travel as
:class:`training.backend.Job`: the columns (id, backend, method, status, created_at, updated_at, finished_at,
started_by, channel_id, status_message_id, model, step, total_steps, error; watcher and lease_until, written only
by :func:`claim` and :func:`release`) plus everything else (events, estimate, contributors, evaluation, candidate,
activated, ..., and the backend's ``extra``) kept as one JSON object in ``data``, with the keys it always had, so
rows written before ``Job`` existed and the legacy import (:func:`from_dict`) load the same way; ``last_loss``
(step, loss) is filled in when read. :func:`_record` and :func:`upsert` are the one conversion.

The current model is a row of ``current_models`` per server and backend, with the ones before it
(``!model previous`` goes back through them).

All functions here are sync and short; the Model calls them in a thread.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from errors import InvalidInput, NotFound
from records.db import Database, Row, Tx
from storage import GuildSpace
from training.backend import TERMINAL, Estimate, Evaluation, Job, Score

log = logging.getLogger(__name__)

KEEP_EVENTS = 5
HISTORY_KEPT = 50
COLUMNS = ("id", "backend", "method", "status", "created_at", "updated_at", "finished_at", "started_by",
           "channel_id", "status_message_id", "model", "step", "total_steps", "error")
LEASE = ("watcher", "lease_until")  # read with the record, written only by claim and release
# Keys of a stored record that are not the job's (the old log's losses) or are read apart (last_loss).
_IGNORED = frozenset({"losses", "last_loss", "guild_id", "data"})
_SELECT = (f"SELECT {', '.join('j.' + c for c in COLUMNS + LEASE)}, j.data, "
           "(SELECT l.step FROM job_losses l WHERE l.guild_id = j.guild_id AND l.job_id = j.id "
           "ORDER BY l.step DESC LIMIT 1), "
           "(SELECT l.loss FROM job_losses l WHERE l.guild_id = j.guild_id AND l.job_id = j.id "
           "ORDER BY l.step DESC LIMIT 1) FROM jobs j")


# ---------------------------------------------------------------- Job <-> stored fields

def _int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _score(value: Any) -> Score | None:
    if not isinstance(value, Mapping) or not value:  # an empty object meant nothing to show
        return None
    return Score(n=_int(value.get("n")) or 0, new=_int(value.get("new")) or 0, old=_int(value.get("old")))


def _score_json(score: Score) -> dict[str, int]:
    return {"n": score.n, "new": score.new, **({} if score.old is None else {"old": score.old})}


def _progress(value: Any) -> tuple[int, int] | None:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    done, total = _int(value[0]), _int(value[1])
    return None if done is None or total is None else (done, total)


def _estimate(value: Any) -> Estimate | None:
    if not isinstance(value, Mapping) or not value:  # an empty object meant nothing to show
        return None
    return Estimate(examples=_int(value.get("examples")), tokens=_int(value.get("tokens")),
                    epochs=_int(value.get("epochs")), billed_tokens=_int(value.get("billed_tokens")))


def _evaluation(value: Any) -> Evaluation | None:
    if not isinstance(value, Mapping) or not value:  # an empty object meant nothing to show
        return None
    return Evaluation(old_model=_str(value.get("old_model")), margin=_float(value.get("margin")) or 0.0,
                      eval_set=_score(value.get("set")), heldout=_score(value.get("heldout")),
                      error=_str(value.get("error")), candidate=bool(value.get("candidate")),
                      reason=_str(value.get("reason")))


def from_dict(fields: Mapping[str, Any]) -> Job:
    """A job from its stored fields: a row's columns with its ``data`` object, or a record of the old jobs log.

    What is not a field of :class:`Job` is the backend's bookkeeping (``extra``).
    """
    f = dict(fields)
    take = f.pop
    last = take("last_loss", None)
    job = Job(
        id=str(take("id")), backend=str(take("backend", None) or "?"), status=str(take("status", None) or "?"),
        method=str(take("method", None) or "supervised"),
        created_at=_float(take("created_at", None)) or 0.0, updated_at=_float(take("updated_at", None)) or 0.0,
        finished_at=_float(take("finished_at", None)), started_by=_str(take("started_by", None)),
        channel_id=_int(take("channel_id", None)), status_message_id=_int(take("status_message_id", None)),
        model=_str(take("model", None)), step=_int(take("step", None)) or 0,
        total_steps=_int(take("total_steps", None)), error=_str(take("error", None)),
        watcher=_str(take("watcher", None)), lease_until=_float(take("lease_until", None)),
        last_loss=(int(last[0]), float(last[1])) if isinstance(last, (list, tuple)) and len(last) == 2 else None,
        events=[str(e) for e in take("events", None) or []],
        estimate=_estimate(take("estimate", None)),
        contributors=[(str(c[0]), _int(c[1]) or 0) for c in take("contributors", None) or []
                      if isinstance(c, (list, tuple)) and len(c) == 2],
        evaluation=_evaluation(take("evaluation", None)),
        candidate=bool(take("candidate", False)), activated=bool(take("activated", False)),
        cancelled_by=_str(take("cancelled_by", None)), note=_str(take("note", None)),
        device=_str(take("device", None)), resumed_from=_int(take("resumed_from", None)),
        smoothed_loss=_float(take("smoothed_loss", None)), examples_per_s=_float(take("examples_per_s", None)),
        eta_s=_float(take("eta_s", None)), progress=_progress(take("progress", None)),
        stage=_str(take("stage", None)), live=bool(take("live", False)),
        replaced_model=_str(take("replaced_model", None)),
    )
    job.extra = {k: v for k, v in f.items() if k not in _IGNORED}
    return job


def _data(job: Job) -> dict[str, Any]:
    """The ``data`` column of a job: everything but the columns, under the keys it always had."""
    data: dict[str, Any] = {**job.extra, "events": list(job.events),
                            "contributors": [[name, n] for name, n in job.contributors]}
    if job.estimate is not None:
        data["estimate"] = {k: v for k, v in asdict(job.estimate).items() if v is not None}
    if (ev := job.evaluation) is not None:
        data["evaluation"] = {"old_model": ev.old_model, "margin": ev.margin, "candidate": ev.candidate}
        if ev.eval_set is not None:
            data["evaluation"]["set"] = _score_json(ev.eval_set)
        if ev.heldout is not None:
            data["evaluation"]["heldout"] = _score_json(ev.heldout)
        if ev.error is not None:
            data["evaluation"]["error"] = ev.error
        if ev.reason is not None:
            data["evaluation"]["reason"] = ev.reason
    data.update({k: True for k, flag in (("candidate", job.candidate), ("activated", job.activated),
                                         ("live", job.live)) if flag})
    optional = {"cancelled_by": job.cancelled_by, "note": job.note, "device": job.device,
                "resumed_from": job.resumed_from, "smoothed_loss": job.smoothed_loss,
                "examples_per_s": job.examples_per_s, "eta_s": job.eta_s, "stage": job.stage or None,
                "replaced_model": job.replaced_model,
                "progress": list(job.progress) if job.progress is not None else None}
    data.update({k: v for k, v in optional.items() if v is not None})
    return data


def _record(row: Row) -> Job:
    n = len(COLUMNS) + len(LEASE)
    job = from_dict({**json.loads(row[n] or "{}"), **dict(zip(COLUMNS + LEASE, row[:n], strict=True))})
    step, loss = row[n + 1], row[n + 2]
    job.last_loss = None if step is None else (int(step), float(loss))
    return job


# ---------------------------------------------------------------- job records

def save_job(space: GuildSpace, job: Job, losses: Iterable[tuple[int, float]] = ()) -> Job:
    """Insert or update the job (and add new loss points; a step's newer loss wins); returns the job."""
    if not job.id:
        raise ValueError("a job needs an id")
    job.updated_at = time.time()
    job.events = job.events[-KEEP_EVENTS:]
    if not job.created_at:
        job.created_at = job.updated_at
    job.method = job.method or "supervised"
    with space.db.tx() as tx:
        upsert(tx, space.guild_id, job, losses)
        last = tx.one("SELECT step, loss FROM job_losses WHERE guild_id = ? AND job_id = ? ORDER BY step DESC "
                      "LIMIT 1", (space.guild_id, job.id))
    job.last_loss = None if last is None else (int(last[0]), float(last[1]))
    return job


def upsert(tx: Tx, guild_id: int, job: Job, losses: Iterable[tuple[int, float]] = (), *,
           keep_existing: bool = False) -> None:
    """Write a job row (and loss points) in a transaction; ``keep_existing`` leaves a stored job as it is."""
    data = json.dumps(_data(job), ensure_ascii=False)
    updated = job.updated_at or time.time()
    columns = {
        "id": job.id, "backend": job.backend, "method": job.method or "supervised", "status": job.status,
        "created_at": job.created_at or updated, "updated_at": updated, "finished_at": job.finished_at,
        "started_by": job.started_by, "channel_id": job.channel_id, "status_message_id": job.status_message_id,
        "model": job.model, "step": int(job.step or 0), "total_steps": job.total_steps, "error": job.error,
    }
    update = "NOTHING" if keep_existing else "UPDATE SET " + ", ".join(
        f"{c} = excluded.{c}" for c in (*COLUMNS[1:], "data"))
    tx.execute(f"INSERT INTO jobs (guild_id, {', '.join(COLUMNS)}, data) VALUES ({', '.join('?' * (len(COLUMNS) + 2))})"
               f" ON CONFLICT (guild_id, id) DO {update}", (guild_id, *(columns[c] for c in COLUMNS), data))
    _add_losses(tx, guild_id, job.id, losses)


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


def list_jobs(space: GuildSpace, limit: int = 10) -> list[Job]:
    """The newest ``limit`` jobs (all with 0), newest first."""
    sql = f"{_SELECT} WHERE j.guild_id = ? ORDER BY j.created_at DESC"
    params: tuple[Any, ...] = (space.guild_id,)
    if limit:
        sql, params = sql + " LIMIT ?", (space.guild_id, int(limit))
    with space.db.tx(write=False) as tx:
        return [_record(r) for r in tx.all(sql, params)]


def get_job(space: GuildSpace, job_id: str) -> Job:
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


def unfinished_jobs(space: GuildSpace) -> list[Job]:
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


def free_for(job: Job, watcher: str) -> bool:
    """Whether ``watcher`` may watch ``job`` now: nobody else holds a lease that still runs."""
    return job.watcher in (None, watcher) or job.lease_until is None or job.lease_until < time.time()


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
