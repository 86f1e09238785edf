"""training/jobs.py on both engines: a job is one row updated in place, its loss points one row per step, and
the current model per backend with its history."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from errors import InvalidInput, NotFound
from records.db import Database
from storage import GuildSpace
from training import jobs
from training.backend import Estimate, Evaluation, Job, Score


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


# An hf job as the rows were written before ``Job``: the columns, and everything else in ``data``.
OLD_DATA = {
    "base_model": "tiny", "parent_model": None, "attempts": 2, "events_offset": 812, "launcher": "plain",
    "checkpoint_step": 6, "events": ["Resumed from step 6 (checkpoint)", "Saved model hf-v2"],
    "estimate": {"examples": 12, "tokens": 480, "epochs": 3, "billed_tokens": 1440},
    "contributors": [["alice (1)", 9], ["bob (2)", 3]], "device": "cpu", "resumed_from": 6,
    "smoothed_loss": 0.71, "examples_per_s": 3.5, "eta_s": 0,
    "evaluation": {"old_model": "hf-v1", "margin": 0.05, "set": {"n": 4, "new": 1, "old": 4},
                   "heldout": {"n": 2, "new": 2, "old": 2}, "candidate": True},
    "candidate": True, "note": "Deploy it first.",
}


def test_a_row_written_before_job_loads_and_saves_back_the_same(space: GuildSpace) -> None:
    with space.db.tx() as tx:
        tx.execute("INSERT INTO jobs (guild_id, id, backend, method, status, created_at, updated_at, finished_at, "
                   "started_by, channel_id, status_message_id, model, step, total_steps, error, data) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (space.guild_id, "hf-old", "hf", "supervised", "succeeded", 1.0, 2.0, 2.0, "admin", 5, 6, "hf-v2",
                    12, 12, None, json.dumps(OLD_DATA)))
    job = jobs.get_job(space, "hf-old")
    assert (job.id, job.backend, job.status, job.model, job.step, job.channel_id, job.status_message_id) == (
        "hf-old", "hf", "succeeded", "hf-v2", 12, 5, 6)
    assert job.estimate == Estimate(examples=12, tokens=480, epochs=3, billed_tokens=1440)
    assert job.contributors == [("alice (1)", 9), ("bob (2)", 3)]
    assert job.evaluation == Evaluation(old_model="hf-v1", margin=0.05, eval_set=Score(4, 1, 4),
                                        heldout=Score(2, 2, 2), candidate=True)
    assert job.candidate and not job.activated and job.cancelled_by is None and job.note == "Deploy it first."
    assert (job.device, job.resumed_from, job.smoothed_loss, job.examples_per_s, job.eta_s) == ("cpu", 6, 0.71,
                                                                                                 3.5, 0.0)
    # What only the hf backend reads stays its bookkeeping.
    assert job.extra == {"base_model": "tiny", "parent_model": None, "attempts": 2, "events_offset": 812,
                         "launcher": "plain", "checkpoint_step": 6}
    jobs.save_job(space, job)
    with space.db.tx(write=False) as tx:
        assert json.loads(tx.scalar("SELECT data FROM jobs WHERE guild_id = ? AND id = ?",
                                    (space.guild_id, "hf-old"))) == OLD_DATA


def test_a_legacy_log_record_and_a_bare_row_load(space: GuildSpace) -> None:
    """The old jobs log's records (``from_dict``) and rows with an empty ``data`` become jobs with the defaults."""
    job = jobs.from_dict({"id": "local-1", "backend": "local", "status": "running", "losses": [[1, 0.5]],
                          "last_loss": [1, 0.5], "pairs": 2, "labelled": 0, "estimate": {},
                          "evaluation": {"old_model": None, "margin": 0.05, "candidate": False}})
    assert job.last_loss == (1, 0.5) and job.extra == {"pairs": 2, "labelled": 0} and job.estimate is None
    assert job.evaluation == Evaluation(margin=0.05) and job.method == "supervised" and job.events == []
    with space.db.tx() as tx:
        tx.execute("INSERT INTO jobs (guild_id, id, backend, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (space.guild_id, "bare", "openai", "queued", 1.0, 1.0))
    bare = jobs.get_job(space, "bare")
    assert bare == Job(id="bare", backend="openai", status="queued", created_at=1.0, updated_at=1.0)


def test_progress_stage_and_a_live_model_are_kept(space: GuildSpace) -> None:
    job = Job(id="local-x", backend="local", status="running", progress=(10, 200), stage="Stage 2/2: ...",
              live=True, replaced_model="local-v1", model="local-v2", eta_s=12.5)
    jobs.save_job(space, job)
    back = jobs.get_job(space, "local-x")
    assert (back.progress, back.stage, back.live, back.replaced_model, back.eta_s) == (
        (10, 200), "Stage 2/2: ...", True, "local-v1", 12.5)
    assert back.extra == {}
