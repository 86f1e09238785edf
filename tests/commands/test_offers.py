""""Did you mean" offers as buttons end to end through the sandbox: the asker's click answers and teaches, others
are told only the asker can choose, K members agreeing make a pick count, "None of these" feeds !unanswered and
its modal, buttons survive a restart and expire; forged, stale and repeated clicks and submits record nothing."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

from bench.calibrate import load_sets
from commands._shared import no_pings
from config import Settings
from dataset import corrections as records
from dataset import picks
from sandbox.chat import TerminalChat
from sandbox.components import buttons
from sandbox.server import Message, Sandbox
from tests.harness import BotHarness, confirmed, space_of, start_bot, stop_bot, type_lines
from training import jobs
from training.local import train_version

WORK = next(s for s in load_sets() if s.name == "workplace")
VISITORS = "What's the wi-fi code for visitors?"  # offered "What is the guest wifi password?" (no answer)
WIFI = "What is the guest wifi password?"


async def train(h: BotHarness) -> None:
    """Make a version trained on the workplace set's pairs the current model, as a finished !train does (the
    training itself is tested in tests/commands/test_training.py; here it would only add seconds)."""
    space, backend = space_of(h), h.bot.model.backend
    name = await asyncio.to_thread(train_version, space, WORK.pairs, [], job_id="offers", method="supervised",
                                   embedder=backend.embedder())
    jobs.set_current_model(space, backend.name, name)


async def click(h: BotHarness, message_id: int, n: int, user: str, *, forged: str | None = None) -> Any:
    """``user`` presses button ``n`` (or sends a click on ``forged``, a custom id); the answered interaction."""
    return await h.answered(await h.sandbox.click(user, message_id, n, forged_custom_id=forged), quiet=0.1)


def labels(msg: Message) -> list[str]:
    """The message's buttons as the terminal chat shows them."""
    return [f"{b.get('label')}{' (disabled)' if b.get('disabled') else ''}" for row in buttons(msg.components)
            for b in row]


async def offer_to(h: BotHarness, user: str, text: str = VISITORS) -> Message:
    """``user`` asks ``text``; the bot's offer (checked: one button per question, then "None of these")."""
    said = await h.send(text, user=user, quiet=0.1)
    assert len(said) == 1 and said[0].content.startswith("I don't know that one yet. Did you mean one of these?")
    assert labels(said[0])[0] == WIFI and labels(said[0])[-1] == "None of these"
    return said[0]


def nothing_pinged(sb: Sandbox) -> bool:
    return all(not m.notified for m in sb.messages.values())


async def test_a_pick_answers_the_asker_and_two_members_teach_the_bot(harness: BotHarness) -> None:
    h, sb = harness, harness.sandbox
    sb.add_user("colleague")
    await train(h)
    offer = await offer_to(h, "member")
    question, shown = h.last_posted, labels(offer)
    # Someone else's click: an ephemeral line naming the asker (no ping), nothing recorded, buttons kept.
    other = await click(h, offer.id, 1, "colleague")
    assert [m.content for m in other.messages] == [
        f"Only <@{sb.member.id}> can choose: ask me yourself and I'll offer you buttons of your own."]
    assert other.messages[0].ephemeral and not other.messages[0].notified
    assert records.list_picks(space_of(h)) == [] and "(disabled)" not in " ".join(labels(offer))
    # The asker's click: the buttons are disabled, the answer is a visible reply to the question.
    mine = await click(h, offer.id, 1, "member")
    assert labels(sb.messages[offer.id]) == [f"{x} (disabled)" for x in shown]
    answer = next(m for m in sb.bot_messages(after=offer.id) if not m.ephemeral)
    assert answer.content == WORK.answer_of("guest_wifi") and answer.reference_id == question.id
    pending = records.pending_picks(space_of(h))
    assert [(p.prompt, p.question, p.author_id) for p in pending] == [(VISITORS, WIFI, sb.member.id)]
    assert [m.content for m in mine.messages if m.ephemeral] == [
        f"Thanks! Your pick (`{pending[0].ref}`) teaches me your wording once an admin approves it (`!review`)."]
    # The answer is logged: a !correct replying to it finds the question.
    assert records.find_answer(space_of(h), answer.id).prompt == VISITORS  # type: ignore[union-attr]
    review = await h.ask("!review", user="admin", quiet=0.1)
    assert f"`{pending[0].ref}` paraphrase by member" in review and f"and chose “{WIFI}”" in review
    # A stale client clicking the used offer again: refused, nothing more recorded.
    used = sb.messages[offer.id].components[0]["components"][0]["custom_id"]
    again = await click(h, offer.id, 0, "member", forged=used)
    assert "already chose" in again.messages[-1].content and len(records.list_picks(space_of(h))) == 1
    # A second member makes the same pick: it counts (PICKS_TO_LEARN=2) and answers directly from then on.
    second = await offer_to(h, "colleague", "what's the Wi-Fi code for visitors")
    agreed = await click(h, second.id, 1, "colleague")
    assert agreed.messages[-1].content.startswith("Thanks! 2 members chose this for the same words")
    assert records.pending_picks(space_of(h)) == [] and len(records.approved_picks(space_of(h))) == 2
    direct = await h.send(VISITORS, user="admin", quiet=0.1)
    assert [m.content for m in direct] == [WORK.answer_of("guest_wifi")] and not direct[0].components
    assert nothing_pinged(sb)


