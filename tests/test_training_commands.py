"""Training end to end through the sandbox: chat -> !correct -> !train -> watched job -> new answer.

Both backends: local (trains in-process in milliseconds) and openai (the real SDK, with strict
response validation, against the fake OpenAI server whose job clock the tests advance).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from conftest import BotHarness, start_bot, stop_bot

from config import Settings
from dataset import corrections as records
from sandbox.server import Message, Sandbox
from storage import GuildSpace
from tests.fakes import FAQ, chat_line
from tests.fakes.openai_server import FakeOpenAI
from training import jobs

KEY = "test"
STARTED = re.compile(r"Started training job `([^`]+)`")
FAQ_JSONL = "".join(json.dumps(chat_line(q, a)) + "\n" for q, a in FAQ).encode()



# ---------------------------------------------------------------------------- helpers
async def wait_bot(sb: Sandbox, predicate: Callable[[Message], Any], *, after: int = 0,
                   timeout: float = 10.0) -> Message:
    """The first bot message after ``after`` for which ``predicate`` holds (waits for edits too)."""
    def find() -> Message | None:
        return next((m for m in sb.bot_messages(after=after) if predicate(m)), None)
    return await sb.wait_for(find, timeout)


def status_messages(sb: Sandbox, job_id: str) -> list[Message]:
    return [m for m in sb.bot_messages() if m.content.startswith(f"Training job `{job_id}` (")]


async def start_job(h: BotHarness, content: str = "!train", *, user: str = "admin",
                    **kwargs: Any) -> tuple[str, Message]:
    """Post a !train and return the new job's id and its status message."""
    msg = await h.sandbox.post_message(user, content, **kwargs)
    started = await wait_bot(h.sandbox, lambda m: STARTED.search(m.content), after=msg.id, timeout=15)
    job_id = STARTED.search(started.content).group(1)
    status = await wait_bot(h.sandbox, lambda m: m.content.startswith(f"Training job `{job_id}` ("), after=msg.id)
    return job_id, status


async def announcement(sb: Sandbox, job_id: str, timeout: float = 10.0) -> Message:
    """The watcher's closing message for a job."""
    return await wait_bot(sb, lambda m: m.content.startswith((f"Training job `{job_id}` succeeded",
                                                               f"Training job `{job_id}` failed",
                                                               f"Training job `{job_id}` was cancelled")),
                          timeout=timeout)


def space(h: BotHarness) -> GuildSpace:
    s = h.bot.settings
    return GuildSpace(h.guild_id, s.data_dir, s.corrections_dir)


def openai_settings(settings: Settings, fake: FakeOpenAI) -> Settings:
    return dataclasses.replace(settings, model_backend="openai", openai_api_key=KEY, openai_base_url=fake.base_url)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(KEY, steps_per_advance=8) as server:
        yield server


@pytest.fixture
async def openai_harness(sandbox: Sandbox, settings: Settings, fake: FakeOpenAI,
                         error_log: Any) -> AsyncIterator[BotHarness]:
    bot = await start_bot(sandbox, openai_settings(settings, fake))
    try:
        yield BotHarness(sandbox, bot)
    finally:
        await stop_bot(bot)


async def ask_answer(h: BotHarness, question: str) -> Message:
    """Ask in #general; return the bot's reply to that question."""
    msgs = await h.send(question)
    assert msgs[0].reference_id == h.last_posted.id, "the answer is not a reply to the question"
    return msgs[0]


async def run_fake_job(h: BotHarness, fake: FakeOpenAI, job_id: str, status: Message) -> Message:
    """Advance a fake job phase by phase, letting the watcher see each, until the announcement."""
    for _ in range(40):
        job = fake.jobs[job_id]
        if job.status == "succeeded":
            break
        fake.advance(job_id)
        # The status message follows every phase and step the watcher saw.
        want = [f"**{job.status}**"] + ([f"] {job.step}/{job.total_steps}"] if job.step else [])
        await h.sandbox.wait_for(lambda want=want: all(w in status.content for w in want), timeout=5)
    return await announcement(h.sandbox, job_id)


