"""training/local/, the offline backend, through what the package exports: trains from the data, answers
from it, versions, rollback, classifier. (The answer rule by meaning and the corrections overlay are
tested with the embedding model in tests/training/test_embedding.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config import Settings
from errors import InvalidInput, NotFound
from storage import GuildSpace
from tests.fakes.samples import FAQ, compiled, dpo_line
from training.backend import Job
from training.local import LocalBackend, load_version, pairs_from, version_numbers

LABELLED = [
    ("I love this bot", "positive"), ("great answer, thanks", "positive"), ("this is wonderful", "positive"),
    ("awesome work", "positive"), ("terrible answer", "negative"), ("I hate this", "negative"),
    ("this is awful and wrong", "negative"), ("bad bot", "negative"),
]


@pytest.fixture
def space(tmp_path: Path) -> GuildSpace:
    return GuildSpace(7, tmp_path / "data", tmp_path / "corrections").ensure()


async def train(backend: LocalBackend, space: GuildSpace, data, method: str = "supervised") -> str:
    job = await backend.start_job(space, data, method=method, suffix="t")
    await backend.wait(job.id)
    upd = await backend.poll(space, job)
    assert upd.status == "succeeded", upd.error
    assert upd.step == upd.total_steps == job.total_steps
    return upd.fine_tuned_model


@pytest.mark.asyncio
async def test_trains_and_answers_from_the_data(space: GuildSpace) -> None:
    backend = LocalBackend(Settings(prefix="?"))
    name = await train(backend, space, compiled())
    assert name == "local-v1"
    assert await backend.answer(space, name, "when does the shop open", []) == "The shop opens at 9 am."
    assert await backend.answer(space, name, "where's the office??", []) == "The office is on the second floor."
    assert await backend.answer(space, name, "who do I ask about payroll", []) == "Ask Bob in finance about payroll."
    unknown = await backend.answer(space, name, "explain quantum chromodynamics", [])
    assert "don't know" in unknown and "?correct" in unknown


@pytest.mark.asyncio
async def test_untrained_guild_gets_an_honest_reply(space: GuildSpace) -> None:
    backend = LocalBackend(Settings(prefix="!"))
    reply = await backend.answer(space, None, "hello", [])
    assert "haven't been trained" in reply and "!train" in reply


@pytest.mark.asyncio
async def test_versions_increment_and_old_ones_stay(space: GuildSpace) -> None:
    backend = LocalBackend(Settings())
    v1 = await train(backend, space, compiled())
    changed = [(q, "CHANGED " + a) for q, a in FAQ]
    v2 = await train(backend, space, compiled(changed))
    assert (v1, v2) == ("local-v1", "local-v2")
    assert version_numbers(space) == [1, 2]
    assert await backend.answer(space, v2, "When does the shop open?", []) == "CHANGED The shop opens at 9 am."
    # Rollback: the older version still answers as before.
    assert await backend.answer(space, v1, "When does the shop open?", []) == "The shop opens at 9 am."
    meta = json.loads((space.models / v2 / "meta.json").read_text())
    assert meta["pairs"] == len(FAQ) and meta["version"] == 2
    # No temp folders left; only the lock file that numbers versions (training.versions).
    assert [p.name for p in space.models.iterdir() if p.name.startswith(".")] == [".versions.lock"]
    assert backend.list_models(space, []) == ["local-v1", "local-v2"]
    assert backend.model_exists(space, "local-v2", []) and not backend.model_exists(space, "local-v9", [])


@pytest.mark.asyncio
async def test_classifier_labels(space: GuildSpace) -> None:
    backend = LocalBackend(Settings())
    job = await backend.start_job(space, compiled(labelled=LABELLED), method="supervised", suffix="t")
    await backend.wait(job.id)
    upd = await backend.poll(space, job)
    assert upd.status == "succeeded"
    assert len(upd.losses) == 15 and upd.losses[-1][1] < upd.losses[0][1]  # loss goes down
    name = upd.fine_tuned_model
    assert await backend.predict_label(space, name, "I love it, wonderful") == "positive"
    assert await backend.predict_label(space, name, "awful, I hate it") == "negative"


@pytest.mark.asyncio
async def test_dpo_uses_preferred_answers_and_corrections_win(space: GuildSpace) -> None:
    backend = LocalBackend(Settings())
    prefs = [dpo_line("When does the shop open?", "Corrected: 8 am.", "The shop opens at 9 am.")]
    name = await train(backend, space, compiled(preference=prefs), method="dpo")
    assert await backend.answer(space, name, "when does the shop open?", []) == "Corrected: 8 am."
    with pytest.raises(InvalidInput, match="preference"):
        await backend.start_job(space, compiled(), method="dpo", suffix="t")


@pytest.mark.asyncio
async def test_nothing_to_train_is_invalid(space: GuildSpace) -> None:
    with pytest.raises(InvalidInput, match="Nothing to train"):
        await LocalBackend(Settings()).start_job(space, compiled([], labelled=[("a", "x")]), method="supervised", suffix="t")


@pytest.mark.asyncio
async def test_cancel_stops_without_a_version(space: GuildSpace) -> None:
    backend = LocalBackend(Settings())
    job = await backend.start_job(space, compiled(labelled=LABELLED), method="supervised", suffix="t")
    upd = await backend.cancel(space, job)  # cancelled before the worker thread gets far
    assert upd.status in ("cancelled", "succeeded")
    if upd.status == "cancelled":
        assert version_numbers(space) == []


@pytest.mark.asyncio
async def test_poll_after_restart_reads_the_disk(space: GuildSpace) -> None:
    backend = LocalBackend(Settings())
    job = await backend.start_job(space, compiled(), method="supervised", suffix="t")
    await backend.wait(job.id)
    fresh = LocalBackend(Settings())  # a new process knows nothing of the run
    upd = await fresh.poll(space, job)
    assert upd.status == "succeeded" and upd.fine_tuned_model == "local-v1"
    lost = await fresh.poll(space, Job(id="local-gone", backend="local", status="running", total_steps=3))
    assert lost.status == "failed" and "restarted" in lost.error


def test_model_files_load_without_pickle(space: GuildSpace) -> None:
    with pytest.raises(NotFound):
        load_version(space, "local-v1")
    with pytest.raises(NotFound):
        load_version(space, "../../etc")


def test_pairs_from_takes_last_answer_for_a_prompt() -> None:
    data = compiled([("Hi there", "old"), ("hi there!", "new"), ("Other", "x")])
    assert pairs_from(data) == [("hi there!", "new"), ("Other", "x")]


def test_the_suite_shares_one_default_embedder() -> None:
    """tests/conftest.py loads the default embedding model once for every bot: its patch must reach
    ``LocalBackend`` (it patches ``training.local.backend.load_embedder``)."""
    assert LocalBackend(Settings()).embedder() is LocalBackend(Settings()).embedder()
