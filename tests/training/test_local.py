"""training/local/, the offline backend, through what the package exports: trains from the data, answers
from it, versions, rollback, classifier. (The answer rule by meaning and the corrections overlay are
tested with the embedding model in tests/training/test_embedding.py.)"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from config import Settings
from errors import InvalidInput, NotFound
from storage import GuildSpace
from tests.fakes.samples import FAQ, compiled, dpo_line
from training.backend import Job
from training.local import LocalBackend, fit, load_version, pairs_from, version_numbers
from training.local import backend as local_backend

ROOT = Path(__file__).resolve().parents[2]
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


# ---------------------------------------------------------------- big trainings: progress, cancel, restarts

def many(n: int) -> list[tuple[str, str]]:
    """``n`` distinct pairs, each worth embedding."""
    return [(f"how do I book meeting room {i} on floor {i % 7}?", f"Room {i} is booked at the {i % 5} desk.")
            for i in range(n)]


async def until(check, timeout: float = 20.0, every: float = 0.02):
    """Poll ``check`` (async) until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(every)
    raise AssertionError("timed out")


@pytest.mark.asyncio
async def test_progress_reports_pairs_done_rate_and_time_left(space: GuildSpace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fit, "CHUNK_TOKENS", 100)  # ~4 pairs a chunk: many reports from a small job
    backend = LocalBackend(Settings())
    job = await backend.start_job(space, compiled(many(30)), method="supervised", suffix="t")
    seen = []
    while True:
        upd = await backend.poll(space, job)
        if upd.progress is not None:
            seen.append(upd)
        if upd.status != "running":
            break
        await asyncio.sleep(0.01)
    assert upd.status == "succeeded" and upd.eta_s == 0.0
    done = [u.progress[0] for u in seen]
    assert done == sorted(done) and done[-1] == 30 and len(set(done)) >= 3
    assert {u.progress[1] for u in seen} == {30}
    moving = [u for u in seen if 0 < u.progress[0] < 30]
    assert moving and all(u.examples_per_s and u.examples_per_s > 0 and u.eta_s is not None for u in moving)
    assert any(u.eta_s > 0 for u in moving)


@pytest.mark.asyncio
async def test_cancel_ends_a_big_training_within_a_second(space: GuildSpace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fit, "STAGE_ABOVE", 10**9)  # no quick stage: nothing would be saved before the end
    backend = LocalBackend(Settings())
    job = await backend.start_job(space, compiled(many(3000)), method="supervised", suffix="t")  # ~20 s of work
    await until(lambda: _embedding(backend, space, job), timeout=30)
    started = time.monotonic()
    upd = await backend.cancel(space, job)
    assert upd.status == "cancelled" and time.monotonic() - started < 1.0
    await asyncio.wait_for(backend.wait(job.id), 1.0)  # the worker thread itself has stopped
    assert (await backend.poll(space, job)).status == "cancelled"
    assert version_numbers(space) == [] and not (space.models / fit.RUNS).exists()


async def _embedding(backend: LocalBackend, space: GuildSpace, job: Job) -> bool:
    upd = await backend.poll(space, job)
    return upd.progress is not None and upd.progress[0] > 0