# ---------------------------------------------------------------------------- the main loop, both backends
async def test_local_chat_correct_train_changes_answer(harness: BotHarness) -> None:
    h, sb = harness, harness.sandbox
    first = await ask_answer(h, "When does the shop open?")
    assert "haven't been trained" in first.content
    thanks = await h.ask("!correct The shop opens at 9 am.", reply_to=first.id)
    assert thanks.startswith("Thanks — correction `C-")

    job_id, status = await start_job(h)
    assert job_id.startswith("local-")
    started = [m for m in sb.bot_messages() if STARTED.search(m.content)][0]
    # The local backend has no tokens or epochs; OpenAI-only dataset warnings are not shown.
    assert started.content == f"Started training job `{job_id}` on the local backend: 1 example."
    done = await announcement(sb, job_id)
    assert done.content.startswith(f"Training job `{job_id}` succeeded. I now answer with `local-v1`.")
    assert "No loss curve" in done.content and not done.attachments  # said, not silently missing

    assert len(status_messages(sb, job_id)) == 1
    assert status.edits >= 1
    assert "**succeeded**" in status.content and "[##############] 3/3" in status.content
    assert "Training loss: none (nearest-example model)" in status.content
    assert "Model: `local-v1`" in status.content and "epochs" not in status.content

    second = await ask_answer(h, "when does the shop open")
    assert second.content == "The shop opens at 9 am."
    job = jobs.get_job(h.bot.model.space(h.guild_id), job_id)
    assert job["status_message_id"] == status.id and job["activated"]


async def test_openai_chat_correct_train_changes_answer(openai_harness: BotHarness, fake: FakeOpenAI) -> None:
    h, sb = openai_harness, openai_harness.sandbox
    before = await ask_answer(h, "When does the shop open?")
    assert before.content.startswith("(base model ")  # nothing fine-tuned yet

    # OpenAI needs >= 10 examples: ingest the FAQ and train on it.
    job_id, status = await start_job(h, "!train", attachments=[("faq.jsonl", FAQ_JSONL, "application/json")])
    assert any(m.content.startswith("Added **12** examples") for m in sb.bot_messages())
    assert job_id in fake.jobs and "**validating_files**" in status.content
    done = await run_fake_job(h, fake, job_id, status)
    model1 = fake.jobs[job_id].fine_tuned_model
    assert done.content.startswith(f"Training job `{job_id}` succeeded. I now answer with `{model1}`.")
    png = done.attachments[0]
    assert png.filename == f"loss-{job_id}.png" and png.data.startswith(b"\x89PNG")
    assert len(status_messages(sb, job_id)) == 1 and status.edits >= 3
    total = fake.jobs[job_id].total_steps
    assert "**succeeded**" in status.content and f"[##############] {total}/{total}" in status.content
    assert re.search(rf"Training loss: \d\.\d{{4}} \(step {total}\)", status.content)

    answer = await ask_answer(h, "When does the shop open?")
    assert answer.content == "The shop opens at 9 am."
    assert fake.chat_requests[-1]["model"] == model1
    thanks = await h.ask("!correct It opens at 10 am on weekdays.", reply_to=answer.id)
    assert "correction `C-" in thanks

    job2, status2 = await start_job(h)
    assert job2 != job_id
    done2 = await run_fake_job(h, fake, job2, status2)
    model2 = fake.jobs[job2].fine_tuned_model
    assert f"I now answer with `{model2}`" in done2.content and done2.attachments
    # The correction replaced the corrected example in the uploaded file.
    uploaded = [json.loads(x) for x in fake.files[fake.jobs[job2].training_file].data.decode().splitlines()]
    assert sum("opens at 9 am" in json.dumps(x) for x in uploaded) == 0
    after = await ask_answer(h, "When does the shop open?")
    assert after.content == "It opens at 10 am on weekdays."
    assert fake.chat_requests[-1]["model"] == model2


