"""The bot under Discord's rules, as the sandbox now enforces them: channels where it may not post
(403), and a burst of questions paced by the rate limits (429)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from config import Settings
from sandbox.ratelimit import RateLimits
from sandbox.server import READ_MESSAGE_HISTORY, SEND_MESSAGES, Sandbox
from tests.harness import BotHarness, start_bot, stop_bot

REFUSED = "not allowed to post in"


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if REFUSED in r.getMessage()]


async def eventually(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate`` (what it waits for wakes no sandbox condition: a log line)."""
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not within the timeout")


def forbidden_answers(sb: Sandbox) -> list[str]:
    return [f"{a.method} {a.route}" for a in sb.rest.responses or [] if a.status == 403]


async def test_a_channel_where_it_may_not_post_gets_one_log_line_and_no_retries(
        sandbox: Sandbox, settings: Settings, error_log: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    bot_id = sandbox.bot_user.id
    muted = sandbox.add_channel("chat", 0, overwrites=[{"id": bot_id, "type": 1, "deny": SEND_MESSAGES}])
    vault = sandbox.add_channel("vault", 0, overwrites=[{"id": bot_id, "type": 1, "deny": READ_MESSAGE_HISTORY}])
    bot = await start_bot(sandbox, settings)
    try:
        h = BotHarness(sandbox, bot)
        # Known from the start: the bot reads the question, sees it may not answer, and sends nothing.
        for text in ("When does the shop open?", "Hello?", "!hi"):
            await h.silent(text, channel=muted, wait=0.5)
        assert forbidden_answers(sandbox) == []
        assert len(refusals(caplog)) == 1 and str(muted.id) in refusals(caplog)[0]

        # Where it may post but not read the history, !correct cannot look at the message it names
        # (Discord's 403), and says so without guessing whose it is.
        theirs = await sandbox.post_message("member", "a message of mine", channel=vault)
        said = await h.ask(f"!correct {theirs.id} the right answer", channel=vault)
        assert said.startswith(f"I have no answer with id `{theirs.id}`")
        assert forbidden_answers(sandbox) == ["GET /channels/{channel_id}/messages/{message_id}"]

        # Changed behind its back (no CHANNEL_UPDATE reaches it): Discord's 403 is met once per message,
        # never retried, and the log still says it once.
        sandbox.text_channel.overwrites.append({"id": bot_id, "type": 1, "deny": SEND_MESSAGES})
        for text in ("When does the shop open?", "Anyone there?", "!hi"):
            await h.silent(text, wait=0.5)
        assert len(forbidden_answers(sandbox)) == 1 + 3
        assert len(refusals(caplog)) == 2 and str(sandbox.text_channel.id) in refusals(caplog)[1]
        assert not [r for r in caplog.records if r.exc_info], "no traceback"

        # Allowed again: it answers as before.
        sandbox.text_channel.overwrites.clear()
        assert (await h.send("When does the shop open?"))[0].content
    finally:
        await stop_bot(bot)


async def test_a_thumbs_down_where_it_may_no_longer_post_is_only_logged(
        harness: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    h, sb = harness, harness.sandbox
    caplog.set_level(logging.WARNING)
    [answer] = await h.send("When does the shop open?")
    sb.text_channel.overwrites.append({"id": sb.bot_user.id, "type": 1, "deny": SEND_MESSAGES})
    await sb.react("member", sb.text_channel.id, answer.id, "👎")
    await eventually(lambda: any("could not ask for the right answer" in r.getMessage() for r in caplog.records))
    assert forbidden_answers(sb) == ["POST /channels/{channel_id}/messages"]
    assert sb.bot_messages(after=answer.id) == []


async def test_a_burst_of_questions_is_answered_in_order_paced_by_rate_limits(
        settings: Settings, error_log: Any) -> None:
    """50 questions at once in one channel: Discord's limits (5 messages per 5 s per channel, 50 requests
    per second) in windows a tenth as long; every answer arrives, in order, none lost."""
    sandbox = await Sandbox(rate_limits=RateLimits.discord().scaled(0.1)).start()
    bot = await start_bot(sandbox, settings)
    try:
        questions = [await sandbox.post_message("member", f"Question number {i}?") for i in range(50)]
        answers = await sandbox.wait_for_bot_message(sandbox.text_channel.id, after=questions[0].id - 1,
                                                     count=50, timeout=60)
        await asyncio.sleep(0.3)  # and no more than that
        answers = sandbox.bot_messages(sandbox.text_channel.id, after=questions[0].id - 1)
        assert [a.reference_id for a in answers] == [q.id for q in questions]
        assert all(a.content for a in answers)
        # Paced: never more than 5 of them in any window of the bucket.
        assert [a.status for a in sandbox.rest.responses or []].count(200) >= 50
    finally:
        await stop_bot(bot)
        await sandbox.close()
