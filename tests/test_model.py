"""Model, the facade cogs use: train -> poll -> current model -> answer, tests, rollback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from config import Settings
from dataset import compile as compiler
from dataset import corrections as records
from dataset import folder as dataset_folder
from dataset.check import Issue
from dataset.corrections import TestError
from errors import BackendError, Busy, InvalidInput, NotFound, OverBudget
from model import Model
from records.db import Database
from storage import GuildSpace
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.samples import FAQ, compiled, report, track_client
from training import budget, jobs
from training.backend import Estimate
from training.embedding import CALIBRATED
from training.local import fit
from training.openai_api import MISSING_KEY

KEY = "sk-test-fake-key-123456"
GUILD = 1234


def settings(tmp_path: Path, backend: str = "local", **kw) -> Settings:
    return Settings(data_dir=tmp_path / "data", corrections_dir=tmp_path / "corrections", model_backend=backend,
                    **kw)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """The Model's records: SQLite under DATA_DIR, as the bot opens it without DATABASE_URL (the record modules'
    own tests run on both engines)."""
    database = Database.open(None, tmp_path / "data")
    yield database
    database.close()


@pytest.fixture
def fake_data(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Stand-ins for compiler.compile_guild and records.add_test_errors: the Model alone is under test."""
    state: dict = {"compiled": compiled(), "kept": [], "min_examples": []}

    def compile_guild(space, *, min_examples=10, trainer="OpenAI", chat=True):
        state["min_examples"].append(min_examples)
        state.setdefault("chat", []).append(chat)
        return state["compiled"]

    def add_test_errors(space, mismatches, **who):
        state["kept"].extend(mismatches)
        return len(mismatches)

    monkeypatch.setattr(compiler, "compile_guild", compile_guild)
    monkeypatch.setattr(records, "add_test_errors", add_test_errors)
    return state


async def run_local_job(model: Model, **kw) -> dict:
    job, report = await model.train(GUILD, started_by="alice", channel_id=99, **kw)
    assert report.ok and job.status == "running" and job.started_by == "alice"
    await model.backend.wait(job.id)  # type: ignore[attr-defined]
    return await model.poll_job(GUILD, job.id)


@pytest.mark.asyncio
async def test_local_train_poll_answer_and_rollback(tmp_path: Path, db: Database, fake_data: dict) -> None:
    model = Model(settings(tmp_path), db=db)
    await model.start()
    assert (await model.current_model(GUILD)) is None
    assert "haven't been trained" in await model.answer(GUILD, "When does the shop open?")
    job = await run_local_job(model)
    assert fake_data["min_examples"] == [1]
    assert job.status == "succeeded" and job.model == "local-v1" and job.activated
    assert job.estimate == Estimate(examples=len(FAQ), tokens=40 * len(FAQ), epochs=3, billed_tokens=120 * len(FAQ))
    assert (await model.current_model(GUILD)) == "local-v1"
    assert await model.answer(GUILD, "when does the shop open") == "The shop opens at 9 am."
    fake_data["compiled"] = compiled([(q, "v2: " + a) for q, a in FAQ])
    job2 = await run_local_job(model)
    assert job2.model == "local-v2" and (await model.current_model(GUILD)) == "local-v2"
    assert await model.answer(GUILD, "when does the shop open") == "v2: The shop opens at 9 am."
    assert (await model.set_model(GUILD, "previous")) == "local-v1"
    assert await model.answer(GUILD, "when does the shop open") == "The shop opens at 9 am."
    assert (await model.set_model(GUILD, "local-v2")) == "local-v2"
    with pytest.raises(NotFound, match="local-v9"):
        (await model.set_model(GUILD, "local-v9"))
    assert (await model.list_models(GUILD)) == ["local-v1", "local-v2"]
    assert [j.id for j in (await model.list_jobs(GUILD))] == [job2.id, job.id]
    text = model.status_text(jobs.get_job(model.space(GUILD), job.id))
    assert "succeeded" in text and "local-v1" in text
    await model.close()


@pytest.mark.asyncio
async def test_bad_report_stops_before_any_job(tmp_path: Path, db: Database, fake_data: dict) -> None:
    fake_data["compiled"] = compiled()
    fake_data["compiled"].report = report(errors=[Issue(3, "example_missing_assistant_message",
                                                        "line 3: missing assistant message")])
    model = Model(settings(tmp_path), db=db)
    with pytest.raises(InvalidInput, match="missing assistant message"):
        await model.train(GUILD, started_by="a", channel_id=1)
    assert (await model.list_jobs(GUILD)) == []
    with pytest.raises(InvalidInput, match="Unknown training method"):
        await model.train(GUILD, method="rlhf", started_by="a", channel_id=1)


