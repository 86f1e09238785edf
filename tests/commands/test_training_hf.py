"""MODEL_BACKEND=hf end to end through the sandbox: the real bot, real trainer children, the answer worker.

The base is the tiny Llama built once per session (``tiny_base``, loaded by path). One flow covers
``!train`` with a file (status edited in place with a falling loss, PNG at the end), trained answers
word for word, ``!correct`` + ``!train method=dpo``, ``!model previous``, ``!test``, ``!export model`` and the answer queue;
another runs the bot as a process with ``HF_LAUNCHER=accelerate`` (one CPU process), SIGKILLs it
mid-training, starts it again (the job goes on from its checkpoint) and cancels it with ``!cancel``.
(That a resumed job then finishes is the same code path as any job finishing; tests/training/test_hf.py checks
a trainer that keeps dying.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re
import signal
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from config import Settings
from errors import BackendError, Busy
from sandbox.server import Message, Sandbox
from tests.commands.test_training import ask_answer
from tests.fakes.samples import FAQ, chat_line
from tests.harness import (
    ROOT,
    BotHarness,
    announcement,
    confirmed,
    hf_env,
    start_bot,
    start_job,
    stop_bot,
    subprocess_env,
    wait_bot,
)
from training import hf_store

TAUGHT = FAQ[:6]
TAUGHT_JSONL = "".join(json.dumps(chat_line(q, a)) + "\n" for q, a in TAUGHT).encode()
LOSS = re.compile(r"Training loss: ([0-9.]+) \(step (\d+), smoothed ([0-9.]+)\)")


def hf_settings(settings: Settings, base: Path, **extra: str) -> Settings:
    env = Settings.from_env(hf_env(base, **extra) | {"DATA_DIR": str(settings.data_dir),
                                                     "CORRECTIONS_DIR": str(settings.corrections_dir)})
    # The evaluation gate is tested on its own (tests/commands/test_eval_gate.py); here DPO on a
    # 450k-parameter model moves other answers too, and the gate would rightly keep it a candidate.
    return dataclasses.replace(settings, model_backend="hf", eval_gate=False, **{f.name: getattr(env, f.name)
                                                                for f in dataclasses.fields(env)
                                                                if f.name.startswith("hf_")})


@pytest.fixture
async def hf_harness(sandbox: Sandbox, settings: Settings, tiny_base: Path, error_log) -> AsyncIterator[BotHarness]:
    bot = await start_bot(sandbox, hf_settings(settings, tiny_base))
    try:
        yield BotHarness(sandbox, bot)
    finally:
        await stop_bot(bot)


async def follow(status: Message, until: asyncio.Future) -> list[str]:
    """Every distinct text the status message showed while a job ran."""
    seen: list[str] = []
    while not until.done():
        if not seen or seen[-1] != status.content:
            seen.append(status.content)
        await asyncio.sleep(0.02)
    seen.append(status.content)
    return seen


def cases(pairs: list[tuple[str, str]]) -> str:
    return json.dumps([{"input": q, "expected": a} for q, a in pairs])


async def test_train_answer_correct_dpo_previous_test_export(hf_harness: BotHarness) -> None:
    h, sb = hf_harness, hf_harness.sandbox
    job_id, status = await start_job(h, attachments=[("faq.jsonl", TAUGHT_JSONL, "application/json")])
    assert job_id.startswith("hf-")
    done_fut = asyncio.ensure_future(announcement(sb, job_id, timeout=90))
    shown = await follow(status, done_fut)
    done = await done_fut

    # The status message, edited in place: step/total, loss falling, smoothed loss, speed, ETA, device.
    assert done.content.startswith(f"Training job `{job_id}` succeeded. I now answer with `hf-v1`. Loss curve")
    assert done.attachments[0].filename == f"loss-{job_id}.png" and done.attachments[0].data[:4] == b"\x89PNG"
    running = [t for t in shown if "**running**" in t and LOSS.search(t)]
    assert running, shown
    assert "ETA" in running[-1] and "examples/s on CPU (1 threads)" in running[-1]
    first, last = LOSS.search(running[0]), LOSS.search(status.content)
    assert int(last.group(2)) == 80 and int(first.group(2)) < 80
    assert float(last.group(3)) < float(first.group(3)) - 0.3, (first.group(0), last.group(0))
    assert "**succeeded**" in status.content and "[##############] 80/80" in status.content
    assert "Model: `hf-v1`" in status.content and "epochs" not in status.content

    # Trained questions come back word for word (a chat answer, and !test without history).
    reply = await ask_answer(h, TAUGHT[0][0])
    assert reply.content == TAUGHT[0][1]
    tested = await h.ask(f"!test {cases(TAUGHT)}", user="admin", timeout=60)
    assert "**Accuracy: 100%** (6/6 correct)" in tested
    assert "Answers scored by meaning: an answer is right when it holds every number and name" in tested

    # A correction, then DPO from it: the corrected answer changes.
    new = "The shop opens at 10 am on Mondays."
    thanks = await h.ask(f"!correct {new}", reply_to=reply.id)
    assert thanks.startswith("Thanks — correction") and "awaits review" in thanks
    assert (await h.ask(f"!approve {thanks.split('`')[1]}", user="admin")).startswith("Approved `C-")
    dpo_id, _ = await start_job(h, "!train method=dpo")
    assert (await announcement(sb, dpo_id, timeout=90)).content.startswith(
        f"Training job `{dpo_id}` succeeded. I now answer with `hf-v2`.")
    assert "**Accuracy: 100%** (1/1 correct)" in await h.ask(f"!test {cases([(TAUGHT[0][0], new)])}",
                                                             user="admin", timeout=60)

    # Back to hf-v1: the adapter is swapped, the old answer is back.
    assert await h.ask("!model previous", user="admin") == "Switched to model `hf-v1`."
    assert "**Accuracy: 100%**" in await h.ask(f"!test {cases(TAUGHT[:1])}", user="admin", timeout=60)

    # Export the current adapter: safetensors + config + a README on serving it.
    msg = (await h.send("!export model", user="admin", timeout=30))[0]
    assert msg.content.startswith("Model `hf-v1` exported as `archives/hf-v1-adapter.zip`")
    with zipfile.ZipFile(io.BytesIO(msg.attachments[0].data)) as zf:
        assert "hf-v1/adapter_model.safetensors" in zf.namelist()
        readme = zf.read("hf-v1/README.md").decode()
    assert "vllm serve" in readme and "--enable-lora" in readme and "ADAPTER ./hf-v1" in readme
    # The answer worker (loaded by now): a full queue says busy, a slow answer times out, the worker lives on.
    backend, space = h.bot.model.backend, h.bot.model.space(h.guild_id)
    backend.generator.queue = 1
    results = await asyncio.gather(*(backend.answer(space, "hf-v1", f"question {i}", ()) for i in range(3)),
                                   return_exceptions=True)
    assert sum(isinstance(r, Busy) for r in results) == 2 and sum(isinstance(r, str) for r in results) == 1
    backend.generator.timeout = 0.0001
    with pytest.raises(BackendError, match="took longer than"):
        await backend.answer(space, "hf-v1", TAUGHT[1][0], ())
    backend.generator.timeout = 60
    assert await backend.answer(space, "hf-v1", TAUGHT[1][0], ()) == TAUGHT[1][1]

    help_text = "\n".join(m.content for m in await h.send("!help"))
    assert "**hf**" in help_text and "!export model" in help_text.replace("`", "")


async def poll_until(predicate, timeout: float) -> None:
    """Wait for a condition outside the sandbox (a file lock), checking every 0.1 s."""
    for _ in range(int(timeout * 10)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


ACCELERATE_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: 'NO'
mixed_precision: 'no'
num_machines: 1
num_processes: 1
use_cpu: true
"""