# ---------------------------------------------------------------------------- failure, cancel, restart
async def test_openai_failure_and_cancel_with_reasons(openai_harness: BotHarness, fake: FakeOpenAI) -> None:
    h, sb = openai_harness, openai_harness.sandbox
    job_id, status = await start_job(h, "!train", attachments=[("faq.jsonl", FAQ_JSONL, "application/json")])
    fake.advance(job_id, times=3)
    await sb.wait_for(lambda: "**running**" in status.content)
    fake.fail(job_id, "The job failed due to an invalid training file: line 4 is too long.")
    done = await announcement(sb, job_id)
    assert done.content == (f"Training job `{job_id}` failed: The job failed due to an invalid training file: "
                            "line 4 is too long.")
    assert "**failed**" in status.content and "Error: The job failed due to an invalid training file" in status.content
    assert (await h.bot.model.current_model(h.guild_id)) is None  # a failed job changes nothing

    fake.delay_next(1, 0.8)  # a slow upload keeps this !train at work...
    job2_task = asyncio.ensure_future(start_job(h))
    await asyncio.sleep(0.1)
    busy = await h.ask("!train", user="admin")  # ...so a second one is turned away, clearly
    assert busy == "A training is being started in this server right now; try again when it has finished."
    job2, status2 = await job2_task
    for _ in range(100):  # once it is done, the running job is named
        if jobs.get_job(h.bot.model.space(h.guild_id), job2).get("status_message_id"):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # the command's concurrency slot is released just after it returns
    busy = await h.ask("!train", user="admin")
    assert busy == f"Training job `{job2}` is still validating_files; wait for it or cancel it."
    reply = await h.ask(f"!cancel {job2[:12]}", user="admin")  # a unique prefix of the id is enough
    assert reply == f"Cancelling training job `{job2}`: it is now cancelled and will not change the model."
    done2 = await announcement(sb, job2)
    assert done2.content == f"Training job `{job2}` was cancelled by admin."
    assert "**cancelled**" in status2.content and "Cancelled by admin." in status2.content
    assert len(status_messages(sb, job2)) == 1 and status2.edits >= 1
    assert fake.jobs[job2].status == "cancelled"
    again = await h.ask(f"!cancel {job2}", user="admin")
    assert again == f"Job `{job2}` already cancelled."
    assert await h.ask("!cancel ftjob-nope", user="admin") == "There is no training job `ftjob-nope` on this server."


async def test_restart_mid_job_resumes_the_same_status_message(sandbox: Sandbox, settings: Settings,
                                                               fake: FakeOpenAI, error_log: Any) -> None:
    bot = await start_bot(sandbox, openai_settings(settings, fake))
    try:
        h = BotHarness(sandbox, bot)
        job_id, status = await start_job(h, "!train", attachments=[("faq.jsonl", FAQ_JSONL, "application/json")])
        fake.advance(job_id, times=3)
        await sandbox.wait_for(lambda: "**running**" in status.content)
    finally:
        await stop_bot(bot)
    edits_before = status.edits
    fake.advance(job_id)  # progress while the bot is down
    bot = await start_bot(sandbox, openai_settings(settings, fake))
    try:
        h = BotHarness(sandbox, bot)
        step = fake.jobs[job_id].step
        await sandbox.wait_for(lambda: f"] {step}/" in status.content)  # the new watcher caught up
        assert status.edits > edits_before
        fake.finish(job_id)
        done = await announcement(sandbox, job_id)
        assert done.attachments and done.attachments[0].data.startswith(b"\x89PNG")
        assert "**succeeded**" in status.content
        assert status_messages(sandbox, job_id) == [status]  # the same message, no new one
        assert sum(m.content.startswith(f"Training job `{job_id}` succeeded") for m in sandbox.bot_messages()) == 1
        assert jobs.get_job(bot.model.space(h.guild_id), job_id)["status_message_id"] == status.id
        assert (await ask_answer(h, "Where do I park my bike?")).content == "Bikes go in the basement rack."
    finally:
        await stop_bot(bot)