async def test_an_admins_pick_in_the_terminal_chat_counts_at_once_and_forget_removes_it(
        harness: BotHarness, tmp_path: Path) -> None:
    h, sb = harness, harness.sandbox
    await train(h)
    out = io.StringIO()
    chat = TerminalChat(sb, out=out, files_dir=tmp_path / "files", prefix="!", silence=5.0, quiet=0.1)
    await type_lines(chat, "/as admin", VISITORS)
    offer = sb.bot_messages()[-1]
    await type_lines(chat, f"/click {offer.id} 1")
    text = out.getvalue()
    for expected in (f"    [1: {WIFI}] [2: None of these]", f"trainer: {WORK.answer_of('guest_wifi')}",
                     "(only you can see this) trainer: Thanks! I've learned your wording: I'll answer it directly",
                     f"    [1: {WIFI}] (disabled) [2: None of these] (disabled)"):
        assert expected in text, f"{expected!r} not in:\n{text}"
    direct = await h.send("what's the wifi code for visitors?", quiet=0.1)
    assert [m.content for m in direct] == [WORK.answer_of("guest_wifi")]
    dialog, *said = await confirmed(h, "!forget me", user="admin")  # more than a few items: confirmed first
    assert "1 picks on offers" in dialog.content and "1 questions offered choices" in dialog.content
    forgot = said[0].content
    assert forgot.startswith("Forgot everything admin gave") and "1 picks on offers" in forgot
    assert records.list_picks(space_of(h)) == []
    again = await h.send(VISITORS, quiet=0.1)
    assert labels(again[0])[0] == WIFI  # offered again: the paraphrase went with its author
    # A member's pick rejected by its P- id: never used.
    await click(h, again[0].id, 1, "member")
    ref = records.pending_picks(space_of(h))[0].ref
    rejected = await h.ask(f"!reject {ref.lower()} not the same question", user="admin", quiet=0.1)
    assert rejected == f"Rejected `{ref}`: never used for answers or training. Reason kept: not the same question"
    assert [p.status for p in records.list_picks(space_of(h))] == ["rejected"]