async def start_bot_process(sandbox: Sandbox, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    count = sandbox.identify_count
    out = await asyncio.to_thread(open, log, "ab")
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "bot.py", cwd=ROOT, env=env,
                                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()
    for _ in range(600):
        if sandbox.identify_count > count:
            break
        if proc.returncode is not None:
            raise AssertionError((await asyncio.to_thread(log.read_text))[-3000:])
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # GUILD_CREATE handled, on_ready
    return proc


async def test_accelerate_sigkill_restart_resumes_then_cancel(sandbox: Sandbox, tmp_path: Path,
                                                            tiny_base: Path) -> None:
    config = tmp_path / "accelerate.yaml"
    config.write_text(ACCELERATE_CONFIG)
    env = subprocess_env(tmp_path, MODEL_BACKEND="hf", MODE="prod", DISCORD_TOKEN=sandbox.bot_token,
                         DISCORD_API_BASE=sandbox.base_url, JOB_POLL_SECONDS="0.2",
                         **hf_env(tiny_base, HF_EPOCHS="100", HF_LAUNCHER="accelerate",
                                  HF_ACCELERATE_CONFIG=str(config)))
    h = BotHarness(sandbox, None)
    proc = await start_bot_process(sandbox, env, tmp_path / "bot.log")
    try:
        job_id, status = await start_job(h, attachments=[("faq.jsonl", TAUGHT_JSONL, "application/json")])
        await sandbox.wait_for(lambda: (m := LOSS.search(status.content)) and int(m.group(2)) >= 20, 90)
        proc.send_signal(signal.SIGKILL)  # no clean stop: the trainer notices and checkpoints by itself
        await proc.wait()
        models = tmp_path / "data" / str(sandbox.guild_id) / "models"
        run = hf_store.run_dir(models, job_id)
        await poll_until(lambda: not hf_store.lock_held(run), 30)
        ckpt = hf_store.latest_checkpoint(run)
        assert ckpt is not None, (run / "trainer.log").read_text()[-2000:]
        saved = int(ckpt.name.split("-")[1])

        proc = await start_bot_process(sandbox, env, tmp_path / "bot.log")  # the watcher resumes the job
        events_file = run / "events.jsonl"

        def steps_after_resume() -> int:
            events = [json.loads(line) for line in events_file.read_text().splitlines()]
            starts = [i for i, e in enumerate(events) if e["t"] == "start"]
            return sum(e["t"] == "step" for e in events[starts[-1]:]) if len(starts) == 2 else 0

        await poll_until(lambda: steps_after_resume() >= 5, 90)
        events = [json.loads(line) for line in events_file.read_text().splitlines()]
        assert [e["resumed_from"] for e in events if e["t"] == "start"] == [None, saved]
        first_step_after = next(e["step"] for e in events[[e["t"] for e in events].index("start", 2):]
                                if e["t"] == "step")
        assert first_step_after == saved + 1  # it went on from the checkpoint, not from the start

        await sandbox.wait_for(lambda: f"Resumed from its checkpoint at step {saved}" in status.content, 20)

        # !cancel mid-job (the resumed one): stopped within seconds, no version, no checkpoint left.
        dialog, *_ = await confirmed(h, f"!cancel {job_id}", user="admin", timeout=20)
        reply = await wait_bot(sandbox, lambda m: m.content.startswith("Cancelling training job"), after=dialog.id,
                               timeout=20)
        assert "it is now cancelled" in reply.content
        assert not [p.name for p in models.iterdir() if p.name.startswith("hf-v")]
        assert not (run / "checkpoints").exists()
        assert not list(models.glob(".tmp-*"))
        assert not hf_store.lock_held(run)
        done = await announcement(sandbox, job_id, timeout=20)
        assert done.content.startswith(f"Training job `{job_id}` was cancelled by admin")
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
