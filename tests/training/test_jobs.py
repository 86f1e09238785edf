"""training/jobs.py on both engines: a job is one row updated in place, its loss points one row per step, and
the current model per backend with its history."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from errors import InvalidInput, NotFound
from records.db import Database
from storage import GuildSpace
from training import jobs
from training.backend import Estimate, Job


def rows(space: GuildSpace, table: str, job_id: str) -> int:
    with space.db.tx(write=False) as tx:
        return int(tx.scalar(f"SELECT COUNT(*) FROM {table} WHERE guild_id = ? AND "
                             f"{'id' if table == 'jobs' else 'job_id'} = ?", (space.guild_id, job_id)))


def test_latest_record_wins_and_unfinished(space: GuildSpace) -> None:
    jobs.save_job(space, Job(id="ftjob-a1", backend="openai", status="running", created_at=1.0))
    jobs.save_job(space, Job(id="ftjob-b2", backend="openai", status="queued", created_at=2.0))
    jobs.save_job(space, Job(id="ftjob-a1", backend="openai", status="succeeded", created_at=1.0, model="m1",
                             estimate=Estimate(examples=12)))
    assert [j.id for j in jobs.list_jobs(space)] == ["ftjob-b2", "ftjob-a1"]
    a1 = jobs.get_job(space, "ftjob-a1")
    assert a1.model == "m1" and a1.status == "succeeded" and a1.estimate == Estimate(examples=12)
    assert a1.method == "supervised" and a1.last_loss is None
    assert jobs.get_job(space, "ftjob-b").id == "ftjob-b2"  # unique prefix
    assert jobs.get_job(space, " `ftjob-a1` ").id == "ftjob-a1"  # as typed
    with pytest.raises(InvalidInput):
        jobs.get_job(space, "ftjob-")
    with pytest.raises(NotFound):
        jobs.get_job(space, "nope")
    with pytest.raises(NotFound):
        jobs.get_job(space, "")
    assert [j.id for j in jobs.unfinished_jobs(space)] == ["ftjob-b2"]
    assert jobs.list_jobs(space, 1)[0].id == "ftjob-b2"
    assert len(jobs.list_jobs(space, 0)) == 2
    with pytest.raises(ValueError):
        jobs.save_job(space, Job(id="", backend="openai", status="queued"))


def test_a_job_grows_by_one_row_per_loss_point_and_is_updated_in_place(space: GuildSpace) -> None:
    """What a long training costs the database: the job row is rewritten, never re-appended, and each poll adds
    only its new loss points (the old jobs log appended the whole record, losses included, on every poll)."""
    job = Job(id="j1", backend="local", status="running", created_at=1.0, total_steps=300)
    for step in range(1, 301):
        job.step = step
        job.events = [*job.events, f"step {step}"]
        saved = jobs.save_job(space, job, [(step, 3.0 / step)])
        assert saved.last_loss == (step, pytest.approx(3.0 / step))
    assert rows(space, "jobs", "j1") == 1
    assert rows(space, "job_losses", "j1") == 300
    stored = jobs.get_job(space, "j1")
    assert stored.step == 300 and stored.last_loss == (300, pytest.approx(0.01))
    assert len(stored.events) == jobs.KEEP_EVENTS and stored.events[-1] == "step 300"
    assert "losses" not in stored.extra  # the points are read on their own (the loss curve), never with the job
    # A save without new points (a status change) adds none; a step reported again keeps its newer loss.
    jobs.save_job(space, replace(stored, status="succeeded"))
    jobs.save_job(space, stored, [(300, 0.5), (299, 0.25)])
    assert rows(space, "job_losses", "j1") == 300 and rows(space, "jobs", "j1") == 1
    losses = jobs.job_losses(space, "j1")
    assert [s for s, _ in losses] == list(range(1, 301))
    assert losses[-2:] == [(299, 0.25), (300, 0.5)] and losses[0] == (1, 3.0)
    assert jobs.get_job(space, "j1").last_loss == (300, 0.5)
    assert jobs.job_losses(space, "other") == []


def test_losses_out_of_order_and_the_latest_point(space: GuildSpace) -> None:
    job = Job(id="j2", backend="openai", status="running", created_at=1.0)
    jobs.save_job(space, job, [(3, 1.0), (1, 2.0)])
    jobs.save_job(space, job, [(2, 1.5)])  # an older step reported late
    assert jobs.job_losses(space, "j2") == [(1, 2.0), (2, 1.5), (3, 1.0)]
    assert jobs.get_job(space, "j2").last_loss == (3, 1.0)


def test_jobs_and_models_are_per_guild(db: Database, tmp_path: Path) -> None:
    a = GuildSpace(1, tmp_path / "d", tmp_path / "c", db)
    b = GuildSpace(2, tmp_path / "d", tmp_path / "c", db)
    jobs.save_job(a, Job(id="j1", backend="local", status="running", created_at=1.0), [(1, 1.0)])
    jobs.set_current_model(a, "local", "local-v1")
    assert jobs.list_jobs(b) == [] and jobs.unfinished_jobs(b) == [] and jobs.job_losses(b, "j1") == []
    with pytest.raises(NotFound):
        jobs.get_job(b, "j1")
    assert jobs.current_model(b, "local") is None
    assert jobs.guilds_with_unfinished_jobs(db) == [1]
    # The same job id in another server is another job.
    jobs.save_job(b, Job(id="j1", backend="local", status="failed", created_at=2.0))
    assert jobs.get_job(a, "j1").status == "running" and jobs.get_job(b, "j1").status == "failed"
    assert jobs.get_job(b, "j1").last_loss is None
    assert jobs.guilds_with_unfinished_jobs(db) == [1]


def test_current_model_history_and_other_state_keys_kept(space: GuildSpace) -> None:
    with space.edit_state() as state:
        state.update({"dataset": "datasets/main", "system_prompt": "hi"})
    assert jobs.current_model(space, "local") is None
    assert jobs.set_current_model(space, "local", "local-v1") == "local-v1"
    jobs.set_current_model(space, "local", "local-v2")
    jobs.set_current_model(space, "local", "local-v2")  # the current one again: no history entry
    jobs.set_current_model(space, "openai", "ft:x")
    assert jobs.current_model(space, "local") == "local-v2"
    assert jobs.current_model(space, "openai") == "ft:x"
    assert jobs.model_history(space, "local") == ["local-v1"]
    assert jobs.model_history(space, "openai") == []
    assert jobs.set_current_model(space, "local", None, back=True) == "local-v1"
    with pytest.raises(NotFound):
        jobs.set_current_model(space, "local", None, back=True)
    assert jobs.current_model(space, "local") == "local-v1"
    assert space.read_state() == {"dataset": "datasets/main", "system_prompt": "hi"}


def test_history_is_capped(space: GuildSpace) -> None:
    for n in range(jobs.HISTORY_KEPT + 5):
        jobs.set_current_model(space, "local", f"local-v{n}")
    history = jobs.model_history(space, "local")
    assert len(history) == jobs.HISTORY_KEPT and history[-1] == f"local-v{jobs.HISTORY_KEPT + 3}"