KILLED_CHILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from storage import GuildSpace
from training.embedding import load_embedder
from training.local import fit
fit.CHUNK_TOKENS = 200
space = GuildSpace(7, Path({data!r}), Path({corr!r}))
pairs = [tuple(p) for p in json.loads(Path({pairs!r}).read_text())]
fit.train_version(space, pairs, [], job_id="local-killed", method="supervised", embedder=load_embedder("all-MiniLM-L6-v2"))
"""


def kill_mid_way(tmp_path: Path, pairs: list[tuple[str, str]], at_least: int) -> fit.Work:
    """Train ``pairs`` in a child process and kill -9 it once ``at_least`` pairs are embedded; its work folder."""
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    code = KILLED_CHILD.format(root=str(ROOT), data=str(tmp_path / "data"), corr=str(tmp_path / "corrections"),
                               pairs=str(tmp_path / "pairs.json"))
    work = fit.Work(tmp_path / "data" / "7" / "models", "local-killed")
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while work.progress()[0] < at_least:
            assert child.poll() is None, "the training ended before it was killed"
            assert time.monotonic() < deadline, "the training did not start"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    return work


@pytest.mark.asyncio
async def test_a_training_killed_mid_way_resumes_from_the_vectors_it_saved(
        space: GuildSpace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = many(60)
    work = kill_mid_way(tmp_path, pairs, at_least=15)
    assert work.path.parent.parent == space.models
    done, todo = work.progress()
    assert 15 <= done < todo == 60
    backend = LocalBackend(Settings())
    emb = backend.embedder()
    embedded: list[str] = []
    real = emb.index_vectors
    monkeypatch.setattr(emb, "index_vectors", lambda p, a, check=None: embedded.extend(p) or real(p, a, check))
    job = Job(id="local-killed", backend="local", status="running", total_steps=4, extra={"attempts": 1})
    upd = await backend.poll(space, job)
    assert upd.status == "running" and upd.extra == {"attempts": 2}
    assert f"resuming with {done:,} of 60 pairs embedded" in upd.events[0]
    assert "without a word" in upd.events[0]  # a kill leaves no reason
    await backend.wait(job.id)
    upd = await backend.poll(space, job)
    assert upd.status == "succeeded" and upd.fine_tuned_model == "local-v1"
    assert len(embedded) == 60 - done  # only what the killed run had not saved
    assert np.allclose(load_version(space, "local-v1", emb).vectors,
                       real([p for p, _ in pairs], [a for _, a in pairs]), atol=1e-5)
    assert not (space.models / fit.RUNS).exists()


@pytest.mark.asyncio
async def test_a_clean_stop_resumes_and_three_cut_starts_fail_with_the_reason(
        space: GuildSpace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fit, "CHUNK_TOKENS", 200)
    backend = LocalBackend(Settings())
    job = await backend.start_job(space, compiled(many(60)), method="supervised", suffix="t")
    await until(lambda: _embedding(backend, space, job), timeout=30)
    await backend.close()  # /quit or SIGTERM: the worker stops at its next check, its work stays
    work = fit.Work(space.models, job.id)
    assert work.exists() and "bot was stopped" in work.why_stopped()
    job.extra = {"attempts": 1}
    again = LocalBackend(Settings())  # the restarted bot
    upd = await again.poll(space, job)
    assert upd.status == "running" and "bot was stopped" in upd.events[0]
    await again.wait(job.id)
    assert (await again.poll(space, job)).status == "succeeded"
    # A job whose work was cut short as often as it may be started fails, saying why.
    fit.Work(space.models, "local-cut").save_data(many(5), [], "supervised")
    cut = Job(id="local-cut", backend="local", status="running", total_steps=4, extra={"attempts": 3})
    upd = await LocalBackend(Settings()).poll(space, cut)
    assert upd.status == "failed" and "stopped 3 times" in upd.error and "without a word" in upd.error
    assert not (space.models / fit.RUNS).exists()


@pytest.mark.asyncio
async def test_a_version_is_loaded_once_for_many_answers_and_big_ones_are_not_all_kept(
        space: GuildSpace, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalBackend(Settings())
    v1 = await train(backend, space, compiled())
    v2 = await train(backend, space, compiled([(q, "v2 " + a) for q, a in FAQ]))
    loads: list[str] = []
    real = local_backend.load_version

    def counting(space_, name, *args):
        loads.append(name)
        time.sleep(0.2)  # a big version takes a while: the other answers wait for it
        return real(space_, name, *args)
    monkeypatch.setattr(local_backend, "load_version", counting)
    answers = await asyncio.gather(*(backend.answer(space, v1, "when does the shop open", []) for _ in range(4)))
    assert set(answers) == {"The shop opens at 9 am."} and loads == [v1]
    monkeypatch.setattr(local_backend, "CACHE_PAIRS", len(FAQ) + 1)  # room for one of them
    await backend.answer(space, v2, "when does the shop open", [])
    await backend.answer(space, v1, "when does the shop open", [])
    assert loads == [v1, v2, v1]  # v1 was dropped when v2 came
