"""!train end to end through the sandbox, and !jobs, !cancel, !model, !test.

Training: chat -> !correct -> !train -> watched job -> new answer, on both backends: local (trains
in-process in milliseconds) and openai (the real SDK, with strict response validation, against the
fake OpenAI server whose job clock the tests advance).

Adding data with !train: every format as attachments, inline text, paths, refusals with reasons,
size limits, duplicates. There the job part is stubbed (the ``started`` fixture) except in the one
test that checks a real job starts, so ingestion is tested without waiting for training.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from dataset import corrections as records
from dataset import folder as dataset_folder
from sandbox.server import Message, Sandbox
from storage import GuildSpace, read_records
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.samples import FAQ, chat_line, jsonl, pair
from tests.harness import (
    STARTED,
    BotHarness,
    announcement,
    confirmed,
    running_bot,
    space_of,
    start_bot,
    start_job,
    stop_bot,
)
from training import evaluation, jobs

KEY = "test"
FAQ_JSONL = "".join(json.dumps(chat_line(q, a)) + "\n" for q, a in FAQ).encode()


# ---------------------------------------------------------------------------- helpers
def status_messages(sb: Sandbox, job_id: str) -> list[Message]:
    return [m for m in sb.bot_messages() if m.content.startswith(f"Training job `{job_id}` (")]


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


def dataset_records(space: GuildSpace) -> list[dict]:
    """Every example stored in the guild's current dataset folder."""
    folder = dataset_folder.current_dataset(space)
    out: list[dict] = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        result = read_records(path)
        assert not result.damaged, path
        out.extend(result.records)
    return out


def text_of(messages: list[Message]) -> str:
    return "\n".join(m.content for m in messages)


# ---------------------------------------------------------------------------- the main loop, both backends
async def test_local_chat_correct_train_changes_answer(harness: BotHarness) -> None:
    h, sb = harness, harness.sandbox
    first = await ask_answer(h, "When does the shop open?")
    assert "haven't been trained" in first.content
    thanks = await h.ask("!correct The shop opens at 9 am.", reply_to=first.id)
    assert thanks.startswith("Thanks — correction `C-") and "awaits review" in thanks
    # A member's correction reaches training only once an admin approved it.
    assert (await h.ask(f"!approve {thanks.split('`')[1]}", user="admin")).startswith("Approved `C-")

    job_id, status = await start_job(h)
    assert job_id.startswith("local-")
    started = [m for m in sb.bot_messages() if STARTED.search(m.content)][0]
    # The local backend has no tokens or epochs; OpenAI-only dataset warnings are not shown.
    assert started.content == (f"Started training job `{job_id}` on the local backend: 1 example.\n"
                               f"Examples by contributor: member ({sb.member.id}) 1.")
    done = await announcement(sb, job_id)
    assert done.content.startswith(f"Training job `{job_id}` succeeded. I now answer with `local-v1`.")
    assert "No loss curve" in done.content and not done.attachments  # said, not silently missing

    assert len(status_messages(sb, job_id)) == 1
    assert status.edits >= 1
    assert "**succeeded**" in status.content and "[##############] 4/4" in status.content
    assert "Training loss: none (nearest-example model)" in status.content
    assert "Model: `local-v1`" in status.content and "epochs" not in status.content

    second = await ask_answer(h, "when does the shop open")
    assert second.content == "The shop opens at 9 am."
    job = jobs.get_job(h.bot.model.space(h.guild_id), job_id)
    assert job.status_message_id == status.id and job.activated


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
    assert "correction `C-" in thanks and "awaits review" in thanks
    assert (await h.ask(f"!approve {thanks.split('`')[1]}", user="admin")).startswith("Approved `C-")

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
        if jobs.get_job(h.bot.model.space(h.guild_id), job2).status_message_id:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # the command's concurrency slot is released just after it returns
    busy = await h.ask("!train", user="admin")
    assert busy == f"Training job `{job2}` is still validating_files; wait for it or cancel it."
    # A unique prefix of the id is enough; the dialog names the job, the admin confirms.
    dialog, reply_msg, *_ = await confirmed(h, f"!cancel {job2[:12]}", user="admin")
    assert dialog.content.startswith(f"Cancel training job `{job2}` (")
    reply = reply_msg.content
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
        assert jobs.get_job(bot.model.space(h.guild_id), job_id).status_message_id == status.id
        assert (await ask_answer(h, "Where do I park my bike?")).content == "Bikes go in the basement rack."
    finally:
        await stop_bot(bot)


