"""!correct and !feedback end to end: by message id and as a reply, the refusals, and what is stored."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from dataset import corrections as records
from sandbox.server import Message
from storage import GuildSpace
from tests.commands.records_db import rows, writes_refused
from tests.harness import BotHarness, space_of


# ---------------------------------------------------------------------------- !correct
async def ask_model(harness: BotHarness, prompt: str, *, user: str = "member") -> Message:
    """Chat in #general: the (untrained) local model answers as a reply."""
    msgs = await harness.send(prompt, user=user)
    assert msgs and msgs[0].reference_id == harness.last_posted.id
    return msgs[0]


def recent(iso: str, seconds: float = 60) -> bool:
    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return abs((datetime.now(UTC) - when).total_seconds()) < seconds


async def test_correct_by_id_and_by_reply(harness: BotHarness) -> None:
    sb = harness.sandbox
    answer = await ask_model(harness, "What is the capital of France?")
    said = await harness.ask(f"!correct {answer.id} The capital of France is Paris.")
    assert said.startswith("Thanks — correction `C-") and "saved" in said
    ref1 = said.split("`")[1]
    said = await harness.ask("!correct 42 is the answer, not that.", user="admin", reply_to=answer.id)
    assert said.startswith("Thanks — correction `C-")
    ref2 = said.split("`")[1]

    space = space_of(harness)
    first, second = records.list_corrections(space)
    assert first.ref == ref1 and second.ref == ref2
    assert first.prompt == second.prompt == "What is the capital of France?"
    assert first.answer == second.answer == answer.content
    assert first.correction == "The capital of France is Paris."
    assert second.correction == "42 is the answer, not that."
    assert (first.author_id, first.author_name) == (sb.member.id, "member")
    assert (second.author_id, second.author_name) == (sb.admin.id, "admin")
    assert first.message_id == second.message_id == answer.id
    assert first.channel_id == sb.text_channel.id
    assert recent(first.time) and recent(second.time)
    assert first.status == "pending" and second.status == "approved"  # a member's waits for review
    assert records.pending_corrections(space) == [first] and records.approved_corrections(space) == [second]
    assert first.source_message_id != second.source_message_id
    # Stored as sent: the rows of the table are the records listed.
    assert rows(space, "SELECT ref, correction, status, source_message_id FROM corrections WHERE guild_id = ?"
                " ORDER BY id") == [(c.ref, c.correction, c.status, c.source_message_id) for c in (first, second)]


async def test_correct_refusals(harness: BotHarness, tmp_path: Path) -> None:
    sb = harness.sandbox
    space = space_of(harness)
    answer = await ask_model(harness, "hello there")
    hi = await harness.send("!hi")
    mine = harness.last_posted  # a member's message, not a bot answer
    # An answer recorded in another guild's space, under an id this guild never saw.
    other = GuildSpace(harness.guild_id + 1, harness.bot.settings.data_dir, harness.bot.settings.corrections_dir,
                       harness.bot.db)
    foreign_id = sb.ids.next()
    records.record_answer(other, message_ids=[foreign_id], channel_id=1, prompt="their q", answer="their a",
                          prompt_message_id=None, author_id=None, model=None)

    not_answer = "That message isn't one of my answers: reply to my answer to correct it."
    assert await harness.ask(f"!correct {mine.id} fixed") == not_answer
    assert await harness.ask("!correct fixed", reply_to=mine.id) == not_answer
    unknown = 1234567890123456789
    for mid in (unknown, hi[0].id, foreign_id):  # no such message, a bot message that isn't an answer, foreign
        assert await harness.ask(f"!correct {mid} fixed", user="admin") == (
            f"I have no answer with id `{mid}` in this server. Reply to my answer with the correction instead.")
    usage = "Usage: `!correct [message_id] <correction...>` (see `!help correct`)"
    assert await harness.ask("!correct", user="owner") == f"Missing `text`. {usage}"
    assert await harness.ask(f"!correct {answer.id}", user="owner") == (
        f"Give the correction after the message id. {usage}")
    assert await harness.ask("!correct better answer", user="owner") == (
        "I haven't answered you in this channel yet. Reply to one of my answers with "
        "`!correct <the right answer>`, or give its message id first.")
    assert (await harness.ask("!correct 123 better", user="owner")).startswith("`123` is not a message id")
    assert records.list_corrections(space) == []
    assert records.list_corrections(other) == [] and records.find_answer(other, foreign_id) is not None


