"""Two bot processes (``python bot.py``), each an AutoShardedBot over one shard of two, against one sandbox that
holds two servers (one on each shard) and one real PostgreSQL: each answers only its own server, exactly one
watches a training job, and when that one is killed (SIGKILL) the other takes the job over and finishes it."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from records.db import Database
from sandbox.server import Message, Sandbox, shard_of
from storage import GuildSpace
from tests.fakes.openai_server import FakeOpenAI
from tests.harness import ROOT, subprocess_env
from training import jobs

KEY = "sk-test-shards-0123456789"
PAIRS = "\n".join(f"What is fact number {i}? => Fact {i} is that the office plant is called Fern {i}."
                  for i in range(12))


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(KEY, steps_per_advance=8) as server:
        yield server


def start_process(sb: Sandbox, fake: FakeOpenAI, pg_url: str, tmp_path: Path, shard: int) -> subprocess.Popen[str]:
    env = subprocess_env(tmp_path, DISCORD_TOKEN=sb.bot_token, DISCORD_API_BASE=sb.api_base, MODE="prod",
                         DATABASE_URL=pg_url, SHARD_COUNT="2", SHARD_IDS=str(shard), MODEL_BACKEND="openai",
                         OPENAI_API_KEY=KEY, OPENAI_BASE_URL=fake.base_url, JOB_POLL_SECONDS="0.2",
                         JOB_LEASE_SECONDS="2", EVAL_GATE="off")
    log = open(tmp_path / f"shard{shard}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "bot.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            text=True)


async def reply_in(sb: Sandbox, guild_id: int, content: str, *, user: str = "member",
                   timeout: float = 30.0) -> list[Message]:
    """Post in the server's #general; the bot's messages after it, once they stop coming."""
    msg = await sb.post_message(user, content, guild=guild_id)
    deadline = time.monotonic() + timeout
    while not sb.bot_messages(msg.channel_id, after=msg.id):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer to {content!r} in server {guild_id}")
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # a second process answering too would have done so by now
    return sb.bot_messages(msg.channel_id, after=msg.id)


async def until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.2)


async def test_two_processes_share_the_servers_and_take_over_a_job(pg_url: str, fake: FakeOpenAI,
                                                                   tmp_path: Path) -> None:
    sb = Sandbox()
    second = sb.add_guild("Second")
    await sb.start()
    first = sb.guild_id
    assert shard_of(first, 2) != shard_of(second.id, 2)
    procs = {shard: start_process(sb, fake, pg_url, tmp_path, shard) for shard in (0, 1)}
    db = Database.open(pg_url, tmp_path / "data")
    try:
        await until(lambda: sorted(s.shard for s in sb.gateway.sessions.values()) == [(0, 2), (1, 2)], 60,
                    "the two processes did not both connect")
        await asyncio.sleep(2)  # READY, then their servers' GUILD_CREATE and the cogs' start
        # Each server is answered once, by the process of its shard.
        for guild in (first, second.id):
            said = await reply_in(sb, guild, "!hi", timeout=60)
            assert len(said) == 1 and said[0].content.startswith("Hi member!"), [m.content for m in said]

        # A training in the first server: watched by its shard's process only.
        owner = procs[shard_of(first, 2)]
        other = procs[shard_of(second.id, 2)]
        said = await reply_in(sb, first, f"!train {PAIRS}", user="admin")
        started = next(m for m in said if m.content.startswith("Started training job"))
        job_id = re.search(r"Started training job `([^`]+)`", started.content).group(1)  # type: ignore[union-attr]
        space = GuildSpace(first, tmp_path / "data", tmp_path / "corrections", db)
        await until(lambda: jobs.get_job(space, job_id).watcher, 10, "nobody watches the job")
        host = socket.gethostname()
        assert jobs.get_job(space, job_id).watcher.startswith(f"{host}:{owner.pid}:")
        await asyncio.sleep(1.5)  # several polls: the other process never takes a job that is watched
        assert jobs.get_job(space, job_id).watcher.startswith(f"{host}:{owner.pid}:")

        # Its watcher dies; the job ends while nobody watches; the other process takes it over and says so.
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        (remote,) = fake.jobs
        fake.finish(remote)
        t = time.monotonic()
        channel = sb.guilds[first].text_channel.id

        def announced() -> bool:
            return any(m.content.startswith(f"Training job `{job_id}` succeeded")
                       for m in sb.bot_messages(channel, after=started.id))

        await until(announced, 60, "the job was not taken over within a minute")
        taken_over_after = time.monotonic() - t
        job = jobs.get_job(space, job_id)
        assert job.status == "succeeded" and jobs.current_model(space, "openai") == job.model
        assert taken_over_after < 60
        # The status message the dead process posted was edited by the new watcher.
        status = [m for m in sb.bot_messages(channel) if m.content.startswith(f"Training job `{job_id}` (")]
        assert len(status) == 1 and "succeeded" in status[0].content
        assert other.poll() is None, "the surviving process keeps running"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        db.close()
        await sb.close()
    survivor_log = (tmp_path / f"shard{shard_of(second.id, 2)}.log").read_text()
    assert " ERROR " not in survivor_log, survivor_log[-3000:]
