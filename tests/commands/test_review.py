"""The review queue end to end: a member's !correct waits, !review lists it, !approve/!reject decide."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from config import Settings
from dataset import corrections as records
from sandbox.server import Sandbox
from tests.commands.records_db import rows
from tests.harness import BotHarness, ErrorLog, running_bot, space_of

PERMISSION = "You need the **Manage Server** permission to use this command."


def decisions(h: BotHarness) -> list[tuple[Any, ...]]:
    """The server's review decisions, oldest first: (id, decision, by whom, reason, the corrections decided)."""
    space = space_of(h)
    return [(rid, decision, by, reason, [r for r, in rows(space, "SELECT ref FROM corrections WHERE guild_id = ?"
                                                            " AND review_id = ? ORDER BY id", rid)])
            for rid, decision, by, reason in rows(space, "SELECT id, decision, by_name, reason FROM reviews"
                                                         " WHERE guild_id = ? ORDER BY id")]


async def test_members_correction_waits_for_approval(harness: BotHarness) -> None:
    h = harness
    question = "When does the library open?"
    answer = (await h.send(question))[0]
    said = await h.ask("!correct The library opens at <@1> 8 am.", reply_to=answer.id)
    ref = said.split("`")[1]
    assert said == (f"Thanks — correction `{ref}` saved. It awaits review: an admin approves it "
                    f"(`!review`) before I use it.")
    # Not used yet: the same question still gets the old answer.
    assert (await h.send(question))[0].content == answer.content

    # Members may not review.
    for cmd in ("!review", f"!approve {ref}", f"!reject {ref}"):
        assert await h.ask(cmd) == PERMISSION
    listing = await h.ask("!review", user="admin")
    assert listing.startswith("**1 correction(s) waiting for review** — `!approve ID…` or `!reject ID… [reason]`. "
                              "Each is shown as answers will show it:")
    assert f"`{ref}` by member (" in listing and f"> Q: {question}" in listing
    assert "> now: The library opens at <@\u200b1> 8 am." in listing  # shown, never pinging
    assert "> was: " in listing

    assert await h.ask(f"!approve {ref}", user="admin") == (
        f"Approved `{ref}`: it counts now and in the next training.")
    assert (await h.send(question))[0].content == "The library opens at <@\u200b1> 8 am."
    assert await h.ask("!review", user="admin") == "No corrections are waiting for review."
    # Approving twice / rejecting an approved one: one line, nothing changed.
    before = decisions(h)
    assert [d[1:] for d in before] == [("approved", "admin", "", [ref])]
    assert await h.ask(f"!approve {ref}", user="admin") == f"Correction `{ref}` is already approved. Nothing was changed."
    assert (await h.ask(f"!reject {ref} spam", user="admin")).startswith(f"Correction `{ref}` was already approved")
    assert decisions(h) == before


async def test_admin_correction_counts_at_once_and_reject(harness: BotHarness) -> None:
    h = harness
    answer = (await h.send("Is there parking?", user="admin"))[0]
    said = await h.ask("!correct Yes, behind the building.", user="admin", reply_to=answer.id)
    assert said.startswith("Thanks — correction `C-") and "from now on" in said
    assert (await h.send("Is there parking?", user="admin"))[0].content == "Yes, behind the building."

    answer = (await h.send("Do you sell tea?"))[0]
    ref = (await h.ask("!correct We sell poison.", reply_to=answer.id)).split("`")[1]
    assert await h.ask(f"!reject {ref} not true", user="admin") == (
        f"Rejected `{ref}`: never used for answers or training. Reason kept: not true")
    assert (await h.send("Do you sell tea?"))[0].content == answer.content
    *_, event = decisions(h)
    assert event[1:] == ("rejected", "admin", "not true", [ref])
    (rejected,) = records.list_corrections(space_of(h), "rejected")
    assert (rejected.ref, rejected.reviewed_by, rejected.review_reason) == (ref, "admin", "not true")
    assert await h.ask(f"!reject {ref}", user="admin") == f"Correction `{ref}` is already rejected. Nothing was changed."


async def test_review_refusals(harness: BotHarness) -> None:
    h = harness
    answer = (await h.send("hello"))[0]
    ref = (await h.ask("!correct hi there", reply_to=answer.id)).split("`")[1]
    assert await h.ask("!approve C-000000", user="admin") == (
        "There is no correction `C-000000` in this server. Nothing was changed. `!review` lists the pending ones.")
    assert await h.ask(f"!approve {ref} C-000000", user="admin") == (
        "There is no correction `C-000000` in this server. Nothing was changed. `!review` lists the pending ones.")
    assert (await h.ask("!approve nonsense", user="admin")).startswith("`nonsense` is not a correction id")
    assert await h.ask("!reject because I said so", user="admin") == (
        "Give the ids first: `!reject C-7f3a2b [reason]` (`!review` lists them). Nothing was changed.")
    assert (await h.ask("!approve", user="admin")).startswith("Missing `ids`.")
    assert decisions(h) == []
    assert f"`{ref}`" in await h.ask("!review", user="admin")  # still pending