async def test_a_big_local_training_shows_its_stages_and_goes_on_after_a_restart(
        sandbox: Sandbox, settings: Settings, error_log: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local backend: a quick stage answers, the status message moves, /quit keeps the work, and the
    restarted bot finishes the same job in the same status message."""
    from training.local import fit

    monkeypatch.setattr(fit, "STAGE_ABOVE", 100)
    monkeypatch.setattr(fit, "CHUNK_TOKENS", 400)  # many small chunks: several progress reports
    pairs = [(f"how do I book meeting room {i} on floor {i % 7}?", f"Room {i} is booked at the {i % 5} desk.")
             for i in range(1500)]
    upload = "".join(json.dumps(chat_line(q, a)) + "\n" for q, a in pairs).encode()
    bot = await start_bot(sandbox, settings)
    try:
        h = BotHarness(sandbox, bot)
        job_id, status = await start_job(h, "!train", attachments=[("rooms.jsonl", upload, "application/json")])
        # The first report comes before any pair is embedded (no speed yet): wait for one with a speed.
        await sandbox.wait_for(lambda: "Stage 2/2" in status.content and "/1,500 pairs embedded" in status.content
                               and "examples/s" in status.content, timeout=30)
        assert "answers with quick wordllama vectors" in status.content
        reply = await ask_answer(h, "How do I book meeting room 12 on floor 5?")  # the quick stage answers
        assert reply.content == "Room 12 is booked at the 2 desk."
    finally:
        await stop_bot(bot)  # as /quit does: the training stops and keeps what it embedded
    space = GuildSpace(h.guild_id, settings.data_dir, settings.corrections_dir)
    work = fit.Work(space.models, job_id)
    assert work.exists() and 0 < work.progress()[0] < 1500
    bot = await start_bot(sandbox, settings)
    try:
        h = BotHarness(sandbox, bot)
        done = await announcement(sandbox, job_id, timeout=60)
        assert done.content.startswith(f"Training job `{job_id}` succeeded. I now answer with `local-v1`.")
        assert "**succeeded**" in status.content and status_messages(sandbox, job_id) == [status]
        job = jobs.get_job(space_of(h), job_id)
        assert job.extra["attempts"] == 2 and any("resuming with" in e for e in job.events)
        assert (await ask_answer(h, "How can I book meeting room 12 on floor 5")).content == \
            "Room 12 is booked at the 2 desk."
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
    space = space_of(h)
    calls: list[str] = []
    real_answer = h.bot.model.backend.answer

    async def counting(space_, model_name, prompt, history):
        calls.append(prompt)
        return await real_answer(space_, model_name, prompt, history)

    h.bot.model.backend.answer = counting

    # Malformed JSON: where it is wrong, and nothing is run.
    bad = await h.ask('!test {"input": "Where is the office?", "expected": "x"}\n{"input": oops}', user="admin")
    assert bad == "Invalid JSON at line 2, column 11: Expecting value."
    assert calls == [] and records.list_test_errors(space) == [] and evaluation.eval_set(space) == []
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
    kept = records.list_test_errors(space)
    assert [(k.input, k.expected, k.got, k.model) for k in kept] == [
        ("Where is the office?", "In the attic.", "The office is on the second floor.", "local-v1")]
    # The case that passed joined the server's evaluation set (what the evaluation gate scores new models on);
    # the mismatch is training data, kept apart from it.
    assert [(c.input, c.expected) for c in evaluation.eval_set(space)] == [
        ("When does the shop open", "the shop opens at 9 AM")]

    cases = "\n".join(json.dumps({"input": q, "expected": a}) for q, a in FAQ[:4]).encode()
    msgs = await h.send("!test", user="admin", attachments=[("cases.json", cases, "application/json")])
    assert msgs[0].content.startswith("**Accuracy: 100%** (4/4 correct)")
    assert len(records.list_test_errors(space_of(h))) == 1  # nothing new kept
    wrong = await h.ask("!test", user="admin", attachments=[("cases.txt", cases, "text/plain")])
    assert wrong == "`cases.txt` is not a .json or .jsonl file."

    # The kept mismatch trains the next model. The office case is training data, so the evaluation gate does not
    # score on it (the last !test's "second floor" stayed out of the evaluation set): the new model goes live, on
    # the other cases it still passes, and gives the kept answer.
    assert "Where is the office?" not in [c.input for c in evaluation.eval_set(space)]
    job_id = await train_local(h, "Is there coffee in the kitchen? => Yes, fresh coffee every morning.")
    assert "I now answer with `local-v2`" in (await announcement(h.sandbox, job_id)).content
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
    # New data for the same question (a correction would apply at once, whatever the version).
    job2 = await train_local(h, "When does the shop open? => At 10 now.")
    jobs_text = await h.ask("!jobs")
    lines = jobs_text.splitlines()
    assert lines[0] == "**Recent training jobs**"
    # Nothing to score it on (no !test cases, too few pairs to hold out) while local-v1 answers: held back.
    held = "there is nothing to score it on yet (no test cases, too few pairs to hold out), and `local-v1` answers now"
    assert lines[1].startswith(f"`{job2}` succeeded") and lines[1].endswith(
        f"by admin → `local-v2` — **held back**: {held}")
    assert lines[2].startswith(f"`{job1}` succeeded") and lines[2].endswith("→ `local-v1`")
    shown = (await h.ask("!model")).split("\n")
    assert shown[0] == "Current model: `local-v1` (local backend). Others, newest first: `local-v2`."
    assert shown[1] == f"Held back by the evaluation gate: `local-v2` ({held}); `!model local-v2` switches to it."
    assert shown[2] == "It answers by meaning with the `all-MiniLM-L6-v2` embedding model; unsure: says it doesn't know and offers the closest questions it knows."
    assert (await ask_answer(h, "When does the shop open?")).content == "At 9."
    assert await h.ask("!model local-v2", user="admin") == "Switched to model `local-v2`."
    assert (await ask_answer(h, "When does the shop open?")).content == "At 10 now."

    assert await h.ask("!model previous", user="admin") == "Switched to model `local-v1`."
    assert (await ask_answer(h, "When does the shop open?")).content == "At 9."
    assert await h.ask("!model local-v2", user="admin") == "Switched to model `local-v2`."
    assert (await ask_answer(h, "When does the shop open?")).content == "At 10 now."
    nope = await h.ask("!model nonexistent", user="admin")
    assert nope == "There is no model `nonexistent` on this server. Known: `local-v1`, `local-v2`."
    shown = (await h.ask("!model")).split("\n")
    assert shown[0] == "Current model: `local-v2` (local backend). Others, newest first: `local-v1`."
    assert shown[1] == "It answers by meaning with the `all-MiniLM-L6-v2` embedding model; unsure: says it doesn't know and offers the closest questions it knows."


async def test_non_admins_are_refused(harness: BotHarness) -> None:
    h = harness
    refused = "You need the **Manage Server** permission to use this command."
    assert await h.ask("!train When does the shop open? => At 9.") == refused
    assert jobs.list_jobs(space_of(h), 0) == [] and not space_of(h).datasets.exists()
    assert await h.ask("!cancel local-123") == refused
    assert await h.ask("!model local-v1") == refused
    assert await h.ask("!test [{\"input\": \"a\", \"expected\": \"b\"}]") == refused
    # Looking is allowed.
    assert (await h.ask("!model")).startswith("No trained model yet")
    assert (await h.ask("!jobs")).startswith("No training jobs yet")


# ---------------------------------------------------------------------------- !train: attachments
async def test_train_every_format_as_attachments(harness: BotHarness, started: list[str]) -> None:
    chat = jsonl(
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]},
    )
    pairs = jsonl(pair("2+2?", "4"), pair("capital of Peru?", "Lima"))
    array = json.dumps([{"input": "colour of the sky?", "output": "blue"},
                        {"question": "boiling point of water?", "answer": "100 °C"}]).encode()
    table = b'question,answer\n"Paris, Texas?","A city, in Texas"\nlargest ocean?,Pacific\n'
    notes = "first note\n\nsecond note ✓\n".encode()
    msgs = await harness.send("!train", user="admin", attachments=[
        ("chat.jsonl", chat, "application/jsonl"), ("pairs.jsonl", pairs, None), ("array.json", array, None),
        ("table.csv", table, "text/csv"), ("notes.txt", notes, "text/plain"),
    ])
    text = text_of(msgs)
    for name in ("chat.jsonl", "pairs.jsonl", "array.json", "table.csv"):
        assert f"**{name}**: Added **2** examples.\nThey are 2 question/answer pairs: I answer from these" in text, text
    # Plain .txt lines are labelled texts, and the reply says they are not answers.
    assert "**notes.txt**: Added **2** examples.\nThey are 2 labelled texts (`positive` ×2): they teach the classifier" in text
    assert "Dataset `datasets/main`." in text
    assert started == ["supervised"]

    space = space_of(harness)
    stored = dataset_records(space)
    assert len(stored) == 10
    by_source: dict[str, list[dict]] = {}
    for r in stored:
        by_source.setdefault(r["source"], []).append(r)
        assert r["positive"] is True and "admin" in r["added_by"]
    assert set(by_source) == {"chat.jsonl", "pairs.jsonl", "array.json", "table.csv", "notes.txt"}
    assert by_source["chat.jsonl"][0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [m["content"] for m in by_source["table.csv"][0]["messages"]] == ["Paris, Texas?", "A city, in Texas"]
    assert [m["content"] for m in by_source["array.json"][1]["messages"]] == ["boiling point of water?", "100 °C"]
    assert [(r["kind"], r["text"], r["label"]) for r in by_source["notes.txt"]] == [
        ("text", "first note", "positive"), ("text", "second note ✓", "positive")]
    # The uploads are kept as sent.
    uploads = sorted(p.name.split("-", 2)[2] for p in space.uploads.iterdir())
    assert uploads == ["array.json", "chat.jsonl", "notes.txt", "pairs.jsonl", "table.csv"]

    # positive=no: the examples are stored as negative ones.
    msgs = await harness.send("!train positive=no", user="admin",
                              attachments=[("bad.txt", b"rude answer\nwrong answer\n", None)])
    assert "Added **2** examples." in text_of(msgs)
    negative = [r for r in dataset_records(space) if r["source"] == "bad.txt"]
    assert [(r["text"], r["label"], r["positive"]) for r in negative] == [
        ("rude answer", "negative", False), ("wrong answer", "negative", False)]
    assert started == ["supervised", "supervised"]


async def test_train_inline_text_with_line_numbers(harness: BotHarness, started: list[str]) -> None:
    text = await harness.ask("!train q1 => a1\n\n=> no prompt\na plain example\nq2 =>\nq3 => a3", user="admin")
    assert text.startswith("Added **3** examples, skipped **2**:"), text
    assert "- line 3: empty prompt around `=>`" in text
    assert "- line 5: empty completion around `=>`" in text
    stored = dataset_records(space_of(harness))
    chats = [[m["content"] for m in r["messages"]] for r in stored if r["kind"] == "chat"]
    assert sorted(chats) == [["q1", "a1"], ["q3", "a3"]]
    assert [r["text"] for r in stored if r["kind"] == "text"] == ["a plain example"]
    assert started == ["supervised"]
    # Inline examples marked negative.
    assert "Added **1** example." in await harness.ask("!train positive=no bad q => bad a", user="admin")
    negative = [r for r in dataset_records(space_of(harness)) if not r["positive"]]
    assert [[m["content"] for m in r["messages"]] for r in negative] == [["bad q", "bad a"]]
    # A bad flag value is refused before anything is stored.
    assert await harness.ask("!train positive=maybe x => y", user="admin") == "`positive=` takes yes or no, not `maybe`."
    assert len(dataset_records(space_of(harness))) == 4


async def test_train_path_file_and_folder(harness: BotHarness, started: list[str]) -> None:
    space = space_of(harness)
    incoming = space.data / "incoming"
    (incoming / "sub").mkdir(parents=True)
    (incoming / "a.jsonl").write_bytes(jsonl(pair("one", "1"), pair("two", "2")))
    (incoming / "sub" / "b.txt").write_text("note b1\nnote b2\n")
    (incoming / "bad.csv").write_text("foo,bar\n1,2\n")
    (incoming / "ignored.bin").write_bytes(b"\x00\x01")
    (space.data / "my data.jsonl").write_bytes(jsonl(pair("spaced", "name")))

    text = await harness.ask("!train incoming/a.jsonl", user="admin")
    assert text.startswith("Added **2** examples."), text
    text = await harness.ask("!train incoming", user="admin")
    assert text.startswith("Added **2** examples, skipped **3** (2 already in the dataset):"), text
    assert "incoming/a.jsonl line 1: already in the dataset" in text
    assert "`incoming/bad.csv` needs a header row" in text
    assert "ignored.bin" not in text
    # A name with a space is a path when it names an existing file.
    assert (await harness.ask("!train my data.jsonl", user="admin")).startswith("Added **1** example.")
    assert started == ["supervised"] * 3
    stored = dataset_records(space)
    assert sorted(r["source"] for r in stored) == [
        "incoming/a.jsonl", "incoming/a.jsonl", "incoming/sub/b.txt", "incoming/sub/b.txt", "my data.jsonl"]
    # The files read stay where they were.
    assert (incoming / "a.jsonl").exists() and (incoming / "sub" / "b.txt").exists()

    empty = space.data / "nothing"
    empty.mkdir()
    assert await harness.ask("!train nothing", user="admin") == "`nothing` has no .jsonl, .json, .csv or .txt files."
    assert started == ["supervised"] * 3


@pytest.mark.parametrize("path", ["nosuchdir", "nosuch.jsonl", "sub/none.txt", "`missing file.csv`"])
async def test_train_missing_path_is_reported_not_learnt(harness: BotHarness, started: list[str], path: str) -> None:
    text = await harness.ask(f"!train {path}", user="admin")
    shown = path.strip("`")
    assert text.startswith(f"`{shown}` does not exist in this server's data folder."), text
    assert "`!train question => answer`" in text
    assert dataset_records(space_of(harness)) == [] and started == []


async def test_train_bad_files_are_refused_with_reasons(harness: BotHarness, started: list[str]) -> None:
    async def train(name: str, data: bytes) -> str:
        return await harness.ask("!train", user="admin", attachments=[(name, data, None)])

    assert await train("empty.jsonl", b"") == "`empty.jsonl` is empty."
    assert await train("blank.txt", b"\n \n") == "`blank.txt` has no examples (only blank lines)."
    assert await train("latin1.txt", "café\n".encode("latin-1")) == (
        "`latin1.txt` is not UTF-8 text (line 1, byte 4): save it as UTF-8.")
    assert await train("sheet.xlsx", b"PK\x03\x04") == (
        "`sheet.xlsx`: unsupported file type `.xlsx`; use .jsonl, .json, .csv or .txt.")
    assert await train("noext", b"a => b") == "`noext`: unsupported file type `none`; use .jsonl, .json, .csv or .txt."
    assert await train("broken.json", b'[{"prompt": "a", "completion": "b"}, {"prompt": ') == (
        "Added **1** example, skipped **1**:\n- line 1: not valid JSON (Expecting value, column 49); "
        "the rest of the array was not read\nThey are 1 question/answer pair: I answer from it after the next "
        "training.\nDataset `datasets/main`.")
    space = space_of(harness)
    # Refused uploads are not kept (the unsupported ones were never downloaded); one that gave examples is.
    assert sorted(p.name.split("-", 2)[2] for p in space.uploads.iterdir()) == ["broken.json"]

    malformed = b'{"prompt": "p1", "completion": "c1"}\n{"prompt": "p2",\n[1, 2]\n{"foo": 1}\n' \
                b'{"messages": [{"role": "user", "content": "u"}]}\n\n{"prompt": "p3", "completion": "c3"}\n'
    text = await train("malformed.jsonl", malformed)
    assert text.startswith("Added **2** examples, skipped **4**:"), text
    assert "- line 2: not valid JSON (Expecting property name enclosed in double quotes, column " in text
    assert "- line 3: expected a JSON object, got an array" in text
    assert "- line 4: no `messages`, `prompt`/`completion`, `input`/`output` or `text` field" in text
    assert "- line 5: no assistant message" in text
    assert started == ["supervised", "supervised"]
    assert len(dataset_records(space)) == 3

    # A bad file among good ones: the others are still added and reported, and training starts.
    msgs = await harness.send("!train", user="admin", attachments=[
        ("good.txt", b"good one\n", None), ("empty.csv", b"", None), ("photo.png", b"\x89PNG", "image/png")])
    text = text_of(msgs)
    assert "**good.txt**: Added **1** example." in text
    assert "**empty.csv**: not read: `empty.csv` is empty." in text
    assert "**photo.png**: not read: `photo.png`: unsupported file type `.png`" in text
    assert started == ["supervised"] * 3


async def test_train_unicode_file_names(harness: BotHarness, started: list[str]) -> None:
    name = "données 日本語 ✓.jsonl"
    text = await harness.ask("!train", user="admin", attachments=[(name, jsonl(pair("こんにちは", "hello")), None)])
    assert text.startswith("Added **1** example."), text
    space = space_of(harness)
    [upload] = list(space.uploads.iterdir())
    assert upload.name.endswith("-données_日本語_.jsonl") and upload.parent == space.uploads
    [record] = dataset_records(space)
    assert record["source"] == name and record["messages"][0]["content"] == "こんにちは"
    # The same name typed as a path (quoted because of the spaces) works too.
    folder = space.data / "incoming"
    folder.mkdir()
    (folder / name).write_bytes(jsonl(pair("さようなら", "goodbye")))
    assert (await harness.ask(f"!train `incoming/{name}`", user="admin")).startswith("Added **1** example.")
    assert started == ["supervised", "supervised"]


async def test_train_big_attachment(harness: BotHarness, started: list[str]) -> None:
    """A big attachment is saved whole and every line of it ingested (the time a 50 MB upload takes is
    bench/data.py's figure, ingest_file)."""
    line = b'{"prompt": "question %d ' + b"x" * 160 + b'", "completion": "answer %d"}\n'
    lines = [line % (i, i) for i in range(60_000)]
    data = b"".join(lines)
    assert len(data) >= 11 * 1024 * 1024  # over Discord's default 10 MB upload limit
    text = await harness.ask("!train", user="admin", attachments=[("big.jsonl", data, None)], timeout=60)
    assert text.startswith(f"Added **{len(lines):,}** examples."), text
    space = space_of(harness)
    [upload] = list(space.uploads.iterdir())
    assert upload.stat().st_size == len(data)
    [ingested] = dataset_folder.current_dataset(space).glob("ingested-*.jsonl")
    assert ingested.read_bytes().count(b"\n") == len(lines)
    assert started == ["supervised"]


async def test_train_attachment_over_the_limit(harness: BotHarness, started: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules["model"], "MAX_DATA_UPLOAD", 1000)
    text = await harness.ask("!train", user="admin", attachments=[("big.txt", b"x\n" * 1000, None)])
    assert text == "`big.txt` is 2.0 KB; training files are limited to 1,000 bytes."
    assert not space_of(harness).uploads.exists() and started == []


async def test_train_duplicates_start_no_second_job(harness: BotHarness) -> None:
    """The real job part: new data starts a job; the same data again adds nothing and starts none."""
    data = jsonl(*(pair(f"question {i}", f"answer {i}") for i in range(4)))
    msgs = await harness.send("!train", user="admin", attachments=[("qa.jsonl", data, None)])
    assert msgs[0].content == ("Added **4** examples.\nThey are 4 question/answer pairs: I answer from these after "
                               "the next training.\nDataset `datasets/main`.")
    assert any(m.content.startswith("Started training job `") for m in msgs), text_of(msgs)
    job_id = next(m for m in msgs if m.content.startswith("Started training job `")).content.split("`")[1]
    await announcement(harness.sandbox, job_id, timeout=20)  # the last message this job sends
    jobs = (await harness.bot.model.list_jobs(harness.guild_id, 10))
    assert len(jobs) == 1

    for attempt in range(2):  # the same file again, then the same examples inline
        if attempt == 0:
            msgs = await harness.send("!train", user="admin", attachments=[("qa.jsonl", data, None)])
        else:
            msgs = await harness.send("!train question 0 => answer 0\nquestion 1 => answer 1", user="admin")
        n = 4 if attempt == 0 else 2
        assert len(msgs) == 1, text_of(msgs)
        assert msgs[0].content.startswith(f"Added **0** examples, skipped **{n}** ({n} already in the dataset):")
        assert "- line 1: already in the dataset" in msgs[0].content
        assert msgs[0].content.endswith("Nothing new was added, so I did not start training.")
    assert len((await harness.bot.model.list_jobs(harness.guild_id, 10))) == 1
    assert len(dataset_records(space_of(harness))) == 4


# ---------------------------------------------------------------------------- honest replies, no crashes
async def test_train_on_the_local_backend_speaks_of_the_local_model(harness: BotHarness) -> None:
    """After a restart with no data, the refusal is about the backend in use: no OpenAI, no billed tokens."""
    said = await harness.ask("!train", user="admin")
    assert said.startswith("I did not start training: the dataset has problems.\n**Check failed: 1 error** · 0 examples")
    assert "The local model needs at least 1" in said
    assert "OpenAI" not in said and "billed" not in said and "tokens" not in said


async def test_dpo_on_the_local_backend_is_refused_before_anything_is_added(harness: BotHarness) -> None:
    said = await harness.ask("!train method=dpo What is up? => The sky.", user="admin")
    assert said.startswith("The local model does not train with `dpo`: it answers with corrections as soon as")
    assert not space_of(harness).datasets.exists() and jobs.list_jobs(space_of(harness), 0) == []


async def test_test_with_deeply_nested_json_typed_or_attached(harness: BotHarness) -> None:
    typed = await harness.ask("!test " + "[" * 1900, user="admin")
    assert typed == 'The JSON is nested too deeply to be test cases: give {"input", "expected"} objects.'
    deep = b"[" * 100_000 + b"]" * 100_000
    attached = await harness.ask("!test", user="admin", attachments=[("cases.json", deep, "application/json")])
    assert attached == typed
    lines = b'{"input": "a", "expected": "b"}\n' + b"[" * 5000 + b"]" * 5000 + b"\n"
    attached = await harness.ask("!test", user="admin", attachments=[("cases.jsonl", lines, None)])
    assert attached == "Line 2: " + typed


async def test_symlinks_skipped_in_a_folder_are_reported(harness: BotHarness, started: list[str],
                                                         tmp_path: Path) -> None:
    space = space_of(harness).ensure()
    folder = space.data / "incoming"
    folder.mkdir()
    (folder / "faq.txt").write_text("Where is the office? => Upstairs.\n")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret => do not read\n")
    (folder / "link.txt").symlink_to(outside)
    said = await harness.ask("!train incoming", user="admin")
    assert "Skipped 1 link leading out of this server's data folder or to hidden files." in said
    said = await harness.ask("!select_dataset incoming", user="admin")
    assert said.endswith("Skipped 1 link leading out of this server's data folder or to hidden files.")
    assert "do not read" not in json.dumps(dataset_records(space))


# ---------------------------------------------------------------------------- !export data
async def test_export_data(harness: BotHarness) -> None:
    from dataset.check import check_lines

    h = harness
    assert await h.ask("!export data", user="admin") == (
        "There is nothing to export yet: this server's dataset has no examples. "
        "`!train` adds some (attach a file or write `question => answer`).")
    assert await h.ask("!export everything", user="admin") == (
        "I can export `data` (the compiled dataset) or `model` (the current model): `!export data`.")
    await train_local(h, "\n".join(f"{q} => {a}" for q, a in FAQ[:4]))
    answer = (await h.send(FAQ[0][0]))[0]
    await h.ask("!correct Ask the front desk.", reply_to=answer.id, user="admin")
    [msg] = await h.send("!export data", user="admin")
    assert msg.content == ("Exported 4 training lines (OpenAI chat format) and 1 DPO pair, with who gave each "
                           "example in `provenance.jsonl`. Files attached.")
    files = {a.filename: a.data for a in msg.attachments}
    assert sorted(files) == ["dpo.jsonl", "provenance.jsonl", "train.jsonl"]
    assert check_lines(files["train.jsonl"].splitlines(), min_examples=1).ok
    lines = [json.loads(x) for x in files["train.jsonl"].splitlines()]
    assert {"role": "assistant", "content": "Ask the front desk."} in [m for line in lines for m in line["messages"]]
    prov = [json.loads(x) for x in files["provenance.jsonl"].splitlines()]
    assert [p["what"] for p in prov].count("example") == 4 and prov[-1]["what"] == "correction"
    assert all(p["added_by"].startswith("admin (") for p in prov if p["what"] == "example")


async def test_export_model_on_the_local_backend(harness: BotHarness) -> None:
    """`!help` promises `!export model`: the local backend exports its pairs and vectors, with a README."""
    import io
    import zipfile

    h = harness
    assert await h.ask("!export model", user="admin") == (
        "There is no trained model to export yet. `!train` trains one.")
    await train_local(h, "\n".join(f"{q} => {a}" for q, a in FAQ[:4]))
    [msg] = await h.send("!export model", user="admin")
    assert msg.content.startswith("Model `local-v1` exported as `archives/local-v1-local.zip` (")
    (att,) = msg.attachments
    with zipfile.ZipFile(io.BytesIO(att.data)) as zf:
        names = set(zf.namelist())
        pairs = json.loads(zf.read("local-v1/answers.json"))
        readme = zf.read("local-v1/README.md").decode()
    assert {"local-v1/answers.json", "local-v1/meta.json", "local-v1/README.md"} <= names
    assert [p["prompt"] for p in pairs] == [q for q, _ in FAQ[:4]]
    assert "local-v1/embeddings.npy" in names and "embedding.json" in readme


async def test_the_domain_leaves_commands_to_the_cogs_which_use_the_servers_prefix(
        sandbox: Sandbox, settings: Settings, error_log: Any) -> None:
    async with running_bot(sandbox, settings, prefix="?") as h:
        said = await h.ask("?export data", user="admin")
        assert said == ("There is nothing to export yet: this server's dataset has no examples. `?train` adds some "
                        "(attach a file or write `question => answer`).")
        said = await h.ask("?approve 123456", user="admin")
        assert said == ("There is no correction `C-123456` in this server. Nothing was changed. "
                        "`?review` lists the pending ones.")
        said = await h.ask("?getfile .", user="admin")
        assert said == "`.` is a folder. `?archive .` zips it."
