"""training/jobs.py: job records (latest line wins, damaged lines skipped), merged losses and the current
model per backend in state.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from errors import InvalidInput, NotFound
from storage import GuildSpace
from training import jobs


@pytest.fixture
def space(tmp_path: Path) -> GuildSpace:
    return GuildSpace(5, tmp_path / "data", tmp_path / "corrections").ensure()


def test_latest_record_wins_and_unfinished(space: GuildSpace) -> None:
    jobs.save_job(space, {"id": "ftjob-a1", "status": "running", "created_at": 1.0})
    jobs.save_job(space, {"id": "ftjob-b2", "status": "queued", "created_at": 2.0})
    jobs.save_job(space, {"id": "ftjob-a1", "status": "succeeded", "created_at": 1.0, "model": "m1"})
    assert [j["id"] for j in jobs.list_jobs(space)] == ["ftjob-b2", "ftjob-a1"]
    assert jobs.get_job(space, "ftjob-a1")["model"] == "m1"
    assert jobs.get_job(space, "ftjob-b")["id"] == "ftjob-b2"  # unique prefix
    with pytest.raises(InvalidInput):
        jobs.get_job(space, "ftjob-")
    with pytest.raises(NotFound):
        jobs.get_job(space, "nope")
    assert [j["id"] for j in jobs.unfinished_jobs(space)] == ["ftjob-b2"]
    assert jobs.list_jobs(space, 1)[0]["id"] == "ftjob-b2"


def test_damaged_line_is_skipped(space: GuildSpace) -> None:
    jobs.save_job(space, {"id": "j1", "status": "running", "created_at": 1.0})
    with open(space.jobs_file, "ab") as fh:
        fh.write(b'{"id": "j2", "sta')  # torn write from a crash
    jobs.save_job(space, {"id": "j1", "status": "failed", "created_at": 1.0})
    assert [(j["id"], j["status"]) for j in jobs.list_jobs(space)] == [("j1", "failed")]


def test_merge_losses() -> None:
    assert jobs.merge_losses([[1, 2.0], [2, 1.5]], [(2, 1.4), (3, 1.0)]) == [[1, 2.0], [2, 1.4], [3, 1.0]]


def test_current_model_history_and_other_state_keys_kept(space: GuildSpace) -> None:
    space.state_file.write_text(json.dumps({"dataset": "datasets/main", "system_prompt": "hi"}))
    assert jobs.current_model(space, "local") is None
    jobs.set_current_model(space, "local", "local-v1")
    jobs.set_current_model(space, "local", "local-v2")
    jobs.set_current_model(space, "openai", "ft:x")
    assert jobs.current_model(space, "local") == "local-v2"
    assert jobs.current_model(space, "openai") == "ft:x"
    assert jobs.model_history(space, "local") == ["local-v1"]
    assert jobs.set_current_model(space, "local", None, back=True) == "local-v1"
    with pytest.raises(NotFound):
        jobs.set_current_model(space, "local", None, back=True)
    state = json.loads(space.state_file.read_text())
    assert state["dataset"] == "datasets/main" and state["system_prompt"] == "hi"