async def test_none_of_these_goes_to_unanswered_and_an_admin_answers_it_in_a_modal(harness: BotHarness) -> None:
    h, sb = harness, harness.sandbox
    sb.add_user("colleague")
    await train(h)
    for user, text in (("member", VISITORS), ("colleague", "what is the wifi code for our visitors?")):
        offer = await offer_to(h, user, text)
        noted = await click(h, offer.id, len(labels(offer)), user)
        assert noted.messages[-1].content.startswith("Noted: I don't know that one yet")
    listing = await h.send("!unanswered", user="admin", quiet=0.1)
    assert listing[0].content.startswith("**1 unanswered question(s)**")
    assert "asked 2× by 2 members" in listing[0].content and labels(listing[0]) == [f"1. {VISITORS}"]
    refused = await click(h, listing[0].id, 1, "member")
    assert refused.messages[-1].content == "Only admins can answer these questions."
    real = listing[0].components[0]["components"][0]["custom_id"]
    row = int(real.rsplit(":", 1)[1])
    for forged in (f"tb:unans:{sb.guild_id + 1}:{row}", f"tb:unans:{sb.guild_id}:{row + 1000}"):
        told = await click(h, listing[0].id, 0, "admin", forged=forged)
        assert told.messages[-1].content == "That button isn't valid here. Nothing was recorded." and not told.modal
    opened = await click(h, listing[0].id, 1, "admin")
    assert opened.modal is not None
    on_screen = sb.interactions.open_modals[sb.admin.id]  # kept to submit it a second time
    loud = ("@everyone <@&" + str(sb.guild_id) + "> the code is on the badge. ") * 80
    loud = loud[:4000]
    saved = await h.answered(await sb.submit_modal("admin", answer=loud), quiet=0.1)
    assert all(m.ephemeral for m in saved.messages)
    fix = records.approved_corrections(space_of(h))
    assert [(c.prompt, c.correction) for c in fix] == [(VISITORS, loud.strip())]
    assert saved.messages[-1].content.startswith(f"Saved as correction `{fix[0].ref}`")
    # The same modal submitted again: refused, nothing more saved.
    resent = await h.answered(await sb.submit_modal("admin", {"answer": "another"}, resend=on_screen), quiet=0.1)
    assert "already answered" in resent.messages[-1].content and len(records.list_corrections(space_of(h))) == 1
    assert (await h.ask("!unanswered", user="admin", quiet=0.1)).startswith("No unanswered questions")
    answered = await h.send(VISITORS, user="colleague", quiet=0.1)
    # Said whole, mentions broken (a second guard beside allowed_mentions: servers such as Spacebar ignore it).
    assert "".join("".join(m.content for m in answered).split()) == "".join(no_pings(loud).split())
    assert nothing_pinged(sb)


async def test_forged_expired_and_restarted_clicks(sandbox: Sandbox, settings: Settings, error_log: Any) -> None:
    sb = sandbox
    bot = await start_bot(sb, settings)
    h = BotHarness(sb, bot)
    try:
        await train(h)
        kept = await offer_to(h, "member")
        expiring = await offer_to(h, "member")
        listing_before = await h.ask("!unanswered", user="admin", quiet=0.1)
        assert listing_before.startswith("No unanswered questions")
    finally:
        await stop_bot(bot)
    bot = await start_bot(sb, settings)
    h = BotHarness(sb, bot)
    try:
        # After a restart the buttons still work.
        await click(h, kept.id, 1, "member")
        assert any(m.content == WORK.answer_of("guest_wifi") for m in sb.bot_messages(after=kept.id))
        # Forged custom ids: another server's offer, a missing offer, an offer of another message.
        custom = sb.messages[expiring.id].components[0]["components"][0]["custom_id"]
        _, _, guild, asker, offer_id, _ = custom.split(":")
        for forged in (custom.replace(f":{guild}:", f":{int(guild) + 1}:"), f"tb:offer:{guild}:{asker}:999999:0",
                       custom.replace(f":{offer_id}:", f":{int(offer_id) - 1}:")):
            told = await click(h, expiring.id, 0, "member", forged=forged)
            assert told.messages[-1].ephemeral and "Nothing was recorded" in told.messages[-1].content
        assert len(records.list_picks(space_of(h))) == 1
        # Expired: the sweep disables the buttons; a click that was already on its way is refused.
        space = space_of(h)
        with space.db.tx() as tx:
            tx.execute("UPDATE offers SET expires_at = 0 WHERE guild_id = ? AND id = ?", (space.guild_id,
                                                                                          int(offer_id)))
        late = await click(h, expiring.id, 0, "member", forged=custom)
        assert late.messages[-1].content == "These buttons have expired: ask me again. Nothing was recorded."
        assert all(label.endswith("(disabled)") for label in labels(sb.messages[expiring.id]))
        assert picks.get_offer(space, int(offer_id)).closed  # type: ignore[union-attr]
        assert len(records.list_picks(space)) == 1
        # An offer nobody clicked: the sweep disables its buttons once it expired.
        swept = await offer_to(h, "member")
        with space.db.tx() as tx:
            tx.execute("UPDATE offers SET expires_at = 0 WHERE guild_id = ?", (space.guild_id,))
        assert await bot.get_cog("Offers").sweep_expired() == 1
        await sb.wait_for(lambda: all(x.endswith("(disabled)") for x in labels(sb.messages[swept.id])))
    finally:
        await stop_bot(bot)
