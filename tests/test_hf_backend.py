"""The hf backend without Discord: the trainer child, versions, resume, cancel, the answer worker, export.

The base is the tiny Llama built once per session (``tiny_base``); every trainer and the answer worker
are real child processes loading it by path through the product's loading code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import zipfile
from pathlib import Path

import pytest
from conftest import hf_env

from config import Settings
from errors import BackendError, Busy, ConfigError
from storage import GuildSpace
from tests.fakes import FAQ, compiled, dpo_line
from training import hf_store, jobs
from training.backend import TERMINAL
from training.hf import HFBackend

TAUGHT = FAQ[:6]


def hf_settings(settings: Settings, base: Path, **extra: str) -> Settings:
    env = Settings.from_env(hf_env(base, **extra) | {"DATA_DIR": str(settings.data_dir),
                                                     "CORRECTIONS_DIR": str(settings.corrections_dir)})
    return dataclasses.replace(settings, **{f.name: getattr(env, f.name) for f in dataclasses.fields(env)
                                            if f.name.startswith("hf_")}, model_backend="hf")


async def run_to_end(backend: HFBackend, space: GuildSpace, job: dict, timeout: float = 90) -> dict:
    """Poll like the watcher does, merging updates into the record, until the job ends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while job["status"] not in TERMINAL:
        assert loop.time() < deadline, f"job still {job['status']}: {job}"
        await asyncio.sleep(0.2)
        merge(job, await backend.poll(space, job))
    return job


def merge(job: dict, upd) -> None:
    job["status"] = upd.status
    job["step"] = upd.step if upd.step is not None else job.get("step")
    job["total_steps"] = upd.total_steps or job.get("total_steps")
    job["losses"] = jobs.merge_losses(job.get("losses") or [], upd.losses)
    job["events"] = (job.get("events") or []) + upd.events
    job["model"] = upd.fine_tuned_model or job.get("model")
    job["error"] = upd.error or job.get("error")
    job.update(upd.extra)


