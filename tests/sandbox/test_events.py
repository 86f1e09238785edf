"""sandbox/events.py end to end: roles, channels, members, threads and servers that change while the bot runs
reach it as Discord's gateway events, and the bot acts on them at once (admin rights, threads, DMs with two
servers)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import discord
import pytest

from config import Settings
from sandbox.server import MANAGE_GUILD, MANAGE_MESSAGES, SEND_MESSAGES, VIEW_CHANNEL, Guild, Sandbox
from tests.fakes.bare_client import bare_client
from tests.harness import STARTED, BotHarness, start_bot, stop_bot

REFUSED = "You need the **Manage Server** permission"
QUIET = 0.05  # every command here gets one reply: no need to wait long for more


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Wait until ``predicate()`` (about the bot's own cache, which the sandbox is not told of) is truthy."""
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
    return found


def backlog_events(sb: Sandbox) -> list[str]:
    """The names of the events every bot session was sent, in order."""
    return [frame["t"] for session in sb.sessions.values() for frame in session.backlog]


async def train_in(h: BotHarness, guild: Guild | int | None, pairs: list[tuple[str, str]]) -> None:
    """Train the local model of one server on (question, answer) pairs, as its admin, and wait for it."""
    data = "".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                   + "\n" for q, a in pairs)
    sb = h.sandbox
    msg = await sb.post_message("admin", "!train", guild=guild, attachments=[("qa.jsonl", data.encode(), None)])
    started = await sb.wait_for(
        lambda: next((m for m in sb.bot_messages(msg.channel_id, after=msg.id) if STARTED.search(m.content)), None))
    job_id = STARTED.search(started.content).group(1)  # type: ignore[union-attr]
    await sb.wait_for(lambda: any(m.content.startswith(f"Training job `{job_id}` succeeded")
                                  for m in sb.bot_messages(msg.channel_id, after=msg.id)), timeout=20)


async def test_a_member_who_loses_the_trainer_role_loses_admin_commands_at_once(
        sandbox: Sandbox, settings: Settings, error_log: Any) -> None:
    sb = sandbox
    bot = await start_bot(sb, dataclasses.replace(settings, trainer_role="Trainer"))
    try:
        h = BotHarness(sb, bot)
        guild = bot.get_guild(sb.guild_id)
        assert REFUSED in await h.ask("!review", quiet=QUIET)
        trainer = await sb.create_role("Trainer")
        await until(lambda: guild.get_role(trainer.id) is not None)  # GUILD_ROLE_CREATE reached it
        assert await sb.give_role("member", "Trainer")
        assert await h.ask("!review", quiet=QUIET) == "No corrections are waiting for review."
        assert await sb.take_role("member", "Trainer")
        assert REFUSED in await h.ask("!review", quiet=QUIET)  # the very next command
        # Without the members intent the bot is sent no one's GUILD_MEMBER_UPDATE but its own.
        assert "GUILD_MEMBER_UPDATE" not in backlog_events(sb)

        # A role's permissions change (GUILD_ROLE_UPDATE): the admins lose Manage Server, then get it back.
        admins = sb.role_named("Admins")
        assert await h.ask("!review", quiet=QUIET, user="admin") == "No corrections are waiting for review."
        await sb.update_role(admins, permissions=admins.permissions & ~MANAGE_GUILD)
        assert REFUSED in await h.ask("!review", quiet=QUIET, user="admin")
        await sb.update_role(admins, permissions=admins.permissions | MANAGE_GUILD)
        assert await h.ask("!review", quiet=QUIET, user="admin") == "No corrections are waiting for review."

        # A deleted role (GUILD_ROLE_DELETE) grants nothing any more.
        await sb.give_role("member", trainer)
        assert await h.ask("!review", quiet=QUIET) == "No corrections are waiting for review."
        await sb.delete_role(trainer)
        await until(lambda: guild.get_role(trainer.id) is None)
        assert trainer.id not in sb.member.roles
        assert REFUSED in await h.ask("!review", quiet=QUIET)
    finally:
        await stop_bot(bot)


async def test_channel_changes_reach_the_bot(harness: BotHarness) -> None:
    h, sb = harness, harness.sandbox
    guild = h.bot.get_guild(sb.guild_id)
    random = await sb.create_channel("random")
    await until(lambda: isinstance(guild.get_channel(random.id), discord.TextChannel))
    assert "Hi member!" in await h.ask("!hi", quiet=QUIET, channel=random)

    # An overwrite on #general (CHANNEL_UPDATE): the bot's cache sees it may not send there, then may again.
    general = guild.get_channel(sb.text_channel.id)
    await sb.set_permissions(sb.text_channel, sb.bot_user, deny=SEND_MESSAGES)
    await until(lambda: not general.permissions_for(guild.me).send_messages)
    await sb.set_permissions(sb.text_channel, sb.bot_user, clear=SEND_MESSAGES)
    await until(lambda: general.permissions_for(guild.me).send_messages)
    assert sb.text_channel.overwrites == []  # an overwrite with nothing left in it goes
    # A channel the bot may not view: Discord sends it none of its messages.
    await sb.set_permissions(sb.text_channel, sb.bot_user, deny=VIEW_CHANNEL)
    await h.silent("!hi", wait=0.3)
    assert not any(f["t"] == "MESSAGE_CREATE" and f["d"]["id"] == str(max(sb.messages))
                   for s in sb.sessions.values() for f in s.backlog)
    await sb.set_permissions(sb.text_channel, sb.bot_user, clear=VIEW_CHANNEL)
    assert "Hi member!" in await h.ask("!hi", quiet=QUIET)

    # The bot is always told of its own member's changes (GUILD_MEMBER_UPDATE), without the members intent.
    mods = await sb.create_role("Mods", MANAGE_MESSAGES)
    await sb.give_role(sb.bot_user, mods)
    await until(lambda: guild.me.guild_permissions.manage_messages)
    await sb.take_role(sb.bot_user, mods)
    await until(lambda: not guild.me.guild_permissions.manage_messages)

    await sb.rename_channel(random, "off-topic")
    await until(lambda: guild.get_channel(random.id).name == "off-topic")
    await sb.delete_channel(random)
    await until(lambda: guild.get_channel(random.id) is None)
    assert random.id not in sb.channels


