"""Durable training-job records and the guild's current model.

Jobs live in ``space.jobs_file`` (JSON Lines, append-only; the latest record per job id
wins), so a restart can pick up unfinished jobs and a crash loses at most the last update.
Record fields: id, backend, method, status, created_at, updated_at, finished_at, started_by,
channel_id, status_message_id, model (the result), estimate {examples, tokens, epochs,
billed_tokens}, step, total_steps, losses [[step, loss], ...], events (last few), error,
plus backend bookkeeping (e.g. training_file, last_event_id).

The current model is the key ``"model"`` of ``space.state_file``, per backend:
``{"local": {"current": "local-v3", "history": ["local-v1", "local-v2"]}, "openai": {...}}``.
Other keys of state.json belong to other modules and are preserved.

All functions here are sync and cheap (small files). The status text and the loss curve are in
``training/status.py``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from errors import InvalidInput, NotFound
from storage import GuildSpace, append_record, read_records
from training.backend import TERMINAL

log = logging.getLogger(__name__)

KEEP_EVENTS = 5


# ---------------------------------------------------------------- job records

def save_job(space: GuildSpace, record: dict[str, Any]) -> dict[str, Any]:
    """Append the full record (it becomes the latest version of that job); returns it."""
    if not record.get("id"):
        raise ValueError("a job record needs an id")
    record["updated_at"] = time.time()
    record["events"] = list(record.get("events") or [])[-KEEP_EVENTS:]
    append_record(space.jobs_file, record)
    return record


def _latest(space: GuildSpace) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for rec in read_records(space.jobs_file).records:
        if isinstance(rec.get("id"), str):
            latest[rec["id"]] = rec
    return latest


def list_jobs(space: GuildSpace, limit: int = 10) -> list[dict[str, Any]]:
    """The newest ``limit`` jobs, newest first."""
    jobs = sorted(_latest(space).values(), key=lambda j: j.get("created_at") or 0, reverse=True)
    return jobs[:limit] if limit else jobs


def get_job(space: GuildSpace, job_id: str) -> dict[str, Any]:
    """A job by id or by a unique start of its id; NotFound otherwise."""
    job_id = (job_id or "").strip().strip("`")
    latest = _latest(space)
    if job_id in latest:
        return latest[job_id]
    matches = [j for i, j in latest.items() if job_id and i.startswith(job_id)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidInput(f"`{job_id}` matches {len(matches)} jobs; give more of the id.")
    raise NotFound(f"There is no training job `{job_id}` on this server.")


def unfinished_jobs(space: GuildSpace) -> list[dict[str, Any]]:
    """Jobs not yet succeeded/failed/cancelled, oldest first (the watcher resumes these)."""
    jobs = [j for j in _latest(space).values() if j.get("status") not in TERMINAL]
    return sorted(jobs, key=lambda j: j.get("created_at") or 0)


# ---------------------------------------------------------------- rendering

def merge_losses(old: list, new: list) -> list[list[float]]:
    """Union of (step, loss) points, the newer value winning for a step, sorted by step."""
    by_step = {int(s): float(v) for s, v in old or []}
    by_step.update({int(s): float(v) for s, v in new or []})
    return [[s, by_step[s]] for s in sorted(by_step)]


# ---------------------------------------------------------------- current model (state.json)

def _model_state(state: dict[str, Any], backend: str) -> dict[str, Any]:
    models = state.get("model")
    if not isinstance(models, dict):
        models = {}
    entry = models.get(backend)
    if not isinstance(entry, dict):
        entry = {"current": None, "history": []}
    entry.setdefault("current", None)
    entry.setdefault("history", [])
    return entry


def current_model(space: GuildSpace, backend: str) -> str | None:
    """The model this guild answers with on ``backend``, or None (not trained yet)."""
    return _model_state(space.read_state(), backend)["current"]


def model_history(space: GuildSpace, backend: str) -> list[str]:
    """Earlier current models, oldest first (``previous`` goes back through these)."""
    return list(_model_state(space.read_state(), backend)["history"])


def set_current_model(space: GuildSpace, backend: str, name: str | None, *, back: bool = False) -> str | None:
    """Make ``name`` current (old current goes to history), or with ``back`` pop the last history entry.

    Returns the new current model. Other keys of state.json are kept.
    """
    with space.edit_state() as state:
        entry = _model_state(state, backend)
        if back:
            if not entry["history"]:
                raise NotFound("There is no previous model to go back to.")
            entry["current"] = entry["history"].pop()
        elif name != entry["current"]:
            if entry["current"]:
                entry["history"].append(entry["current"])
                entry["history"] = entry["history"][-50:]
            entry["current"] = name
        models = state.get("model") if isinstance(state.get("model"), dict) else {}
        models[backend] = entry
        state["model"] = models
    return entry["current"]
