"""sandbox/gateway.py: the gateway's own moves, as Discord makes them, in the middle of a training job.

Op 7 (reconnect) and op 9 (invalid session, resumable) make the bot RESUME: every event it missed is replayed,
so a question asked while it reconnects is answered. Op 9 not resumable makes it IDENTIFY again (what happened
meanwhile is gone, as on Discord). Through all three the job's status message keeps being edited, once, in
place, and every phase shows.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest

from config import Settings
from sandbox.server import Message, Sandbox
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.samples import FAQ, chat_line
from tests.harness import BotHarness, announcement, start_bot, start_job, stop_bot

KEY = "test"
FAQ_JSONL = "".join(json.dumps(chat_line(q, a)) + "\n" for q, a in FAQ).encode()


async def identify_at_once(shard_id: int | None, *, initial: bool = False) -> None:
    """discord.py waits 5 s before it identifies again (Client.before_identify_hook, politeness towards
    Discord's identify limit); the sandbox has no such limit, and the tests need not wait."""


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(KEY, steps_per_advance=8) as server:
        yield server


async def test_reconnects_and_invalid_sessions_lose_no_status_edit_and_no_answer(
        sandbox: Sandbox, settings: Settings, fake: FakeOpenAI, error_log: Any) -> None:
    sb = sandbox
    bot = await start_bot(sb, dataclasses.replace(settings, model_backend="openai", openai_api_key=KEY,
                                                  openai_base_url=fake.base_url))
    bot.before_identify_hook = identify_at_once
    try:
        h = BotHarness(sb, bot)
        job_id, status = await start_job(h, "!train", attachments=[("faq.jsonl", FAQ_JSONL, "application/json")])
        shown: list[str] = []  # every version of the status message, in order

        def on_message(event: str, msg: Message) -> None:
            if msg.id == status.id and event == "update":
                shown.append(msg.content)

        sb.add_listener(on_message)

        async def step() -> list[str]:
            """Advance the job one phase and wait until its status message shows it; what it shows."""
            fake.advance(job_id)
            job = fake.jobs[job_id]
            want = [f"**{job.status}**"] + ([f"] {job.step}/{job.total_steps}"] if job.step else [])
            await sb.wait_for(lambda: all(w in status.content for w in want), timeout=10)
            return want

        thread = await sb.create_thread("member", "Training talk")
        seen = [await step()]
        for disruption in ("op 7", "op 9 resumable", "op 9"):
            identified, resumed = sb.identify_count, sb.resume_count
            if disruption == "op 7":
                assert await sb.request_reconnect() == 1
            else:
                assert await sb.invalidate_session(resumable=disruption == "op 9 resumable") == 1
            if disruption != "op 9":
                # Asked at once, before the bot has read the op: it reaches the bot only through the replay.
                question = await sb.post_message("member", f"!hi after {disruption}")
            seen.append(await step())  # the watcher's edits go on while the bot reconnects
            if disruption == "op 9":
                # Its session is gone: what is said before it identifies again is not sent to it (as on Discord).
                await sb.wait_for(lambda identified=identified: sb.identify_count > identified)
                question = await sb.post_message("member", f"!hi after {disruption}")
            said = await sb.wait_for_bot_message(question.channel_id, after=question.id, timeout=15)
            assert said[0].content.startswith("Hi member!"), disruption
            if disruption == "op 9":
                assert sb.identify_count == identified + 1 and sb.resume_count == resumed
            else:
                assert sb.resume_count == resumed + 1 and sb.identify_count == identified
        # Identified anew, the bot learnt its servers again from GUILD_CREATE, their active threads included.
        assert isinstance(bot.get_channel(thread.id), discord.Thread)
        fake.finish(job_id)
        done = await announcement(sb, job_id)
        assert done.content.startswith(f"Training job `{job_id}` succeeded")
        assert "**succeeded**" in status.content
        # Every phase was shown, in order, in the one status message; one announcement, one answer per question.
        order = [next(i for i, text in enumerate(shown) if all(w in text for w in want)) for want in seen]
        assert order == sorted(order)
        statuses = [m for m in sb.bot_messages() if m.content.startswith(f"Training job `{job_id}` (")]
        assert statuses == [status]
        assert sum(m.content.startswith(f"Training job `{job_id}` succeeded") for m in sb.bot_messages()) == 1
        assert sum(m.content.startswith("Hi member!") for m in sb.bot_messages()) == 3
    finally:
        await stop_bot(bot)


async def test_a_resume_older_than_the_kept_events_is_refused(sandbox: Sandbox, harness: BotHarness) -> None:
    """Discord keeps a session's recent events only: a RESUME from before them gets op 9 (not resumable),
    and the bot identifies again."""
    sb = sandbox
    harness.bot.before_identify_hook = identify_at_once
    (session,) = sb.sessions.values()
    identified = sb.identify_count
    await sb.drop_bot_connections()
    for n in range(1001):  # more than the sandbox keeps for a session while it is away
        await sb.dispatch("MESSAGE_DELETE", {"id": str(n + 1), "channel_id": str(sb.text_channel.id),
                                             "guild_id": str(sb.guild_id)})
    await sb.wait_for(lambda: sb.identify_count > identified, timeout=15)
    assert session.id not in sb.sessions
    assert "Hi member!" in await harness.ask("!hi")
