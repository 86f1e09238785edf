"""MESSAGE_CONTENT=off end to end, on a sandbox whose application has the privileged intent switched off (as
Discord does, a server message's text then reaches the bot only when it mentions or replies to the bot):
slash commands, the "Correct this answer" menu, mentions, replies to the bot and DMs still work; prefix commands
and plain messages in chat channels get no answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from config import Settings
from sandbox.server import Sandbox
from tests.harness import BotHarness, running_bot


@pytest.fixture
async def bare(settings: Settings, error_log: Any) -> AsyncIterator[BotHarness]:
    sandbox = await Sandbox(message_content_enabled=False).start()
    try:
        async with running_bot(sandbox, settings, message_content=False) as h:
            yield h
    finally:
        await sandbox.close()


async def test_everything_but_prefix_commands_and_plain_chat_works(bare: BotHarness) -> None:
    h, sb = bare, bare.sandbox
    assert not h.bot.intents.message_content
    await h.silent("what is the capital of nowhere?")  # #general is a chat channel: its text never came
    await h.silent("!hi")
    assert (await h.slash("hi")).messages[0].content.startswith("Hi member!")
    # A mention comes with its text: an answer, and a prefix command after the mention works too.
    [answer] = await h.send(f"<@{sb.bot_user.id}> what is the capital of nowhere?")
    assert answer.reference_id == h.last_posted.id
    assert (await h.ask(f"<@{sb.bot_user.id}> hi")).startswith("Hi member!")
    # A reply to the bot (not pinging it) is a question too.
    [again] = await h.send("and what is the capital of somewhere?", reply_to=answer.id, ping_reply=False)
    assert again.reference_id == h.last_posted.id
    # DMs come with their text.
    [dm] = await h.send("what is the capital of nowhere?", channel=sb.dm_channel("member"))
    assert dm.content
    # The context menu carries its target message: a correction without the intent.
    await h.menu(answer.id, "Correct this answer", user="admin")
    saved = await h.submit_modal(user="admin", correction="Nowhere City.")
    assert "from now on" in saved.messages[0].content
    assert (await h.ask(f"<@{sb.bot_user.id}> what is the capital of nowhere?")) == "Nowhere City."