async def test_answers_and_commands_work_in_threads(harness: BotHarness) -> None:
    h, sb = harness, harness.sandbox
    thread = await sb.create_thread("member", "Shop hours?")
    bot_thread = await until(lambda: h.bot.get_channel(thread.id))
    assert isinstance(bot_thread, discord.Thread) and bot_thread.parent_id == sb.text_channel.id
    assert bot_thread.owner_id == sb.member.id and bot_thread.name == "Shop hours?"

    # A thread of a chat channel is a chat place: questions are answered there, as replies.
    said = await h.send("When does the shop open?", quiet=QUIET, channel=thread)
    assert said[0].channel_id == thread.id and said[0].reference_id == h.last_posted.id
    assert "haven't been trained" in said[0].content
    assert "Hi member!" in await h.ask("!hi", quiet=QUIET, channel=thread)
    assert thread.message_count == 4 and thread.payload()["message_count"] == 4  # type: ignore[typeddict-item]
    assert not sb.bot_messages(sb.text_channel.id, after=h.last_posted.id)  # nothing went to #general

    # A thread of another channel is left alone, as its channel is, unless the bot is mentioned.
    random = await sb.create_channel("random")
    aside = await sb.create_thread("member", "aside", random)
    await until(lambda: h.bot.get_channel(aside.id))
    await h.silent("When does the shop open?", channel=aside, wait=0.5)
    said = await h.send(f"<@{sb.bot_user.id}> when does the shop open?", quiet=QUIET, channel=aside)
    assert said[0].channel_id == aside.id

    # A thread outlives a bot restart: GUILD_CREATE lists it.
    assert str(thread.id) in [t["id"] for t in sb.guild_payload()["threads"]]


async def test_a_dm_is_answered_by_the_one_server_its_author_shares(harness: BotHarness) -> None:
    """Two servers, each with its own model: a DM from a member of one gets that one's answer, a DM from a
    member of both is told why it gets none, and a member who moves gets the new server's answer."""
    h, sb = harness, harness.sandbox
    second = await sb.join_guild("Second", members=[sb.admin])  # the bot is added to a second server
    await until(lambda: h.bot.get_guild(second.id))
    assert sb.is_member(sb.admin, second.id) and not sb.is_member(sb.member, second.id)
    await train_in(h, None, [("When does the shop open?", "At 9 am (first server).")])
    await train_in(h, second, [("When does the shop open?", "At noon (second server).")])
    assert (await h.send("When does the shop open?", quiet=QUIET))[0].content == "At 9 am (first server)."
    assert (await h.send("When does the shop open?", quiet=QUIET, guild=second))[0].content == "At noon (second server)."

    member_dm, admin_dm = sb.dm_channel("member"), sb.dm_channel("admin")
    assert await h.ask("when does the shop open", quiet=QUIET, channel=member_dm) == "At 9 am (first server)."
    assert "we share none or several" in await h.ask("when does the shop open", quiet=QUIET, user="admin", channel=admin_dm)

    # The member leaves the first server and joins the second: their DMs are the second server's now.
    assert await sb.remove_member("member")
    assert await sb.add_member("member", second)
    assert await h.ask("when does the shop open", quiet=QUIET, channel=member_dm) == "At noon (second server)."
    # Neither event reaches a bot without the members intent.
    assert not {"GUILD_MEMBER_ADD", "GUILD_MEMBER_REMOVE"} & set(backlog_events(sb))

    # The bot removed from the second server: gone for it (GUILD_DELETE), and none of its events reach it;
    # invited back, it gets the server again (GUILD_CREATE) and answers there.
    assert await sb.remove_member(sb.bot_user, second)
    await until(lambda: h.bot.get_guild(second.id) is None)
    await h.silent("!hi", guild=second, wait=0.3)
    assert await sb.add_member(sb.bot_user, second)
    await until(lambda: h.bot.get_guild(second.id))
    assert "Hi member!" in await h.ask("!hi", quiet=QUIET, guild=second)


async def test_member_events_reach_a_client_with_the_members_intent(sandbox: Sandbox, error_log: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sb = sandbox
    intents = discord.Intents.default()
    intents.members = True
    async with bare_client(sb, monkeypatch, intents=intents) as client:
        guild = client.get_guild(sb.guild_id)
        assert guild is not None and guild.get_member(sb.member.id) is not None
        trainer = await sb.create_role("Trainer")
        await sb.give_role("member", trainer)
        await until(lambda: trainer.id in [r.id for r in guild.get_member(sb.member.id).roles])
        await sb.remove_member("member")
        await until(lambda: guild.get_member(sb.member.id) is None)
        await sb.add_member("member")
        await until(lambda: guild.get_member(sb.member.id))
        assert trainer.id not in sb.member.roles  # leaving a server drops its roles
        assert backlog_events(sb)[-4:] == ["GUILD_ROLE_CREATE", "GUILD_MEMBER_UPDATE", "GUILD_MEMBER_REMOVE",
                                           "GUILD_MEMBER_ADD"]