# ---------------------------------------------------------------------------- OpenAI trouble
async def test_rate_limit_and_server_error_storms_lose_nothing(openai_harness: BotHarness,
                                                               fake: FakeOpenAI) -> None:
    h, sb = openai_harness, openai_harness.sandbox
    fake.fail_next(10, 429)  # more than the SDK's 3 retries
    msgs = await h.send("!train", user="admin", attachments=[("faq.jsonl", FAQ_JSONL, "application/json")],
                        count=2)
    assert "Added **12** examples" in msgs[0].content
    text = msgs[1].content
    assert text.startswith("I could not start training: OpenAI is rate-limiting us (429) after 3 retries")
    assert "Nothing was lost" in text and "`!train` again" in text
    assert (await h.bot.model.list_jobs(h.guild_id)) == [] and not fake.jobs
    fake._faults.clear()

    fake.fail_next(10, 500)
    text = await h.ask("!train", user="admin")
    assert text.startswith("I could not start training: OpenAI had a server error (500) after 3 retries")
    assert (await h.bot.model.list_jobs(h.guild_id)) == [] and not fake.jobs
    fake._faults.clear()

    # A short storm is absorbed by the SDK's retries; the data ingested above is all still there.
    fake.fail_next(2, 503)
    job_id, status = await start_job(h)
    assert "12 examples" in sb.bot_messages()[-2].content
    assert len(fake.files[fake.jobs[job_id].training_file].lines) == len(FAQ)
    # A storm while the job is watched only delays the status; the watcher keeps going.
    fake.fail_next(12, 500)
    fake.finish(job_id)
    done = await announcement(sb, job_id, timeout=15)
    assert "succeeded" in done.content and "**succeeded**" in status.content
    assert len(status_messages(sb, job_id)) == 1


async def test_refused_job_shows_openai_text(openai_harness: BotHarness, fake: FakeOpenAI) -> None:
    h = openai_harness
    fake.refuse_jobs(403, "Fine-tuning is no longer available for this account.", "fine_tuning_unavailable")
    msgs = await h.send("!train", user="admin", attachments=[("faq.jsonl", FAQ_JSONL, "application/json")],
                        count=2)
    text = msgs[1].content
    assert "OpenAI refused to start the fine-tuning job (403): Fine-tuning is no longer available for this " \
           "account." in text
    assert (await h.bot.model.list_jobs(h.guild_id)) == [] and not fake.jobs
    assert not [f for f in fake.files.values() if f.purpose == "fine-tune"], "the upload was left behind"
    assert "MODEL_BACKEND=hf" in text and "2027-01-06" in text  # the way on, in the same line
    assert "No training jobs yet" in await h.ask("!jobs")


async def test_too_few_examples_for_openai_is_explained(openai_harness: BotHarness, fake: FakeOpenAI) -> None:
    text = "\n".join(m.content for m in await openai_harness.send(
        "!train When does the shop open? => At 9.", user="admin", count=2))
    assert "I did not start training: the dataset has problems." in text
    assert "OpenAI needs at least 10" in text and not fake.jobs and not fake.files


# ---------------------------------------------------------------------------- !test
async def train_local(h: BotHarness, examples: str) -> str:
    job_id, _ = await start_job(h, f"!train {examples}".strip())
    done = await announcement(h.sandbox, job_id)
    assert "succeeded" in done.content, done.content
    return job_id


