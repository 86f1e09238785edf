"""Discord's allowed_mentions rules in the sandbox, driven by discord.py's own payloads.

What each message pings is recorded (``Sandbox.notified``), ``mentions`` / ``mention_roles`` /
``mention_everyone`` come back as Discord fills them, and the terminal chat shows every ping."""

from __future__ import annotations

import io
from pathlib import Path

import discord
import pytest

from sandbox.chat import TerminalChat
from sandbox.server import MENTION_EVERYONE, VIEW_CHANNEL, Role, Sandbox
from tests.fakes.bare_client import bare_client


@pytest.fixture
async def sb() -> Sandbox:
    sandbox = Sandbox()
    sandbox.helpers = Role(sandbox.ids.next(), "Helpers", 0, 2, mentionable=True)
    sandbox.staff = Role(sandbox.ids.next(), "Staff", 0, 3)  # not mentionable
    for role in (sandbox.helpers, sandbox.staff):
        sandbox.roles[role.id] = role
    sandbox.admin.roles.append(sandbox.helpers.id)
    sandbox.member.roles.append(sandbox.staff.id)
    sandbox.private = sandbox.add_channel("private", 0, overwrites=[
        {"id": sandbox.guild_id, "type": 0, "deny": VIEW_CHANNEL},
        {"id": sandbox.admin.id, "type": 1, "allow": VIEW_CHANNEL},
        {"id": sandbox.bot_user.id, "type": 1, "allow": VIEW_CHANNEL},  # it posts there
    ])
    await sandbox.start()
    yield sandbox
    await sandbox.close()
    assert not sandbox.unimplemented


def ids(*users) -> set[int]:
    return {u.id for u in users}


async def test_without_allowed_mentions_everything_in_the_content_pings(sb: Sandbox, monkeypatch) -> None:
    async with bare_client(sb, monkeypatch) as client:
        channel = client.get_channel(sb.text_channel.id)
        sent = await channel.send(f"hi <@{sb.member.id}> and <@!{sb.admin.id}> <@{sb.member.id}>")
        assert sb.messages[sent.id].allowed_mentions is None
        assert sb.notified(sent.id) == ids(sb.member, sb.admin)
        assert [m.id for m in sent.mentions] == [sb.member.id, sb.admin.id]
        assert all(isinstance(m, discord.Member) for m in sent.mentions)
        # A reply pings the replied-to author unless told otherwise.
        question = await channel.fetch_message((await sb.post_message("owner", "question?")).id)
        reply = await question.reply("answer")
        assert sb.notified(reply.id) == ids(sb.owner) and [m.id for m in reply.mentions] == [sb.owner.id]
        quiet = await question.reply("answer", mention_author=False)
        assert sb.notified(quiet.id) == set() and quiet.mentions == []
        assert sb.messages[quiet.id].allowed_mentions == {"parse": ["everyone", "users", "roles"],
                                                          "replied_user": False}


async def test_client_default_none_pings_nobody(sb: Sandbox, monkeypatch) -> None:
    async with bare_client(sb, monkeypatch, allowed_mentions=discord.AllowedMentions.none()) as client:
        channel = client.get_channel(sb.text_channel.id)
        text = f"<@{sb.member.id}> <@&{sb.helpers.id}> @everyone"
        sent = await channel.send(text)
        assert sb.notified(sent.id) == set()
        assert sent.mentions == [] and sent.role_mentions == [] and not sent.mention_everyone
        # A ping the bot means: one user allowed for one message (discord.py merges it in).
        meant = await channel.send(f"<@{sb.member.id}> <@{sb.admin.id}>",
                                   allowed_mentions=discord.AllowedMentions(users=[discord.Object(sb.member.id)]))
        assert sb.notified(meant.id) == ids(sb.member) and [m.id for m in meant.mentions] == [sb.member.id]
        # Allowed but absent from the content: no phantom ping.
        phantom = await channel.send("nobody here",
                                     allowed_mentions=discord.AllowedMentions(users=[discord.Object(sb.owner.id)]))
        assert sb.notified(phantom.id) == set()