async def wait_for_step(backend: HFBackend, space: GuildSpace, job: dict, step: int, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (job.get("step") or 0) < step:
        assert loop.time() < deadline and job["status"] not in TERMINAL, job
        await asyncio.sleep(0.1)
        merge(job, await backend.poll(space, job))


@pytest.fixture
def space(settings: Settings) -> GuildSpace:
    return GuildSpace(42, settings.data_dir, settings.corrections_dir).ensure()


async def test_supervised_training_versions_answers_dpo_and_export(settings: Settings, tiny_base: Path,
                                                                   space: GuildSpace) -> None:
    backend = HFBackend(hf_settings(settings, tiny_base))
    await backend.start()
    try:
        job = await backend.start_job(space, compiled(TAUGHT), method="supervised", suffix="t")
        job = await run_to_end(backend, space, job)
        assert job["status"] == "succeeded", job
        assert job["model"] == "hf-v1" and job["step"] == job["total_steps"] == 80
        losses = [v for _, v in job["losses"]]
        assert len(losses) == 80 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # it learnt
        assert job["device"].startswith("CPU") and job["examples_per_s"] > 0
        assert backend.list_models(space, []) == ["hf-v1"]
        assert not (hf_store.run_dir(space.models, job["id"]) / "checkpoints").exists()

        for question, answer in TAUGHT:  # word for word, from base + adapter in the worker
            assert await backend.answer(space, "hf-v1", question, ()) == answer
        untrained = await backend.answer(space, None, TAUGHT[0][0], ())  # the bare base: no adapter
        assert untrained != TAUGHT[0][1]

        # A correction as a preference pair: DPO continues hf-v1 into hf-v2, which says the new answer.
        jobs.set_current_model(space, "hf", "hf-v1")
        question, old = TAUGHT[0]
        new = "The shop opens at 10 am on Mondays."
        pref = compiled(TAUGHT, preference=[dpo_line(question, new, old)])
        job = await run_to_end(backend, space, await backend.start_job(space, pref, method="dpo", suffix="t"))
        assert job["status"] == "succeeded" and job["model"] == "hf-v2", job
        assert job["parent_model"] == "hf-v1"
        assert await backend.answer(space, "hf-v2", question, ()) == new
        assert await backend.answer(space, "hf-v2", TAUGHT[1][0], ()) == TAUGHT[1][1]  # the rest stays
        assert await backend.answer(space, "hf-v1", question, ()) == old  # versions are kept as they were

        path = await backend.export(space, "hf-v2")
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            readme = zf.read("hf-v2/README.md").decode()
            meta = json.loads(zf.read("hf-v2/meta.json"))
        assert names == {"hf-v2/adapter_model.safetensors", "hf-v2/adapter_config.json", "hf-v2/meta.json",
                         "hf-v2/README.md"}
        assert "--enable-lora" in readme and "ADAPTER ./hf-v2" in readme and "PeftModel.from_pretrained" in readme
        assert meta["method"] == "dpo" and meta["parent"] == "hf-v1"
    finally:
        await backend.close()


async def test_cancel_mid_job_saves_nothing(settings: Settings, tiny_base: Path, space: GuildSpace) -> None:
    backend = HFBackend(hf_settings(settings, tiny_base, HF_EPOCHS="5000"))
    try:
        job = await backend.start_job(space, compiled(TAUGHT), method="supervised", suffix="t")
        await wait_for_step(backend, space, job, 5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        merge(job, await backend.cancel(space, job))
        assert job["status"] == "cancelled" and loop.time() - started < 10
        assert backend.list_models(space, []) == []
        assert not list(space.models.glob(".tmp-*"))
        assert not (hf_store.run_dir(space.models, job["id"]) / "checkpoints").exists()
    finally:
        await backend.close()


async def test_bot_restart_resumes_from_the_checkpoint(settings: Settings, tiny_base: Path,
                                                       space: GuildSpace) -> None:
    s = hf_settings(settings, tiny_base, HF_EPOCHS="150")
    first = HFBackend(s)
    job = await first.start_job(space, compiled(TAUGHT), method="supervised", suffix="t")
    await wait_for_step(first, space, job, 10)
    await first.close()  # the bot stops: the trainer checkpoints at its next step and exits
    run = hf_store.run_dir(space.models, job["id"])
    assert not hf_store.lock_held(run)
    ckpt = hf_store.latest_checkpoint(run)
    assert ckpt is not None
    saved_step = int(ckpt.name.split("-")[1])
    assert saved_step >= 10

    second = HFBackend(s)  # the bot again: the first poll finds no trainer and resumes it
    try:
        job = await run_to_end(second, space, job, timeout=120)
        assert job["status"] == "succeeded", job
        assert any(f"Resumed from step {saved_step}" in e for e in job["events"]), job["events"]
        assert job["attempts"] == 2 and job["step"] == job["total_steps"] == 300
        steps = [s for s, _ in job["losses"]]
        assert steps == sorted(set(steps)) and steps[-1] == 300
    finally:
        await second.close()


async def test_a_trainer_that_keeps_dying_fails_with_the_reason(settings: Settings, tiny_base: Path,
                                                                space: GuildSpace) -> None:
    backend = HFBackend(hf_settings(settings, tiny_base))
    try:
        job = await backend.start_job(space, compiled(TAUGHT), method="supervised", suffix="t")
        job["attempts"] = 3  # as if it had been resumed twice already
        for _ in range(200):
            proc = backend._procs.get(job["id"])
            if proc is not None:
                proc.kill()  # out of memory, say
                proc.wait()
                break
        job = await run_to_end(backend, space, job)
        assert job["status"] == "failed"
        assert "stopped 3 times" in job["error"] and "killed by signal 9" in job["error"], job["error"]
    finally:
        await backend.close()


async def test_answer_queue_busy_and_timeout(settings: Settings, tiny_base: Path, space: GuildSpace) -> None:
    s = hf_settings(settings, tiny_base, HF_ANSWER_QUEUE="1")
    backend = HFBackend(s)
    try:
        results = await asyncio.gather(*(backend.answer(space, None, f"question {i}", ()) for i in range(3)),
                                       return_exceptions=True)
        assert sum(isinstance(r, Busy) for r in results) == 2 and sum(isinstance(r, str) for r in results) == 1
        backend.generator.timeout = 0.0001  # the model is loaded: now only generation counts
        with pytest.raises(BackendError, match="took longer than"):
            await backend.answer(space, None, "one more", ())
        backend.generator.timeout = 60
        assert isinstance(await backend.answer(space, None, "and again", ()), str)  # the worker is still fine
    finally:
        await backend.close()


@pytest.mark.parametrize(("name", "value"), [
    ("HF_LORA_RANK", "0"), ("HF_EPOCHS", "many"), ("HF_LEARNING_RATE", "0"), ("HF_MAX_SEQ_LENGTH", "8"),
    ("HF_LAUNCHER", "slurm"), ("HF_BASE_MODEL", "/no/such/model.gguf"), ("HF_BASE_MODEL", "../not a model"),
    ("HF_DEVICE", "tpu"), ("HF_ACCELERATE_CONFIG", "/no/such.yaml"), ("HF_ANSWER_QUEUE", "0"),
])
def test_bad_hf_settings_name_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({"DATA_DIR": str(tmp_path / "d"), "CORRECTIONS_DIR": str(tmp_path / "c"), name: value})