@pytest.mark.asyncio
async def test_run_tests_keeps_mismatches(tmp_path: Path, db: Database, fake_data: dict) -> None:
    model = Model(settings(tmp_path), db=db)
    await run_local_job(model)
    cases = (
        '{"input": "When does the shop open", "expected": "the shop opens at 9 AM"}\n'
        '{"input": "Where is the office?", "expected": "In the attic."}\n'
    )
    result = await model.run_tests(GUILD, cases)
    assert (result.total, result.correct) == (2, 1)
    assert fake_data["kept"] == [TestError("Where is the office?", "In the attic.",
                                           "The office is on the second floor.", "answer", 2, "local-v1")]


def openai_model(tmp_path: Path, db: Database, fake: FakeOpenAI, **kw) -> Model:
    client = track_client(openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url, max_retries=1, timeout=5,
                                _strict_response_validation=True))
    return Model(settings(tmp_path, "openai", openai_api_key=KEY, openai_base_url=fake.base_url, **kw), db=db,
                 openai_client=client)


@pytest.mark.asyncio
async def test_openai_train_poll_to_success(tmp_path: Path, db: Database, fake_data: dict) -> None:
    async with FakeOpenAI(KEY) as fake:
        model = openai_model(tmp_path, db, fake)
        await model.start()
        job, _ = await model.train(GUILD, started_by="bob", channel_id=5)
        assert fake_data["min_examples"] == [10] and job.status == "validating_files"
        (await model.set_status_message(GUILD, job.id, 777))
        assert [(g, j.id) for g, j in (await model.unfinished_jobs())] == [(GUILD, job.id)]
        with pytest.raises(Busy, match="still"):
            await model.train(GUILD, started_by="bob", channel_id=5)
        for _ in range(20):
            fake.advance(job.id)
            job = await model.poll_job(GUILD, job.id)
            if job.status == "succeeded":
                break
        assert job.status == "succeeded" and job.status_message_id == 777
        fj = fake.jobs[job.id]
        assert job.model == fj.fine_tuned_model == (await model.current_model(GUILD))
        losses = jobs.job_losses(model.space(GUILD), job.id)
        assert [s for s, _ in losses] == list(range(1, fj.total_steps + 1))
        assert job.last_loss == losses[-1]
        assert job.step == job.total_steps == fj.total_steps
        assert (await model.unfinished_jobs()) == []
        png = await model.loss_curve_png(GUILD, job)
        assert png and png.startswith(b"\x89PNG")
        assert await model.answer(GUILD, "who is the admin?", [("user", "hi"), ("assistant", "hello")]) \
            == "Alice is the admin."
        assert fake.chat_requests[-1]["model"] == fj.fine_tuned_model
        assert (await model.set_model(GUILD, fj.fine_tuned_model)) == fj.fine_tuned_model
        with pytest.raises(NotFound):
            (await model.set_model(GUILD, "ft:someone-else"))
        await model.close()


@pytest.mark.asyncio
async def test_openai_refused_job_saves_nothing(tmp_path: Path, db: Database, fake_data: dict) -> None:
    async with FakeOpenAI(KEY) as fake:
        model = openai_model(tmp_path, db, fake)
        await model.start()
        fake.refuse_jobs(400, "Fine-tuning is no longer available for this account.", "invalid_request")
        with pytest.raises(BackendError, match="no longer available for this account"):
            await model.train(GUILD, started_by="bob", channel_id=5)
        assert (await model.list_jobs(GUILD)) == [] and not fake.jobs


@pytest.mark.asyncio
async def test_openai_cancel_and_failure(tmp_path: Path, db: Database, fake_data: dict) -> None:
    async with FakeOpenAI(KEY) as fake:
        model = openai_model(tmp_path, db, fake)
        await model.start()
        job, _ = await model.train(GUILD, started_by="bob", channel_id=5)
        job = await model.cancel_job(GUILD, job.id)
        assert job.status == "cancelled" and job.finished_at
        with pytest.raises(InvalidInput, match="already cancelled"):
            await model.cancel_job(GUILD, job.id)
        job2, _ = await model.train(GUILD, started_by="bob", channel_id=5)
        fake.fail(job2.id, "Training file is invalid.")
        job2 = await model.poll_job(GUILD, job2.id)
        assert job2.status == "failed" and job2.error == "Training file is invalid."
        assert (await model.current_model(GUILD)) is None
        assert "Error: Training file is invalid." in model.status_text(job2)


@pytest.mark.asyncio
async def test_openai_without_key(tmp_path: Path, db: Database, fake_data: dict) -> None:
    model = Model(settings(tmp_path, "openai"), db=db)
    await model.start()
    with pytest.raises(BackendError) as info:
        await model.train(GUILD, started_by="a", channel_id=1)
    assert str(info.value) == MISSING_KEY
    assert (await model.list_jobs(GUILD)) == []
    await model.close()


