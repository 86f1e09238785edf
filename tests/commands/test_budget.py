"""Budgets on paid calls end to end: the real bot in the sandbox against the fake OpenAI server.

A member over PAID_CALLS_PER_USER_PER_DAY gets one line with the reset time and no paid call is made
(answers, voice message transcriptions, spoken answers); BUDGET_EXEMPT_ROLE and admins are never
limited; the local model is never limited.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from sandbox.server import EVERYONE_PERMISSIONS, Role, Sandbox
from tests.commands.records_db import rows
from tests.fakes import audio_samples as samples
from tests.fakes.openai_server import FakeOpenAI
from tests.harness import BotHarness, space_of, start_bot, stop_bot
from training import budget

OVER = re.compile(r"^You've used your (\d+) paid calls for today \(OpenAI answers, transcriptions and spoken "
                  r"answers\); they reset <t:(\d+):R>\.$")
BASE_ANSWER = "(base model "  # how the fake answers with the untuned base model


def add_sponsor(sb: Sandbox) -> None:
    """A "Sponsors" role (no extra permissions) and a member "sponsor" who has it; before the bot starts."""
    role = Role(sb.ids.next(), "Sponsors", EVERYONE_PERMISSIONS, 1)
    sb.roles[role.id] = role
    sb.add_user("sponsor", roles=[role.id])


@pytest.fixture
async def paid_bot(sandbox: Sandbox, settings: Settings, error_log: Any,
                   worker_tmpdir: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await paid_bot(**settings_changes)``: the bot with OpenAI answers and transcription against the fake
    server, a limit of 3 paid calls and BUDGET_EXEMPT_ROLE=Sponsors; returns (harness, fake)."""
    add_sponsor(sandbox)
    started: list[Any] = []
    async with FakeOpenAI("test") as fake:
        async def start(**changes: Any) -> tuple[BotHarness, FakeOpenAI]:
            chosen: dict[str, Any] = {
                "model_backend": "openai", "speech_backend": "openai", "openai_api_key": "test",
                "openai_base_url": fake.base_url, "paid_calls_per_user_per_day": 3, "budget_exempt_role": "Sponsors"}
            bot = await start_bot(sandbox, dataclasses.replace(settings, **{**chosen, **changes}))
            started.append(bot)
            return BotHarness(sandbox, bot), fake

        start.sandbox = sandbox  # type: ignore[attr-defined]
        try:
            yield start
        finally:
            for bot in started:
                await stop_bot(bot)


def assert_over_budget(text: str, limit: int, before: float) -> None:
    """``text`` is the over-budget line, naming the limit and the next UTC midnight as a Discord timestamp."""
    found = OVER.match(text)
    assert found, text
    assert int(found.group(1)) == limit
    assert int(found.group(2)) in {budget.next_reset(before), budget.next_reset(time.time())}