@pytest.fixture
async def trusting(sandbox: Sandbox, settings: Settings, error_log: ErrorLog) -> AsyncIterator[BotHarness]:
    async with running_bot(sandbox, settings, review_corrections=False) as h:
        yield h


async def test_review_off_trusts_members(trusting: BotHarness) -> None:
    h = trusting
    answer = (await h.send("Where is the exit?"))[0]
    said = await h.ask("!correct Down the hall.", reply_to=answer.id)
    assert "from now on" in said and "review" not in said
    assert (await h.send("Where is the exit?"))[0].content == "Down the hall."


MASKED = "what is the [staff discount](https://evil.invalid/steal) for members?"


async def test_a_members_masked_link_is_published_neutralised(harness: BotHarness) -> None:
    """The new user's case: a member asks with a masked link, corrects the answer with markdown; !review shows
    exactly what will be published, and once approved answers and offers carry no live masked link."""
    h = harness
    answer = (await h.send(MASKED))[0]
    ref = (await h.ask("!correct It is **[20% off](https://evil.invalid/steal)** at @everyone desks.",
                       reply_to=answer.id)).split("`")[1]
    listing = await h.ask("!review", user="admin")
    assert r"> Q: what is the \[staff discount\](https://evil.invalid/steal) for members?" in listing
    published = r"It is \*\*\[20% off\](https://evil.invalid/steal)\*\* at @" + "\u200b" + "everyone desks."
    assert f"> now: {published}" in listing
    await h.ask(f"!approve {ref}", user="admin")
    assert await h.ask(MASKED) == published
    # The offer of a trained question, and its training line, carry the neutralised question too.
    (record,) = records.approved_corrections(space_of(h))
    assert record.prompt == r"what is the \[staff discount\](https://evil.invalid/steal) for members?"
    # An admin's own question and correction are published as written (admins may link).
    mine = (await h.send("Where is the handbook?", user="admin"))[0]
    await h.ask("!correct In [the wiki](https://wiki.example/handbook).", user="admin", reply_to=mine.id)
    assert await h.ask("Where is the handbook?") == "In [the wiki](https://wiki.example/handbook)."


async def test_review_pages_and_decisions_on_hundreds_of_ids(harness: BotHarness) -> None:
    """200 pending corrections, each long: !review shows them whole, page by page, every message under Discord's
    limit; !approve and !reject with 200 ids answer in one short line."""
    h = harness
    space = space_of(h)
    long_text = "A long answer. " * 120  # 1,800 characters each
    refs = [records.add_correction(space, message_id=i, prompt=f"question {i}", answer="old", correction=long_text,
                                   author_id=h.sandbox.member.id, author_name="member", channel_id=1,
                                   approved=False).ref for i in range(400)]
    before = len(h.sandbox.bot_messages())
    first = await h.send("!review", user="admin", count=2)
    assert all(len(m.content) <= 2000 for m in first) and len(first) <= 4
    assert first[0].content.startswith("**400 correction(s) waiting for review**")
    assert long_text.strip() in first[0].content or long_text.strip() in first[1].content  # whole, not cut
    assert first[-1].content.endswith("*Page 1 of 200 — `!review 2` for the next.*")
    last = await h.send("!review 200", user="admin")
    assert last[-1].content.endswith("*Page 200 of 200.*")
    assert await h.ask("!review 201", user="admin") == "There are only 200 pages."
    assert await h.ask("!review x", user="admin") == "`x` is not a page number: give 1, 2, … Nothing was changed."

    said = await h.ask("!approve " + " ".join(refs[:200]), user="admin")
    assert len(said) < 2000 and said.startswith(f"Approved 200 corrections: `{refs[0]}`, `{refs[1]}`")
    assert " more: they count now and in the next training." in said
    said = await h.ask("!reject " + " ".join(refs[200:]) + " @everyone spam", user="admin")
    assert len(said) < 2000 and said.startswith("Rejected 200 corrections: ")
    assert said.endswith("more: never used for answers or training. Reason kept: @\u200beveryone spam")
    assert len(records.pending_corrections(space)) == 0 and len(h.sandbox.bot_messages()) > before


async def test_mentions_in_repeated_text_never_ping(harness: BotHarness) -> None:
    """A second guard beside allowed_mentions (Spacebar ignores it): @everyone, @here, <@id> and <@&id> in what
    the bot repeats are broken by a zero-width space, in answers and in the training report's names."""
    h = harness
    answer = (await h.send("Who is on call?", user="admin"))[0]
    pings = f"@everyone @here <@{h.sandbox.member.id}> <@&123456789012345678>"
    await h.ask(f"!correct {pings} are.", user="admin", reply_to=answer.id)
    said = await h.ask("Who is on call?")
    assert said == (f"@\u200beveryone @\u200bhere <@\u200b{h.sandbox.member.id}> <@\u200b&123456789012345678> are.")
    for message in h.sandbox.bot_messages():
        assert "@everyone" not in message.content and f"<@{h.sandbox.member.id}>" not in message.content
