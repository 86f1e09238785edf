"""The review queue end to end: a member's !correct waits, !review lists it, !approve/!reject decide."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from config import Settings
from dataset import corrections as records
from sandbox.server import Sandbox
from tests.commands.records_db import rows
from tests.harness import BotHarness, ErrorLog, space_of, start_bot, stop_bot

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
    bot = await start_bot(sandbox, dataclasses.replace(settings, review_corrections=False))
    try:
        yield BotHarness(sandbox, bot)
    finally:
        await stop_bot(bot)


async def test_review_off_trusts_members(trusting: BotHarness) -> None:
    h = trusting
    answer = (await h.send("Where is the exit?"))[0]
    said = await h.ask("!correct Down the hall.", reply_to=answer.id)
    assert "from now on" in said and "review" not in said
    assert (await h.send("Where is the exit?"))[0].content == "Down the hall."