async def test_a_member_over_the_limit_is_told_when_it_resets_and_nothing_is_sent(
        paid_bot: Callable[..., Any], tmp_path: Path) -> None:
    h, fake = await paid_bot()
    sb = h.sandbox
    ogg = samples.speak("When does the shop open", tmp_path).read_bytes()  # any speech: the fake hears its own
    # A voice message is two paid calls: its transcription, then the answer.
    voice = await sb.post_message("member", "", attachments=[("voice-message.ogg", ogg, "audio/ogg")],
                                  voice_message=True, duration_secs=1.0)
    reply = await sb.wait_for_bot_message(after=voice.id)
    assert reply[0].content.startswith(f"> {fake.transcript}\n{BASE_ANSWER}")
    assert (len(fake.transcription_requests), len(fake.chat_requests)) == (1, 1)
    assert (await h.ask("Where is the office?")).startswith(BASE_ANSWER)  # the third and last
    assert len(fake.chat_requests) == 2

    before = time.time()
    refused = await h.send("And on Sundays?")
    assert len(refused) == 1 and refused[0].reference_id == h.last_posted.id
    assert_over_budget(refused[0].content, 3, before)
    # Over the limit, a voice message is not even transcribed.
    voice = await sb.post_message("member", "", attachments=[("voice-message.ogg", ogg, "audio/ogg")],
                                  voice_message=True, duration_secs=1.0)
    again = await sb.wait_for_bot_message(after=voice.id)
    assert_over_budget(again[0].content, 3, before)
    await asyncio.sleep(0.3)
    assert (len(fake.transcription_requests), len(fake.chat_requests)) == (1, 2), "a paid call was made anyway"
    # The refused turns were not logged as answers nor kept as context.
    prompts = [p for p, in rows(space_of(h), "SELECT prompt FROM answers WHERE guild_id = ?")]
    assert "Where is the office?" in prompts and "And on Sundays?" not in prompts, prompts
    # The count is durable, per server, per member: ids and numbers only.
    usage = budget.usage(space_of(h), sb.member.id)
    assert usage.counts == {"transcription": 1, "chat": 2}
    # Someone else on the same server still has their allowance.
    other = sb.add_user("newcomer")
    assert (await h.ask("Where is the office?", user=other)).startswith(BASE_ANSWER)


async def test_the_exempt_role_and_admins_are_never_limited(paid_bot: Callable[..., Any]) -> None:
    h, fake = await paid_bot(paid_calls_per_user_per_day=1)
    for user in ("sponsor", "admin"):
        for n in range(3):
            assert (await h.ask(f"Question {n}?", user=user)).startswith(BASE_ANSWER), user
    assert len(fake.chat_requests) == 6
    assert rows(space_of(h), "SELECT * FROM budget WHERE guild_id = ?") == [], "exempt calls are not counted"
    assert (await h.ask("Question?")).startswith(BASE_ANSWER)
    assert OVER.match(await h.ask("Question again?")), "the member without the role is limited"
    assert len(fake.chat_requests) == 7


async def test_the_local_model_is_never_limited(sandbox: Sandbox, settings: Settings, error_log: Any) -> None:
    bot = await start_bot(sandbox, dataclasses.replace(settings, paid_calls_per_user_per_day=1))
    try:
        h = BotHarness(sandbox, bot)
        for n in range(3):
            text = await h.ask(f"When does the shop open, take {n}?")
            assert text.startswith("I haven't been trained on this server yet."), text
        assert rows(space_of(h), "SELECT * FROM budget WHERE guild_id = ?") == []
    finally:
        await stop_bot(bot)


async def test_spoken_answers_over_the_limit_are_not_spoken(
        paid_bot: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    """OpenAI speech is a paid call too: over the limit the text answer still comes (the local model is free),
    the bot stays silent in the voice channel and logs why at INFO."""
    sb = paid_bot.sandbox  # type: ignore[attr-defined]
    assert await sb.enable_voice(), sb.voice_unavailable
    h, fake = await paid_bot(model_backend="local", speech_backend="sphinx", tts_backend="openai",
                             paid_calls_per_user_per_day=1)
    vs = sb.voice_server
    await sb.set_voice("member", sb.voice_channel)
    assert (await h.ask("!join", timeout=30)).startswith("Joined ")
    caplog.set_level(logging.INFO, logger="commands.voice")
    assert (await h.ask("When does the shop open?")).startswith("I haven't been trained")
    await vs.wait_until(lambda: vs.speaking_stops >= 1, timeout=20)
    assert len(fake.speech_requests) == 1
    assert (await h.ask("And on Sundays?")).startswith("I haven't been trained"), "the text answer still comes"
    await asyncio.sleep(1.0)
    assert len(fake.speech_requests) == 1 and vs.speaking_starts == 1, "spoken over the limit"
    assert "not speaking an answer to user" in caplog.text and "over today's paid-call budget" in caplog.text
    assert budget.usage(space_of(h), sb.member.id).counts == {"speech": 1}
