"""Reactions in the sandbox, through discord.py 2.7.1's own parsers and HTTP calls.

Gateway MESSAGE_REACTION_ADD/REMOVE/REMOVE_ALL/REMOVE_EMOJI with Discord's fields, the REST routes
behind ``add_reaction``/``remove_reaction``/``Reaction.users()``/``clear_reaction(s)``,
``reactions`` on message objects, the test-side ``react``/``unreact`` and the chat's /react."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest

from sandbox.chat import TerminalChat
from sandbox.server import MANAGE_MESSAGES, ReactionError, Role, Sandbox
from tests.fakes.bare_client import bare_client


class Recorder:
    """Every reaction event discord.py dispatches, raw and rich."""

    def __init__(self, client: discord.Client) -> None:
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()
        for name in ("raw_reaction_add", "raw_reaction_remove", "raw_reaction_clear", "raw_reaction_clear_emoji",
                     "reaction_add", "reaction_remove", "reaction_clear", "reaction_clear_emoji"):
            setattr(client, "on_" + name, self._make(name))  # what @client.event does

    def _make(self, name: str):
        async def listener(*args: Any) -> None:
            self.events.append((name, args))
            self._changed.set()
        return listener

    async def wait(self, name: str, count: int = 1) -> list[Any]:
        async with asyncio.timeout(5):
            while len(found := [a for n, a in self.events if n == name]) < count:
                self._changed.clear()
                await self._changed.wait()
        return found


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    sandbox = await Sandbox().start()
    yield sandbox
    await sandbox.close()
    assert not sandbox.unimplemented


async def test_people_react_to_the_bots_message(sb: Sandbox, monkeypatch, error_log) -> None:
    async with bare_client(sb, monkeypatch) as client:
        seen = Recorder(client)
        sent = await client.get_channel(sb.text_channel.id).send("an answer")  # cached by discord.py
        assert await sb.react(sb.member, sb.text_channel.id, sent.id, "👍")
        (raw,), = await seen.wait("raw_reaction_add")
        assert (raw.message_id, raw.channel_id, raw.guild_id, raw.user_id) == (
            sent.id, sb.text_channel.id, sb.guild_id, sb.member.id)
        assert raw.emoji.name == "👍" and raw.emoji.id is None and raw.event_type == "REACTION_ADD"
        assert raw.member is not None and raw.member.id == sb.member.id and raw.member.name == "member"
        assert raw.message_author_id == sb.bot_user.id and not raw.burst and raw.type == discord.ReactionType.normal
        (reaction, user), = await seen.wait("reaction_add")
        assert str(reaction.emoji) == "👍" and reaction.count == 1 and not reaction.me and user.id == sb.member.id
        # Reacting twice changes nothing; a second person counts.
        assert not await sb.react("member", sb.text_channel.id, sent.id, ":+1:")
        assert await sb.react("admin", sb.text_channel.id, sent.id, "👍")
        cached = (await seen.wait("reaction_add", 2))[1][0].message  # discord.py's cached copy
        assert [(str(r.emoji), r.count) for r in cached.reactions] == [("👍", 2)]
        fetched = await sent.channel.fetch_message(sent.id)
        assert [(str(r.emoji), r.count, r.me, r.normal_count) for r in fetched.reactions] == [("👍", 2, False, 2)]
        assert sorted([u.id async for u in fetched.reactions[0].users()]) == sorted([sb.member.id, sb.admin.id])
        # Discord pages reactors by user id (discord.py reverses each page when it yields them).
        first, second = sorted([sb.member.id, sb.admin.id])
        page = client.http.get_reaction_users
        assert [int(u["id"]) for u in await page(sb.text_channel.id, sent.id, "👍", 100)] == [first, second]
        assert [int(u["id"]) for u in await page(sb.text_channel.id, sent.id, "👍", 1)] == [first]
        assert [int(u["id"]) for u in await page(sb.text_channel.id, sent.id, "👍", 100, after=first)] == [second]
        assert await page(sb.text_channel.id, sent.id, "👍", 100, type=1) == []  # no super reactions
        # Taken back.
        assert await sb.unreact(sb.member, sb.text_channel.id, sent.id, "👍")
        (raw,), = await seen.wait("raw_reaction_remove")
        assert raw.user_id == sb.member.id and raw.member is None and raw.message_author_id is None
        # discord.py updated its copy (on_reaction_remove itself needs the members intent's cache).
        assert [(str(r.emoji), r.count) for r in cached.reactions] == [("👍", 1)]
        assert not await sb.unreact(sb.member, sb.text_channel.id, sent.id, "👍")
        assert sb.messages[sent.id].reactions == {"👍": [sb.admin.id]}


async def test_the_bots_own_reactions_and_clearing(sb: Sandbox, monkeypatch, error_log) -> None:
    async with bare_client(sb, monkeypatch) as client:
        seen = Recorder(client)
        posted = await sb.post_message("member", "please review")
        channel = client.get_channel(sb.text_channel.id)
        msg = await channel.fetch_message(posted.id)
        await msg.add_reaction("👀")
        await msg.add_reaction("✅")
        (raw,), _ = await seen.wait("raw_reaction_add", 2)
        assert raw.user_id == sb.bot_user.id and raw.message_author_id == sb.member.id
        assert list(sb.messages[posted.id].reactions) == ["👀", "✅"]
        again = await channel.fetch_message(posted.id)
        assert [(str(r.emoji), r.me) for r in again.reactions] == [("👀", True), ("✅", True)]
        await msg.remove_reaction("👀", client.user)  # DELETE .../@me
        await seen.wait("raw_reaction_remove")
        assert list(sb.messages[posted.id].reactions) == ["✅"]
        await sb.react("member", sb.text_channel.id, posted.id, "✅")
        # Others' reactions and clearing need Manage Messages, as on Discord.
        with pytest.raises(discord.Forbidden):
            await msg.remove_reaction("✅", discord.Object(sb.member.id))
        with pytest.raises(discord.Forbidden):
            await msg.clear_reactions()
        with pytest.raises(discord.NotFound):
            await channel.get_partial_message(123456789012345678).add_reaction("👍")
        with pytest.raises(discord.HTTPException) as info:
            await msg.add_reaction("nope")
        assert info.value.code == 10014


async def test_moderator_bot_removes_and_clears(monkeypatch, error_log) -> None:
    sandbox = Sandbox()
    mods = Role(sandbox.ids.next(), "Mods", MANAGE_MESSAGES, 2)
    sandbox.roles[mods.id] = mods
    sandbox.bot_user.roles.append(mods.id)
    sb = await sandbox.start()
    try:
        async with bare_client(sb, monkeypatch) as client:
            seen = Recorder(client)
            sent = await client.get_channel(sb.text_channel.id).send("vote")
            for user, emoji in (("member", "👍"), ("admin", "👍"), ("admin", "👎"), ("owner", "🎉")):
                await sb.react(user, sb.text_channel.id, sent.id, emoji)
            await seen.wait("reaction_add", 4)
            await sent.remove_reaction("👍", discord.Object(sb.member.id))
            (raw,), = await seen.wait("raw_reaction_remove")
            assert raw.user_id == sb.member.id
            await sent.clear_reaction("👎")
            (raw,), = await seen.wait("raw_reaction_clear_emoji")
            assert raw.emoji.name == "👎" and raw.message_id == sent.id and raw.guild_id == sb.guild_id
            assert list(sb.messages[sent.id].reactions) == ["👍", "🎉"]
            await sent.clear_reactions()
            (raw,), = await seen.wait("raw_reaction_clear")
            assert raw.message_id == sent.id and raw.channel_id == sb.text_channel.id
            (message, old), = await seen.wait("reaction_clear")
            assert [str(r.emoji) for r in old] == ["👍", "🎉"] and message.reactions == []
            assert sb.messages[sent.id].reactions == {}
    finally:
        await sb.close()
    assert not sb.unimplemented


async def test_dm_reactions_and_intents(sb: Sandbox, monkeypatch, error_log) -> None:
    dm = sb.dm_channel("member")
    async with bare_client(sb, monkeypatch) as client:
        seen = Recorder(client)
        posted = await sb.post_message("member", "hello bot", channel=dm)
        await sb.react("member", dm.id, posted.id, "❤️")
        (raw,), = await seen.wait("raw_reaction_add")
        assert raw.guild_id is None and raw.member is None and raw.channel_id == dm.id
        with pytest.raises(ReactionError, match="Missing Access"):
            await sb.react("admin", dm.id, posted.id, "❤️")  # not their conversation
    intents = discord.Intents.default()
    intents.message_content = True
    intents.reactions = False
    async with bare_client(sb, monkeypatch, intents=intents) as client:
        seen = Recorder(client)
        sent = await client.get_channel(sb.text_channel.id).send("quiet")
        await sb.react("member", sb.text_channel.id, sent.id, "👍")
        await asyncio.sleep(0.3)
        assert seen.events == [], "a client without the reactions intents got reaction events"


async def test_limits(sb: Sandbox) -> None:
    posted = await sb.post_message("member", "so many")
    faces = [chr(0x1F600 + i) for i in range(21)]
    for face in faces[:20]:
        await sb.react("admin", sb.text_channel.id, posted.id, face)
    with pytest.raises(ReactionError, match="Maximum number of reactions"):
        await sb.react("admin", sb.text_channel.id, posted.id, faces[20])
    await sb.react("member", sb.text_channel.id, posted.id, faces[0])  # an existing one is fine
    assert sb.messages[posted.id].reactions[faces[0]] == [sb.admin.id, sb.member.id]
    for bad in ("abc", "", "custom:123456789012345678", "<:x:1>"):
        with pytest.raises(ReactionError, match="Unknown Emoji"):
            await sb.react("admin", sb.text_channel.id, posted.id, bad)
    other = await sb.post_message("member", "pick one")
    for keycap in ("1️⃣", "#⃣"):
        assert await sb.react("admin", sb.text_channel.id, other.id, keycap)
    with pytest.raises(ReactionError, match="Unknown Message"):
        await sb.react("admin", sb.text_channel.id, 42, "👍")


async def test_chat_react_command(sb: Sandbox, monkeypatch, tmp_path: Path) -> None:
    out = io.StringIO()
    chat = TerminalChat(sb, out=out, files_dir=tmp_path, prefix="!")
    async with bare_client(sb, monkeypatch) as client:
        sent = await client.get_channel(sb.text_channel.id).send("an answer")
        await chat.handle(f"/react {sent.id} :-1:")
        assert out.getvalue().endswith(f"* member reacted 👎 to [{sent.id}]\n") and chat.posted
        assert sb.messages[sent.id].reactions == {"👎": [sb.member.id]}
        await chat.handle(f"/react {sent.id} 👎")
        assert out.getvalue().endswith(f"! you already reacted 👎 to [{sent.id}]\n")
        await chat.handle(f"/unreact {sent.id} 👎")
        assert out.getvalue().endswith(f"* member removed 👎 from [{sent.id}]\n")
        for line, error in ((f"/react {sent.id} thumbs", "! cannot react with thumbs: Unknown Emoji"),
                            ("/react 1 👍", "! no message 1"), ("/react 👍", "! usage: /react ID EMOJI")):
            await chat.handle(line)
            assert out.getvalue().endswith(error + "\n"), line
        posted = await sb.post_message("member", "thanks")
        msg = await sent.channel.fetch_message(posted.id)
        await msg.add_reaction("✅")
        assert out.getvalue().endswith(f"* trainer reacted ✅ to [{posted.id}]\n")