@pytest.mark.asyncio
async def test_with_the_real_dataset_compiler(tmp_path: Path, db: Database) -> None:
    """Real compile -> local training -> answer."""
    model = Model(settings(tmp_path), db=db)
    space = model.space(GUILD).ensure()
    dataset_folder.ingest_text(space, "\n".join(f"{q} => {a}" for q, a in FAQ), author="test")
    job, report = await model.train(GUILD, started_by="alice", channel_id=1)
    assert report.ok and report.n_examples == len(FAQ)
    await model.backend.wait(job.id)  # type: ignore[attr-defined]
    job = await model.poll_job(GUILD, job.id)
    assert job.status == "succeeded"
    assert await model.answer(GUILD, "where do I park my bike") == "Bikes go in the basement rack."


async def test_start_removes_what_an_interrupted_write_left(tmp_path: Path, db: Database,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A SIGKILL mid-upload leaves a hidden temp file: the next start removes it and says so in the log."""
    s = settings(tmp_path)
    space = GuildSpace(GUILD, s.data_dir, s.corrections_dir, db).ensure()
    space.uploads.mkdir(parents=True)
    leftover = space.uploads / ".20261128T120000Z-ab12-big.jsonl.k3j2h1.tmp"
    leftover.write_bytes(b"x" * 40_000)
    kept = space.uploads / "20261128T120000Z-ab12-small.jsonl"
    kept.write_text("{}\n")
    half_model = space.models / ".tmp-0123456789abcdef0123456789abcdef"
    half_model.mkdir(parents=True)
    (half_model / "meta.json").write_text("{}")
    model = Model(s, db=db)
    with caplog.at_level("WARNING", logger="model"):
        await model.start()
    await model.close()
    assert not leftover.exists() and not half_model.exists() and kept.exists()
    said = caplog.text
    assert str(leftover) in said and "39.1 KB" in said and str(half_model) in said
    assert "left by an interrupted write" in said


async def test_only_paid_calls_are_charged(tmp_path: Path, db: Database) -> None:
    """Which calls are paid comes from the backends' ``paid`` attributes; free ones, exempt members and a limit
    of 0 never count, and an over-budget member gets OverBudget before the call."""
    local = Model(settings(tmp_path, paid_calls_per_user_per_day=1), db=db)
    assert (local.paid("chat"), local.paid("transcription"), local.paid("speech")) == (False, False, False)
    for _ in range(3):
        await local.charge(GUILD, 7, "chat")
        await local.charge(GUILD, 7, "speech")
    assert budget.usage(local.space(GUILD), 7).counts == {}

    paid = Model(settings(tmp_path, "openai", speech_backend="openai", tts_backend="openai",
                          paid_calls_per_user_per_day=2), db=db)
    assert (paid.paid("chat"), paid.paid("transcription"), paid.paid("speech")) == (True, True, True)
    await paid.charge(GUILD, 7, "transcription")
    await paid.charge(GUILD, 7, "chat")
    with pytest.raises(OverBudget) as refused:
        await paid.charge(GUILD, 7, "speech")
    assert refused.value.limit == 2 and refused.value.resets_at > time.time()
    await paid.charge(GUILD, 7, "chat", exempt=True)  # exempt: allowed, and not counted
    assert budget.usage(paid.space(GUILD), 7).counts == {"transcription": 1, "chat": 1}
    await paid.charge(GUILD, 8, "chat")  # another member has their own allowance
    unlimited = Model(settings(tmp_path, "openai", paid_calls_per_user_per_day=0), db=db)
    await unlimited.charge(GUILD, 7, "chat")
    await unlimited.charge(GUILD, 9, "chat")
    assert budget.usage(paid.space(GUILD), 7).total == 2 and budget.usage(paid.space(GUILD), 9).total == 0
    with pytest.raises(ValueError):
        paid.paid("images")


# ---------------------------------------------------------------- big local trainings

def many(n: int) -> list[tuple[str, str]]:
    return [(f"how do I book meeting room {i} on floor {i % 7}?", f"Room {i} is booked at the {i % 5} desk.")
            for i in range(n)]


async def wait_for(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


@pytest.fixture
def held_full_stage(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """A quick stage for 60 pairs (not for the FAQ), and the full model's embedding held until the test sets the event."""
    release = threading.Event()
    real = fit._embed

    def held(work, pairs, *args):
        if len(pairs) >= 60:
            assert release.wait(30), "the test never let the full embedding go on"
        return real(work, pairs, *args)

    monkeypatch.setattr(fit, "STAGE_ABOVE", 40)  # the FAQ (12 pairs) gets none
    monkeypatch.setattr(fit, "_embed", held)
    return release


@pytest.mark.asyncio
async def test_a_big_training_answers_from_its_quick_stage_then_at_full_quality(
        tmp_path: Path, db: Database, fake_data: dict, held_full_stage: threading.Event) -> None:
    model = Model(settings(tmp_path), db=db)
    await model.start()
    fake_data["compiled"] = compiled(many(60))
    job, _ = await model.train(GUILD, started_by="alice", channel_id=99)

    async def live():
        polled = await model.poll_job(GUILD, job.id)
        return polled if polled.live else None
    running = await wait_for(live)
    assert running.status == "running" and running.model == "local-v1" and running.activated
    assert (await model.current_model(GUILD)) == "local-v1"  # answers before the job ends
    text = model.status_text(running)
    assert "Stage 2/2: `local-v1` answers with quick wordllama vectors" in text
    quick = model.backend.loaded(model.space(GUILD), "local-v1")  # type: ignore[attr-defined]
    assert quick.embedder is not None and quick.embedder.name == "wordllama" and quick.vectors.shape == (60, 256)
    assert quick.embedder.thresholds == CALIBRATED["wordllama"]  # its own calibration, not the transformer's
    assert await model.answer(GUILD, "How do I book meeting room 12 on floor 5?") == "Room 12 is booked at the 2 desk."
    held_full_stage.set()
    await model.backend.wait(job.id)  # type: ignore[attr-defined]
    done = await model.poll_job(GUILD, job.id)
    assert done.status == "succeeded" and done.model == "local-v1" and done.stage is None
    assert (await model.current_model(GUILD)) == "local-v1" and (await model.list_models(GUILD)) == ["local-v1"]
    full = model.backend.loaded(model.space(GUILD), "local-v1")  # type: ignore[attr-defined]
    assert full.embedder is None and full.vectors.shape == (60, 384)  # the loaded quick copy was dropped
    folder = model.space(GUILD).models / "local-v1"
    assert not (folder / "quick-embeddings.npy").exists() and (folder / "embeddings.npy").is_file()
    assert await model.answer(GUILD, "How do I book meeting room 12 on floor 5?") == "Room 12 is booked at the 2 desk."
    await model.close()


@pytest.mark.asyncio
async def test_cancelling_during_the_quick_stage_returns_to_the_model_before(
        tmp_path: Path, db: Database, fake_data: dict, held_full_stage: threading.Event) -> None:
    model = Model(settings(tmp_path), db=db)
    await model.start()
    await run_local_job(model)  # local-v1: the FAQ, too small for a quick stage
    fake_data["compiled"] = compiled(many(60))
    job, _ = await model.train(GUILD, started_by="alice", channel_id=99)

    async def live():
        return (await model.poll_job(GUILD, job.id)).live
    await wait_for(live)
    assert (await model.current_model(GUILD)) == "local-v2"
    started = time.monotonic()
    cancelled = await model.cancel_job(GUILD, job.id, by="bob")
    assert cancelled.status == "cancelled" and time.monotonic() - started < 1.0
    assert (await model.list_jobs(GUILD))[0].status == "cancelled"  # !jobs says so at once
    assert (await model.current_model(GUILD)) == "local-v1"  # the model before the training answers again
    assert await model.answer(GUILD, "when does the shop open") == "The shop opens at 9 am."
    held_full_stage.set()
    await model.backend.wait(job.id)  # type: ignore[attr-defined]
    assert not (model.space(GUILD).models / fit.RUNS).exists()
    await model.close()


@pytest.mark.asyncio
async def test_cancel_of_a_big_local_job_is_seen_within_a_second(tmp_path: Path, db: Database,
                                                                   fake_data: dict) -> None:
    model = Model(settings(tmp_path), db=db)
    fake_data["compiled"] = compiled(many(3000))  # ~20 s of embedding
    job, _ = await model.train(GUILD, started_by="alice", channel_id=99)

    async def embedding():
        polled = await model.poll_job(GUILD, job.id)
        return polled.progress is not None and polled.progress[0] > 0
    await wait_for(embedding)
    started = time.monotonic()
    cancelled = await model.cancel_job(GUILD, job.id, by="bob")
    assert cancelled.status == "cancelled" and time.monotonic() - started < 1.0
    listed = (await model.list_jobs(GUILD))[0]
    assert listed.status == "cancelled" and listed.cancelled_by == "bob"
    await asyncio.wait_for(model.backend.wait(job.id), 1.0)  # type: ignore[attr-defined]
    assert (await model.current_model(GUILD)) is None  # its quick stage answered, and no longer does
    await model.close()
