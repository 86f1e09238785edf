"""training/openai_api.py: the OpenAI backend against a loopback fake of the API, through the real SDK
(strict schemas)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import openai
import pytest

from config import Settings
from errors import BackendError, InvalidInput
from storage import GuildSpace
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.samples import FAQ, compiled, dpo_line, track_client
from training.backend import Job
from training.lifecycle import apply_update
from training.openai_api import MISSING_KEY, OpenAIBackend, parse_result_csv

KEY = "sk-test-fake-key-123456"


@pytest.fixture
def space(tmp_path: Path) -> GuildSpace:
    return GuildSpace(42, tmp_path / "data", tmp_path / "corrections").ensure()


def make_backend(fake: FakeOpenAI, *, max_retries: int = 2, timeout: float = 5.0, key: str = KEY) -> OpenAIBackend:
    settings = Settings(openai_api_key=key, openai_base_url=fake.base_url, model_backend="openai")
    client = track_client(openai.AsyncOpenAI(api_key=key, base_url=fake.base_url, max_retries=max_retries, timeout=timeout,
                                _strict_response_validation=True))
    return OpenAIBackend(settings, openai_client=client)


async def poll_until_done(backend: OpenAIBackend, fake: FakeOpenAI, space: GuildSpace, job: Job) -> list:
    updates = []
    for _ in range(50):
        upd = await backend.poll(space, job)
        job.extra.update(upd.extra)
        updates.append(upd)
        if upd.status in ("succeeded", "failed", "cancelled"):
            return updates
        fake.advance(job.id)
    raise AssertionError("job never finished")


@pytest.mark.asyncio
async def test_an_azure_job_that_succeeded_notes_the_deployment_step(space: GuildSpace) -> None:
    async with FakeOpenAI(KEY) as fake:
        backend = make_backend(fake)
        backend.settings = dataclasses.replace(backend.settings,
                                               openai_base_url="https://res.openai.azure.com/openai/v1/")
        job = await backend.start_job(space, compiled(), method="supervised", suffix="g")
        updates = await poll_until_done(backend, fake, space, job)
        assert [u.note for u in updates[:-1]] == [None] * (len(updates) - 1)
        apply_update(job, updates[-1])
        assert job.status == "succeeded" and job.note and f"deployment named `{job.model}`" in job.note


@pytest.mark.asyncio
async def test_supervised_job_upload_poll_to_success_with_losses(space: GuildSpace) -> None:
    async with FakeOpenAI(KEY) as fake:
        backend = make_backend(fake)
        job = await backend.start_job(space, compiled(), method="supervised", suffix="guild 42!")
        assert job.id.startswith("ftjob-") and job.status == "validating_files"
        upload = fake.files[job.extra["training_file"]]
        assert len(upload.lines) == len(FAQ) and upload.filename.endswith(".jsonl")
        fj = fake.jobs[job.id]
        assert fj.method == {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}
        assert fj.suffix == "guild-42"
        updates = await poll_until_done(backend, fake, space, job)
        final = updates[-1]
        assert final.status == "succeeded"
        assert final.fine_tuned_model == fj.fine_tuned_model and final.fine_tuned_model.startswith("ft:")
        # Running polls reported step progress and losses from metrics events.
        running = [u for u in updates if u.losses]
        assert running and running[0].total_steps == fj.total_steps
        # The final poll read the full curve from the (base64) result file.
        assert [s for s, _ in final.losses] == list(range(1, fj.total_steps + 1))
        assert final.losses[0][1] > final.losses[-1][1]
        assert final.step == fj.total_steps
        # Every event is reported once, in order.
        events = [e for u in updates for e in u.events]
        assert events[0].startswith("Created fine-tuning job") and len(events) == len(set(events))
        # The tuned model answers from its training data.
        answer = await backend.answer(space, final.fine_tuned_model, "when does the shop open", [])
        assert answer == "The shop opens at 9 am."
        base = await backend.answer(space, None, "when does the shop open", [("user", "hi"), ("assistant", "hey")])
        assert "base model" in base
        sent = fake.chat_requests[-1]["messages"]
        assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]


@pytest.mark.asyncio
async def test_dpo_job(space: GuildSpace) -> None:
    prefs = [dpo_line(u, a, "No idea.") for u, a in FAQ]
    async with FakeOpenAI(KEY) as fake:
        backend = make_backend(fake)
        job = await backend.start_job(space, compiled(preference=prefs), method="dpo", suffix="dpo")
        assert fake.jobs[job.id].method["type"] == "dpo"
        assert fake.files[job.extra["training_file"]].fmt == "preference"
        final = (await poll_until_done(backend, fake, space, job))[-1]
        assert final.status == "succeeded"


@pytest.mark.asyncio
async def test_dpo_without_pairs_is_invalid_and_uploads_nothing(space: GuildSpace) -> None:
    async with FakeOpenAI(KEY) as fake:
        backend = make_backend(fake)
        with pytest.raises(InvalidInput, match="preference"):
            await backend.start_job(space, compiled(), method="dpo", suffix="x")
        assert fake.files == {}


@pytest.mark.asyncio
async def test_failed_job_reports_openai_error(space: GuildSpace) -> None:
    async with FakeOpenAI(KEY) as fake:
        backend = make_backend(fake)
        job = await backend.start_job(space, compiled(), method="supervised", suffix="x")
        fake.advance(job.id, 3)
        fake.fail(job.id, "Training file contains examples that violate our usage policies.", "invalid_training_file")
        upd = await backend.poll(space, job)
        assert upd.status == "failed" and "usage policies" in upd.error and upd.fine_tuned_model is None


@pytest.mark.asyncio
async def test_cancel(space: GuildSpace) -> None:
    async with FakeOpenAI(KEY) as fake:
        backend = make_backend(fake)
        job = await backend.start_job(space, compiled(), method="supervised", suffix="x")
        fake.advance(job.id, 2)
        upd = await backend.cancel(space, job)
        assert upd.status == "cancelled" and fake.jobs[job.id].status == "cancelled"
        with pytest.raises(BackendError, match="Job has already completed"):
            await backend.cancel(space, job)


@pytest.mark.asyncio
async def test_rate_limit_is_retried_by_the_sdk(space: GuildSpace) -> None:
    async with FakeOpenAI(KEY) as fake:
        backend = make_backend(fake, max_retries=2)
        fake.fail_next(2, 429)
        job = await backend.start_job(space, compiled(), method="supervised", suffix="x")
        assert job.id in fake.jobs
        assert fake.requests[:3] == [("POST", "/v1/files")] * 3


@pytest.mark.asyncio
async def test_server_error_storm_becomes_backend_error(space: GuildSpace) -> None:
    async with FakeOpenAI(KEY) as fake:
        backend = make_backend(fake, max_retries=2)
        fake.fail_next(10, 500)
        with pytest.raises(BackendError, match=r"server error \(500\) after 2 retries"):
            await backend.start_job(space, compiled(), method="supervised", suffix="x")
        assert len(fake.requests) == 3 and fake.jobs == {}


@pytest.mark.asyncio
async def test_rate_limit_storm_message(space: GuildSpace) -> None:
    async with FakeOpenAI(KEY) as fake:
        backend = make_backend(fake, max_retries=1)
        fake.fail_next(5, 429)
        with pytest.raises(BackendError, match="rate-limiting"):
            await backend.answer(space, None, "hi", [])


@pytest.mark.asyncio
async def test_timeout_becomes_backend_error(space: GuildSpace) -> None:
    async with FakeOpenAI(KEY) as fake:
        backend = make_backend(fake, max_retries=0, timeout=0.2)
        fake.delay_next(1, 1.0)
        with pytest.raises(BackendError, match="did not answer in time"):
            await backend.answer(space, None, "hi", [])


@pytest.mark.asyncio
async def test_refused_job_carries_openai_text_and_cleans_upload(space: GuildSpace) -> None:
    async with FakeOpenAI(KEY) as fake:
        backend = make_backend(fake)
        fake.refuse_jobs(403, "Fine-tuning is no longer available for this account.")
        with pytest.raises(BackendError) as info:
            await backend.start_job(space, compiled(), method="supervised", suffix="x")
        assert "Fine-tuning is no longer available for this account." in str(info.value)
        assert "403" in str(info.value)
        assert fake.jobs == {} and fake.files == {}  # the orphan upload was deleted


@pytest.mark.asyncio
async def test_too_few_examples_rejected_by_upload(space: GuildSpace) -> None:
    async with FakeOpenAI(KEY) as fake:
        backend = make_backend(fake)
        with pytest.raises(BackendError, match="at least 10 examples"):
            await backend.start_job(space, compiled(FAQ[:3]), method="supervised", suffix="x")


@pytest.mark.asyncio
async def test_wrong_key_is_not_leaked(space: GuildSpace) -> None:
    async with FakeOpenAI(KEY) as fake:
        wrong = "sk-wrong-secret-abcdef"
        backend = make_backend(fake, key=wrong)
        with pytest.raises(BackendError) as info:
            await backend.answer(space, None, "hi", [])
        text = str(info.value)
        assert "401" in text and "OPENAI_API_KEY" in text
        assert wrong not in text and "secret" not in text


@pytest.mark.asyncio
async def test_missing_key_explains_how_to_set_it(space: GuildSpace) -> None:
    backend = OpenAIBackend(Settings(openai_api_key=None))
    await backend.start()
    with pytest.raises(BackendError) as info:
        await backend.start_job(space, compiled(), method="supervised", suffix="x")
    assert str(info.value) == MISSING_KEY and "OPENAI_API_KEY=" in MISSING_KEY and ".env" in MISSING_KEY
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        await backend.answer(space, None, "hi", [])
    await backend.close()


@pytest.mark.asyncio
async def test_unknown_model_is_refused(space: GuildSpace) -> None:
    async with FakeOpenAI(KEY) as fake:
        backend = make_backend(fake)
        with pytest.raises(BackendError, match="does not exist"):
            await backend.answer(space, "ft:gpt-4.1-mini:org:nope:123", "hi", [])


def test_parse_result_csv_plain_and_base64() -> None:
    import base64

    raw = b"step,train_loss,train_accuracy\n1,2.0,0.1\n2,1.5,0.2\nbad,row,\n"
    assert parse_result_csv(raw) == [(1, 2.0), (2, 1.5)]
    assert parse_result_csv(base64.b64encode(raw)) == [(1, 2.0), (2, 1.5)]
    assert parse_result_csv(b"\x00\x01garbage") == []


def test_help_line_gives_the_shutdown_dates_and_the_way_on() -> None:
    assert "2027-01-06" in OpenAIBackend.blurb and "2027-01-14" in OpenAIBackend.blurb
    assert "MODEL_BACKEND=hf" in OpenAIBackend.blurb
