"""Confirm / Cancel dialogs before destructive actions: only the asker's click counts, Cancel changes nothing,
an unanswered dialog expires (buttons off, nothing changed), and a click on a dialog the bot no longer waits for
(a replayed or forged one, or one from before a restart) gets a clear line."""

from __future__ import annotations

import dataclasses

import pytest

from sandbox.interactions import InteractionRefused
from tests.harness import BotHarness, wait_bot


async def _chatted(h: BotHarness, n: int = 4) -> None:
    for i in range(n):  # each answer is a logged question and answer of the member's
        await h.send(f"question number {i}?")


async def test_cancel_and_expiry_change_nothing(harness: BotHarness) -> None:
    h, sb = harness, harness.sandbox
    await _chatted(h)
    [dialog] = await h.send("!forget me")
    assert "This removes 4 logged questions and answers, for good." in dialog.content
    assert [b["label"] for row in dialog.components for b in row["components"]] == ["Confirm", "Cancel"]
    cancelled = await h.click(dialog.id, 2)
    assert not cancelled.messages  # the click updates the dialog: its buttons go off
    said = await wait_bot(sb, lambda m: m.content.startswith("Nothing was forgotten"), after=dialog.id)
    assert said.content == "Nothing was forgotten; everything stays as it was."
    with pytest.raises(InteractionRefused, match="disabled"):
        await sb.click("member", dialog.id, 1)
    assert await h.bot.model.latest_answer(h.guild_id, dialog.channel_id, sb.member.id) is not None

    h.bot.settings = dataclasses.replace(h.bot.settings, confirm_seconds=1.0)
    [dialog] = await h.send("!forget me")
    await sb.wait_for(lambda: "This dialog expired: nothing was changed." in dialog.content, timeout=5)
    with pytest.raises(InteractionRefused, match="disabled"):
        await sb.click("member", dialog.id, 1)
    # A client replaying the old click (or a dialog from before a restart): a clear line, nothing done.
    custom_id = dialog.components[0]["components"][0]["custom_id"]
    late = await h.answered(await sb.click("member", dialog.id, forged_custom_id=custom_id))
    assert [m.content for m in late.messages] == [
        "This dialog has expired or was already answered; your click changed nothing."]
    assert await h.bot.model.latest_answer(h.guild_id, dialog.channel_id, sb.member.id) is not None


async def test_slash_forget_confirms_in_the_interaction(harness: BotHarness) -> None:
    h, sb = harness, harness.sandbox
    await _chatted(h)
    used = await h.slash("forget", who="me")
    [dialog] = used.messages
    assert dialog.content.startswith("Forget everything you gave in this server?") and not dialog.ephemeral
    other = await h.click(dialog.id, 1, user="admin")
    assert [m.content for m in other.messages] == [f"Only <@{sb.member.id}> can answer this."]
    assert other.messages[0].ephemeral and not sb.state.notified(other.messages[0].id)
    await h.click(dialog.id, 1)
    await sb.wait_for(lambda: any(m.content.startswith("Forgot everything member gave") for m in used.messages))
    assert await h.bot.model.latest_answer(h.guild_id, dialog.channel_id, sb.member.id) is None
