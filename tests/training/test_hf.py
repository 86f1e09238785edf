"""The hf backend without Discord: what the end-to-end tests (tests/commands/test_training_hf.py) cannot reach cheaply.

A trainer that keeps dying fails with its reason; bad HF_* settings. The base is the tiny Llama built once per session (``tiny_base``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from config import Settings
from errors import ConfigError
from storage import GuildSpace
from tests.fakes.samples import FAQ, compiled
from tests.harness import hf_env
from training.backend import TERMINAL, Job
from training.hf import HFBackend
from training.lifecycle import apply_update

TAUGHT = FAQ[:6]


def hf_settings(settings: Settings, base: Path, **extra: str) -> Settings:
    env = Settings.from_env(hf_env(base, **extra) | {"DATA_DIR": str(settings.data_dir),
                                                     "CORRECTIONS_DIR": str(settings.corrections_dir)})
    return dataclasses.replace(settings, **{f.name: getattr(env, f.name) for f in dataclasses.fields(env)
                                            if f.name.startswith("hf_")}, model_backend="hf")


async def run_to_end(backend: HFBackend, space: GuildSpace, job: Job, timeout: float = 90) -> Job:
    """Poll like the watcher does, merging updates into the job, until the job ends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while job.status not in TERMINAL:
        assert loop.time() < deadline, f"job still {job.status}: {job}"
        await asyncio.sleep(0.2)
        apply_update(job, await backend.poll(space, job))
    return job


async def wait_for_step(backend: HFBackend, space: GuildSpace, job: Job, step: int, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while job.step < step:
        assert loop.time() < deadline and job.status not in TERMINAL, job
        await asyncio.sleep(0.1)
        apply_update(job, await backend.poll(space, job))


@pytest.fixture
def space(settings: Settings) -> GuildSpace:
    return GuildSpace(42, settings.data_dir, settings.corrections_dir).ensure()


async def test_a_trainer_that_keeps_dying_fails_with_the_reason(settings: Settings, tiny_base: Path,
                                                                space: GuildSpace) -> None:
    backend = HFBackend(hf_settings(settings, tiny_base))
    try:
        job = await backend.start_job(space, compiled(TAUGHT), method="supervised", suffix="t")
        job.extra["attempts"] = 3  # as if it had been resumed twice already
        for _ in range(200):
            proc = backend._procs.get(job.id)
            if proc is not None:
                proc.kill()  # out of memory, say
                proc.wait()
                break
        job = await run_to_end(backend, space, job)
        assert job.status == "failed"
        assert job.error and "stopped 3 times" in job.error and "killed by signal 9" in job.error, job.error
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