async def test_roles_and_everyone_follow_permissions(sb: Sandbox, monkeypatch) -> None:
    async with bare_client(sb, monkeypatch) as client:
        channel = client.get_channel(sb.text_channel.id)
        sent = await channel.send(f"<@&{sb.helpers.id}> <@&{sb.staff.id}> @everyone @here")
        # Helpers is mentionable; Staff is not and the bot may not Mention Everyone.
        assert sb.notified(sent.id) == ids(sb.admin)
        assert [r.id for r in sent.role_mentions] == [sb.helpers.id] and not sent.mention_everyone
    shouter = Role(sb.ids.next(), "Announcers", MENTION_EVERYONE, 4)
    sb.roles[shouter.id] = shouter
    sb.bot_user.roles.append(shouter.id)
    async with bare_client(sb, monkeypatch) as client:
        channel = client.get_channel(sb.text_channel.id)
        sent = await channel.send(f"<@&{sb.staff.id}>")
        assert sb.notified(sent.id) == ids(sb.member)
        everyone = await channel.send("@everyone release is out")
        assert everyone.mention_everyone
        humans = {u.id for u in sb.users.values() if u.in_guild and u is not sb.bot_user}
        assert sb.notified(everyone.id) == humans
        # Only the people who can see the channel are pinged, whatever the content says.
        private = client.get_channel(sb.private.id)
        hidden = await private.send(f"@here <@{sb.member.id}>")
        assert sb.notified(hidden.id) == ids(sb.admin, sb.owner)
        blocked = await channel.send("@everyone no", allowed_mentions=discord.AllowedMentions(everyone=False))
        assert sb.notified(blocked.id) == set()


async def test_edits_rebuild_mentions_and_record_new_pings(sb: Sandbox, monkeypatch, tmp_path: Path) -> None:
    out = io.StringIO()
    TerminalChat(sb, out=out, files_dir=tmp_path, prefix="!")
    async with bare_client(sb, monkeypatch, allowed_mentions=discord.AllowedMentions(everyone=False)) as client:
        channel = client.get_channel(sb.text_channel.id)
        sent = await channel.send(f"for <@{sb.member.id}>")
        assert f"[{sent.id}] trainer: for @member\n    (notifies: @member)\n" in out.getvalue()
        edited = await sent.edit(content=f"for <@{sb.member.id}> and <@{sb.admin.id}>")
        assert [m.id for m in edited.mentions] == [sb.member.id, sb.admin.id]
        assert sb.notified(sent.id) == ids(sb.member, sb.admin)
        assert sb.messages[sent.id].pinged == ids(sb.admin)
        assert out.getvalue().endswith(f"[{sent.id}] (edited) trainer: for @member and @admin\n"
                                       "    (notifies: @admin)\n")
        quiet = await channel.send(f"<@{sb.member.id}>", allowed_mentions=discord.AllowedMentions.none())
        assert out.getvalue().endswith(f"[{quiet.id}] trainer: @member\n")


async def test_refused_allowed_mentions(sb: Sandbox, monkeypatch) -> None:
    async with bare_client(sb, monkeypatch) as client:
        route = discord.http.Route("POST", "/channels/{channel_id}/messages", channel_id=sb.text_channel.id)
        for bad in ({"parse": ["users"], "users": [str(sb.member.id)]}, {"parse": ["nobody"]}):
            with pytest.raises(discord.HTTPException) as info:
                await client.http.request(route, json={"content": "x", "allowed_mentions": bad})
            assert info.value.status == 400 and info.value.code == 50035
        assert not sb.bot_messages()


async def test_people_reply_with_or_without_a_ping(sb: Sandbox) -> None:
    answer = await sb.post_message(sb.bot_user, "an answer")
    pinging = await sb.post_message("member", f"thanks <@{sb.admin.id}>", reply_to=answer.id)
    assert sb.messages[pinging.id].mentions == [sb.admin.id, sb.bot_user.id]
    assert sb.notified(pinging.id) == ids(sb.admin, sb.bot_user)
    quiet = await sb.post_message("member", "thanks", reply_to=answer.id, ping_reply=False)
    assert sb.messages[quiet.id].mentions == [] and sb.notified(quiet.id) == set()
    assert sb.message_payload(sb.messages[quiet.id])["mentions"] == []
