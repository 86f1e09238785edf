"""👍/👎 on the bot's answers end to end: recorded (who, when, which model), taken back, the ask after a 👎 and
the correction a reply to it makes, counts in !model, and the reactions that are ignored without a word."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dataset import corrections as records
from dataset.corrections import Reaction, ReactionCounts
from tests.commands.records_db import rows
from tests.harness import BotHarness, space_of, wait_bot

# The reactions table's columns in the order of Reaction's fields.
REACTION = "message_id, kind, added, author_id, channel_id, author_name, model, created_at"


async def until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``predicate`` (a record the bot writes) until it is truthy."""
    for _ in range(int(timeout / 0.05)):
        if found := predicate():
            return found
        await asyncio.sleep(0.05)  # the bot writes the record in a thread: nothing to await on
    raise AssertionError(f"not written within {timeout}s")


async def test_thumbs_are_recorded_and_a_thumbs_down_asks_for_the_right_answer(harness: BotHarness) -> None:
    h, sb = harness, harness.sandbox
    space = space_of(h)
    channel = sb.text_channel.id
    answer = (await h.send("What is the office wifi password?"))[0]

    def standing() -> dict[tuple[int, str], Reaction]:
        """(who, kind) -> their reaction as recorded: one row each, a reaction taken off kept with added false."""
        found = rows(space, f"SELECT {REACTION} FROM reactions WHERE guild_id = ?")
        return {(r.author_id, r.kind): r for r in (Reaction(m, k, bool(a), *rest) for m, k, a, *rest in found)}

    assert await sb.react("member", channel, answer.id, "👍🏽")  # any skin tone is a 👍
    (up,) = (await until(standing)).values()
    assert (up.kind, up.added, up.author_id, up.author_name, up.message_id, up.channel_id) == (
        "up", True, sb.member.id, "member", answer.id, channel)
    assert up.model is None and up.time.endswith("Z")  # untrained: the answer log says which model

    mark = max(sb.messages)
    await sb.react("admin", channel, answer.id, "👎")
    ask = await wait_bot(sb, lambda m: m.reference_id == answer.id and m.id > mark)
    assert ask.content == ("Thanks for the 👎, admin. What should I have answered? Reply to this message with the "
                           "right answer and it becomes a correction (an admin reviews members' corrections before "
                           "I use them).")
    assert (await h.ask("!model")).endswith("Reactions on answers: `untrained` 👍 1 👎 1.")
    asked = records.find_ask(space, ask.id)
    assert asked is not None and (asked.message_id, asked.author_id, asked.author_name) == (
        answer.id, sb.admin.id, "admin")

    # A reply to the ask is a correction of the answer, through the same path as !correct (review applies).
    said = await h.ask("It is on the card at the front desk.", reply_to=ask.id)
    assert said.startswith("Thanks — correction `C-") and said.endswith(
        "It awaits review: an admin approves it (`!review`) before I use it.")
    (correction,) = records.list_corrections(space)
    assert (correction.prompt, correction.message_id, correction.author_id, correction.status) == (
        "What is the office wifi password?", answer.id, sb.member.id, "pending")
    assert correction.correction == "It is on the card at the front desk."
    assert (await h.ask("", reply_to=ask.id, attachments=[("x.txt", b"x", None)])).startswith(
        "The correction is empty")  # a bad reply: one line, nothing stored
    assert len(records.list_corrections(space)) == 1

    # Taken back: recorded, no longer counted; a 👎 again is not asked about twice.
    await sb.unreact("member", channel, answer.id, "👍🏽")
    member_up, admin_down = (sb.member.id, "up"), (sb.admin.id, "down")
    await until(lambda: not standing()[member_up].added)
    assert {key: (r.message_id, r.added) for key, r in standing().items()} == {
        member_up: (answer.id, False), admin_down: (answer.id, True)}
    assert records.reaction_counts(space) == {"untrained": ReactionCounts(up=0, down=1)}
    await sb.unreact("admin", channel, answer.id, "👎")
    await until(lambda: not standing()[admin_down].added)
    assert records.reaction_counts(space) == {}  # none standing
    await sb.react("admin", channel, answer.id, "👎")
    await until(lambda: standing()[admin_down].added)
    await asyncio.sleep(0.3)
    assert [m.id for m in sb.bot_messages(channel, after=mark) if m.reference_id == answer.id] == [ask.id]


async def test_counts_name_the_model_that_answered(harness: BotHarness) -> None:
    h, sb = harness, harness.sandbox
    await h.ask("!train What is the office wifi password? => It is on the card at the desk.", user="admin")
    # The job's closing announcement (its status message says "succeeded" a moment before it).
    await wait_bot(sb, lambda m: m.content.startswith("Training job `") and "succeeded. I now answer" in m.content,
                   timeout=20)
    answer = (await h.send("What is the office wifi password?"))[0]
    assert answer.content == "It is on the card at the desk."
    await sb.react("owner", sb.text_channel.id, answer.id, "👍")
    await until(lambda: records.reaction_counts(space_of(h)))
    said = await h.ask("!model")
    assert said.startswith("Current model: `local-v1`") and said.endswith("Reactions on answers: `local-v1` 👍 1 👎 0.")


async def test_reactions_that_are_not_on_answers_are_ignored(harness: BotHarness) -> None:
    h, sb = harness, harness.sandbox
    space = space_of(h)
    channel = sb.text_channel.id
    answer = (await h.send("hello?"))[0]
    hi = (await h.send("!hi"))[0]  # the bot's, but not an answer
    await h.send("an admin's own message", user="admin")
    theirs = h.last_posted
    mark = max(sb.messages)
    await sb.react("member", channel, hi.id, "👎")
    await sb.react("member", channel, theirs.id, "👎")
    await sb.react("member", channel, answer.id, "🎉")
    await sb.unreact("member", channel, hi.id, "👎")
    dm = sb.dm_channel("member")
    dm_answer = (await h.send("hello in private", channel=dm))[0]  # answered with the server's model
    await sb.react("member", dm.id, dm_answer.id, "👎")
    await asyncio.sleep(0.5)
    assert rows(space, "SELECT * FROM reactions WHERE guild_id = ?") == []
    assert rows(space, "SELECT * FROM asks WHERE guild_id = ?") == []
    assert sb.bot_messages(channel, after=mark) == [] and sb.bot_messages(dm.id, after=dm_answer.id) == []
    assert "Reactions" not in await h.ask("!model")