async def test_correct_without_reply_corrects_my_last_answer_to_you(harness: BotHarness) -> None:
    """The hint "teach me with !correct <the right answer>" works as written: no reply, no id needed."""
    await ask_model(harness, "first question", user="admin")  # someone else's answer: not the one corrected
    await ask_model(harness, "what is the wifi password")
    said = await harness.send("!correct It is on the card by the door.", count=2)
    assert said[0].content == "Correcting my last answer to you here (to “what is the wifi password”)."
    assert said[1].content.startswith("Thanks — correction `C-")
    (stored,) = records.list_corrections(space_of(harness))
    assert stored.prompt == "what is the wifi password"
    assert stored.correction == "It is on the card by the door."


async def test_mistyped_correct_does_not_use_the_cooldown(harness: BotHarness) -> None:
    answer = await ask_model(harness, "when is lunch")
    for _ in range(12):  # more than the cooldown allows (10 a minute)
        assert (await harness.ask("!correct 123 x")).startswith("`123` is not a message id")
    assert (await harness.ask(f"!correct {answer.id} At noon.")).startswith("Thanks — correction")


# ---------------------------------------------------------------------------- !feedback
async def test_feedback_plain_and_as_reply(harness: BotHarness) -> None:
    sb = harness.sandbox
    said = await harness.ask("!feedback The answers are too short.")
    assert said.startswith("Thanks for the feedback! Reference: `F-")
    ref1 = said.split("`")[1]
    answer = await ask_model(harness, "tell me a joke")
    said = await harness.ask("!feedback This one was not funny.", user="admin", reply_to=answer.id)
    ref2 = said.split("`")[1]
    usage = "Missing `text`. Usage: `!feedback <text...>` (see `!help feedback`)"
    assert await harness.ask("!feedback") == usage
    assert await harness.ask("!feedback   ") == usage

    first, second = records.list_feedback(space_of(harness))
    assert (first.ref, first.text, first.author_id, first.author_name) == (
        ref1, "The answers are too short.", sb.member.id, "member")
    assert first.channel_id == sb.text_channel.id and first.reply_to is None and recent(first.time)
    assert (second.ref, second.text, second.author_id) == (ref2, "This one was not funny.", sb.admin.id)
    assert second.reply_to == {"message_id": answer.id, "author_id": sb.bot_user.id, "content": answer.content}


async def test_feedback_over_the_limit_is_refused_and_failed_writes_say_so(
        harness: BotHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    space = space_of(harness)
    said = await harness.ask("!feedback " + "x" * 20_001)
    assert said == ("The feedback is 20,001 characters long; the limit is 20,000. "
                    "Nothing was saved: shorten it and send it again.")
    assert records.list_feedback(space) == []
    # The database refuses writes (as a read-only database file does).
    with writes_refused(monkeypatch, harness.bot.db):
        said = await harness.ask("!feedback The answers are slow.")
    assert said == ("Your feedback was not saved: I could not use my database (the database file is read-only). "
                    "Nothing was changed; an admin can find the details in the log."), said
    assert records.list_feedback(space) == []
    # Writable again: the same feedback is kept.
    assert (await harness.ask("!feedback The answers are slow.")).startswith("Thanks for the feedback!")
    assert [f.text for f in records.list_feedback(space)] == ["The answers are slow."]


async def test_a_chat_answer_that_could_not_be_logged_says_correct_wont_find_it(
        harness: BotHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    space = space_of(harness)
    with writes_refused(monkeypatch, harness.bot.db):
        msgs = await harness.send("what is the wifi password", count=2)
    assert msgs[1].content == "(I couldn't save this answer to my log, so `!correct` won't find it.)"
    assert records.find_answer(space, msgs[0].id) is None