async def test_test_command(harness: BotHarness) -> None:
    h = harness
    await train_local(h, "\n".join(f"{q} => {a}" for q, a in FAQ[:4]))
    errors_file = space(h).errors_file
    calls: list[str] = []
    real_answer = h.bot.model.backend.answer

    async def counting(space_, model_name, prompt, history):
        calls.append(prompt)
        return await real_answer(space_, model_name, prompt, history)

    h.bot.model.backend.answer = counting

    # Malformed JSON: where it is wrong, and nothing is run.
    bad = await h.ask('!test {"input": "Where is the office?", "expected": "x"}\n{"input": oops}', user="admin")
    assert bad == "Invalid JSON at line 2, column 11: Expecting value."
    assert calls == [] and not errors_file.exists()
    # Empty input: the usage.
    empty = await h.ask("!test", user="admin")
    assert empty.startswith("Missing `cases`.") and "Usage: `!test" in empty
    assert (await h.ask("!test ```json\n```", user="admin")).startswith("Missing `cases`.")
    assert calls == []

    good = await h.ask('!test ```json\n[{"input": "When does the shop open", "expected": "the shop opens at 9 AM"},\n'
                       ' {"input": "Where is the office?", "expected": "In the attic."}]\n```', user="admin")
    assert good.startswith("**Accuracy: 50%** (1/2 correct)")
    assert "expected: 'In the attic.'" in good and "got: 'The office is on the second floor.'" in good
    assert "kept as training data" in good and len(calls) == 2
    kept = records.list_test_errors(space(h))
    assert [(k["input"], k["expected"], k["got"], k["model"]) for k in kept] == [
        ("Where is the office?", "In the attic.", "The office is on the second floor.", "local-v1")]
    assert errors_file == space(h).corrections / "test_errors.jsonl"

    cases = "\n".join(json.dumps({"input": q, "expected": a}) for q, a in FAQ[:4]).encode()
    msgs = await h.send("!test", user="admin", attachments=[("cases.json", cases, "application/json")])
    assert msgs[0].content.startswith("**Accuracy: 100%** (4/4 correct)")
    assert len(records.list_test_errors(space(h))) == 1  # nothing new kept
    wrong = await h.ask("!test", user="admin", attachments=[("cases.txt", cases, "text/plain")])
    assert wrong == "`cases.txt` is not a .json or .jsonl file."

    # The kept mismatch trains the next model.
    await train_local(h, "Is there coffee in the kitchen? => Yes, fresh coffee every morning.")
    assert (await ask_answer(h, "Where is the office?")).content == "In the attic."


# ---------------------------------------------------------------------------- !jobs, !model, permissions
async def test_jobs_and_model_switching(harness: BotHarness) -> None:
    h = harness
    assert await h.ask("!jobs") == "No training jobs yet. An admin can start one with `!train`."
    assert (await h.ask("!model")).startswith("No trained model yet (local backend).")
    assert await h.ask("!model previous", user="admin") == "There is no previous model to go back to."
    job1 = await train_local(h, "When does the shop open? => At 9.")
    first = await ask_answer(h, "when does the shop open")
    assert first.content == "At 9."
    await h.ask("!correct At 10 now.", reply_to=first.id)
    job2 = await train_local(h, "")  # a plain !train: the data is there, the correction is new
    jobs_text = await h.ask("!jobs")
    lines = jobs_text.splitlines()
    assert lines[0] == "**Recent training jobs**"
    assert lines[1].startswith(f"`{job2}` succeeded") and lines[1].endswith("by admin → `local-v2`")
    assert lines[2].startswith(f"`{job1}` succeeded") and lines[2].endswith("→ `local-v1`")
    assert await h.ask("!model") == "Current model: `local-v2` (local backend). Others: `local-v1`."
    assert (await ask_answer(h, "When does the shop open?")).content == "At 10 now."

    assert await h.ask("!model previous", user="admin") == "Switched to model `local-v1`."
    assert (await ask_answer(h, "When does the shop open?")).content == "At 9."
    assert await h.ask("!model local-v2", user="admin") == "Switched to model `local-v2`."
    assert (await ask_answer(h, "When does the shop open?")).content == "At 10 now."
    nope = await h.ask("!model nonexistent", user="admin")
    assert nope == "There is no model `nonexistent` on this server. Known: `local-v1`, `local-v2`."
    assert await h.ask("!model") == "Current model: `local-v2` (local backend). Others: `local-v1`."


async def test_non_admins_are_refused(harness: BotHarness) -> None:
    h = harness
    refused = "You need the **Manage Server** permission to use this command."
    assert await h.ask("!train When does the shop open? => At 9.") == refused
    assert not space(h).jobs_file.exists() and not space(h).datasets.exists()
    assert await h.ask("!cancel local-123") == refused
    assert await h.ask("!model local-v1") == refused
    assert await h.ask("!test [{\"input\": \"a\", \"expected\": \"b\"}]") == refused
    # Looking is allowed.
    assert (await h.ask("!model")).startswith("No trained model yet")
    assert (await h.ask("!jobs")).startswith("No training jobs yet")
