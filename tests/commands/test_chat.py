"""Chat end to end through the sandbox: where the bot answers, where it stays quiet, long answers,
typing, context and the record each answer leaves for !correct."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from commands._shared import no_pings
from config import Settings
from dataset import corrections as records
from sandbox.server import Sandbox
from tests.commands.records_db import rows
from tests.fakes.openai_server import FakeOpenAI
from tests.harness import STARTED, BotHarness, space_of, start_bot, stop_bot

NOT_TRAINED = "I haven't been trained on this server yet."



async def train(h: BotHarness, lines: list[tuple[str, str]]) -> None:
    """Train the local model on (question, answer) pairs and wait until it answers with them."""
    data = "".join(json.dumps({"messages": [{"role": "user", "content": q},
                                            {"role": "assistant", "content": a}]}) + "\n" for q, a in lines)
    msg = await h.sandbox.post_message("admin", "!train", attachments=[("qa.jsonl", data.encode(), None)])
    started = await h.sandbox.wait_for(
        lambda: next((m for m in h.sandbox.bot_messages(after=msg.id) if STARTED.search(m.content)), None))
    job_id = STARTED.search(started.content).group(1)
    await h.sandbox.wait_for(lambda: any(m.content.startswith(f"Training job `{job_id}` succeeded")
                                         for m in h.sandbox.bot_messages(after=msg.id)))


async def test_answers_in_a_chat_channel_with_typing_and_a_record(harness: BotHarness) -> None:
    h, sb = harness, harness.sandbox
    typing_before = len(sb.typing)
    msgs = await h.send("When does the shop open?")
    assert len(msgs) == 1, "one question, one answer (and the bot does not answer itself)"
    reply = msgs[0]
    assert reply.reference_id == h.last_posted.id and reply.channel_id == sb.text_channel.id
    assert reply.content.startswith(NOT_TRAINED)
    assert sb.typing[typing_before:] == [sb.text_channel.id]
    rec = records.find_answer(space_of(h), reply.id)
    assert rec is not None
    assert (rec.prompt, rec.answer, rec.prompt_message_id) == (
        "When does the shop open?", reply.content, h.last_posted.id)
    assert rec.author_id == sb.member.id and rec.model is None
    # The record is what lets a reply-correction find the question.
    thanks = await h.ask("!correct It opens at 9.", reply_to=reply.id)
    assert thanks.startswith("Thanks — correction `C-")
    fixes = records.list_corrections(space_of(h))
    assert [(c.prompt, c.correction) for c in fixes] == [("When does the shop open?", "It opens at 9.")]


async def test_mentions_answer_anywhere_and_other_channels_stay_quiet(sandbox: Sandbox, settings: Settings,
                                                                    error_log: Any) -> None:
    random = sandbox.add_channel("random", 0)  # before the bot starts, so its guild knows the channel
    bot = await start_bot(sandbox, settings)
    try:
        h = BotHarness(sandbox, bot)
        await train(h, [("When does the shop open?", "At 9 sharp.")])
        bot_id = sandbox.bot_user.id
        await h.silent("When does the shop open?", channel=random)
        for text in (f"<@{bot_id}> When does the shop open?", f"<@!{bot_id}> when does the shop open",
                     f"hey <@{bot_id}>, when does the shop open?"):
            msgs = await h.send(text, channel=random)
            assert [m.content for m in msgs] == ["At 9 sharp."], text
            assert msgs[0].reference_id == h.last_posted.id and msgs[0].channel_id == random.id
            rec = records.find_answer(space_of(h), msgs[0].id)
            assert f"{bot_id}" not in rec.prompt and "shop open" in rec.prompt.lower()
        # A mention with a command runs the command, once, and is not also answered as chat.
        msgs = await h.send(f"<@{bot_id}> hi", channel=random)
        assert len(msgs) == 1 and msgs[0].content.startswith("Hi member!")
    finally:
        await stop_bot(bot)


async def test_never_answers_bots_or_commands(harness: BotHarness) -> None:
    h = harness
    await h.silent("When does the shop open?", user="otherbot")
    await h.silent("!frobnicate")  # an unknown command is not chat either
    await h.silent("!")
    msgs = await h.send("!hi")
    assert len(msgs) == 1 and msgs[0].content.startswith("Hi member!")
    assert not h.sandbox.typing, "typing was shown for something the bot did not answer"
    assert rows(space_of(h), "SELECT * FROM answers WHERE guild_id = ?") == []


async def test_long_answers_are_split_without_breaking_code_blocks(harness: BotHarness) -> None:
    h = harness
    code = "\n".join(f"    step_{i:03d}()  # deploy step number {i} of the release" for i in range(70))
    long_answer = ("Here is the whole deploy script:\n```python\ndef deploy():\n" + code + "\n```\n"
                   + "Run it from the repository root. " * 20).strip()
    assert len(long_answer) > 3000
    await train(h, [("Show me the deploy script", long_answer)])
    msgs = await h.send("show me the deploy script", count=2)
    assert len(msgs) >= 2
    assert msgs[0].reference_id == h.last_posted.id
    for m in msgs:
        assert 0 < len(m.content) <= 2000
        assert m.content.count("```") % 2 == 0, "a part leaves a code block open"
    # Every line arrives once and in order (fences reopened at the cut aside).
    got = [ln for m in msgs for ln in m.content.split("\n") if not ln.startswith("```")]
    assert got == [ln for ln in long_answer.split("\n") if not ln.startswith("```")]
    assert msgs[1].content.startswith("```python")
    # Any part can be the one somebody replies to with a correction.
    for m in msgs:
        rec = records.find_answer(space_of(h), m.id)
        assert rec and rec.answer == long_answer and rec.prompt == "show me the deploy script"


@pytest.fixture
async def openai_chat(sandbox: Sandbox, settings: Settings, error_log: Any,
                      monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[BotHarness, FakeOpenAI]]:
    async with FakeOpenAI("test") as fake:
        s = dataclasses.replace(settings, model_backend="openai", openai_api_key="test",
                                openai_base_url=fake.base_url)
        bot = await start_bot(sandbox, s)
        try:
            yield BotHarness(sandbox, bot), fake
        finally:
            await stop_bot(bot)


async def test_previous_turns_are_given_to_the_model(openai_chat: tuple[BotHarness, FakeOpenAI]) -> None:
    h, fake = openai_chat
    first = await h.ask("When does the shop open?")
    second = await h.ask("And on Sundays?")
    assert second.startswith("(base model ")
    sent = fake.chat_requests[-1]["messages"]
    assert sent[0]["role"] == "system"
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "When does the shop open?"), ("assistant", first), ("user", "And on Sundays?")]


async def test_a_backend_failure_is_answered_clearly(openai_chat: tuple[BotHarness, FakeOpenAI]) -> None:
    h, fake = openai_chat
    fake.fail_next(10, 500)
    text = await h.ask("When does the shop open?")
    assert text == "OpenAI had a server error (500) after 3 retries while trying to answer; try again later."
    fake._faults.clear()
    assert rows(space_of(h), "SELECT * FROM answers WHERE guild_id = ?") == [], "an error is not an answer anyone should correct"
    # The failed turn is not context for the next one.
    await h.ask("Where is the office?")
    assert [m["content"] for m in fake.chat_requests[-1]["messages"][1:]] == ["Where is the office?"]


async def test_dm_is_answered_with_the_shared_servers_model(harness: BotHarness) -> None:
    await train(harness, [("When does the shop open?", "At 9 am, every weekday.")])
    dm = harness.sandbox.dm_channel("member")
    reply = await harness.send("when does the shop open", channel=dm)
    assert reply[0].content == "At 9 am, every weekday." and reply[0].channel_id == dm.id
    # The turn is recorded in the shared server's space, so it can be corrected there.
    assert records.find_answer(space_of(harness), reply[0].id).prompt == "when does the shop open"


async def test_dm_from_someone_sharing_no_server_is_told_why(harness: BotHarness) -> None:
    stranger = harness.sandbox.add_user("stranger", in_guild=False)
    text = await harness.ask("hello?", user=stranger, channel=harness.sandbox.dm_channel(stranger))
    assert "we share none or several" in text


async def test_nothing_repeated_from_users_pings_anyone(harness: BotHarness) -> None:
    """A trained answer, a correction, a quoted question and !test cases with <@id>, <@&role> or @everyone
    notify nobody (the bot's allowed mentions are none), and are broken by a zero-width space besides (a second
    guard for servers that ignore allowed_mentions, such as Spacebar)."""
    h, sb = harness, harness.sandbox
    raw = f"<@{sb.owner.id}> @everyone"
    ping = no_pings(raw)
    assert ping == f"<@\u200b{sb.owner.id}> @\u200beveryone"
    await train(h, [("Who is on call?", f"Ask {raw}, they know.")])
    answer = (await h.send("Who is on call?"))[0]
    assert ping in answer.content and sb.notified(answer.id) == set()
    fixed = await h.send(f"!correct Ask {raw} instead.", reply_to=answer.id)
    assert all(sb.notified(m.id) == set() for m in fixed)
    review = await h.send("!review", user="admin")  # a member's correction waits; the queue shows it, no ping
    assert ping in review[0].content and all(sb.notified(m.id) == set() for m in review)
    await h.ask(f"!approve {fixed[0].content.split('`')[1]}", user="admin")
    again = (await h.send("Who is on call?"))[0]
    assert f"Ask {ping} instead." in again.content and sb.notified(again.id) == set()
    cases = json.dumps([{"input": f"{raw} hello", "expected": f"<@{sb.member.id}>"}])
    report = await h.send(f"!test {cases}", user="admin")
    assert any(ping in m.content for m in report) and all(sb.notified(m.id) == set() for m in report)
    fb = await h.send(f"!feedback {raw} is great", user="admin")
    assert all(sb.notified(m.id) == set() for m in fb)
    # The sandbox does notify when a message allows it: the check above is not vacuous.
    await h.send(f"hey <@{sb.member.id}>", user="admin")  # waits for the bot's answer to it
    assert sb.notified(h.last_posted.id) == {sb.member.id}
