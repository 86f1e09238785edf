"""Several servers in one sandbox, each sent to the shard Discord would send it to.

Real discord.py ``AutoShardedClient``s log in: one per shard (as two bot processes over their shard
ranges would) or one running both shards. Each sees only the servers of its shards and their
events; DMs arrive on shard 0 only; ``GET /gateway/bot`` says how many shards to run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest

from sandbox.server import MANAGE_GUILD, Guild, Sandbox, shard_of
from tests.fakes.bare_client import bare_client


class Sharded(discord.AutoShardedClient):
    """Identifies all its shards at once: discord.py waits 5 s before each shard after the first
    (Discord's identify rate limit, which the sandbox does not have)."""

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        return None


class Inbox:
    """What a client was sent, in the order it came."""

    def __init__(self, client: discord.Client) -> None:
        self.messages: list[discord.Message] = []
        self._new = asyncio.Event()
        client.on_message = self._on_message  # type: ignore[attr-defined]  # what @client.event does

    async def _on_message(self, message: discord.Message) -> None:
        self.messages.append(message)
        self._new.set()

    @property
    def contents(self) -> list[str]:
        return [m.content for m in self.messages]

    async def wait_for(self, content: str) -> discord.Message:
        async with asyncio.timeout(10):
            while content not in self.contents:
                self._new.clear()
                await self._new.wait()
        return self.messages[self.contents.index(content)]


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    sandbox = Sandbox()
    sandbox.add_guild("Second")
    await sandbox.start()
    yield sandbox
    await sandbox.close()
    assert not sandbox.unimplemented


def on_shards(sb: Sandbox) -> dict[int, Guild]:
    """The two servers by their shard of two."""
    found = {shard_of(g.id, 2): g for g in sb.guilds.values()}
    assert sorted(found) == [0, 1], "the second server is on the other shard of two"
    return found


async def test_a_second_server_has_its_own_channels_and_the_same_members(sb: Sandbox) -> None:
    first, second = sb.guilds.values()
    assert first.id == sb.guild_id and first.text_channel is sb.text_channel and second.name == "Second"
    on_shards(sb)
    assert {(c.name, c.type) for c in sb.channels.values() if c.guild_id == second.id} == {("general", 0), ("Voice", 2)}
    data = sb.guild_payload(second)
    assert {r["name"] for r in data["roles"]} == {"@everyone", "Admins"}
    assert data["owner_id"] == str(sb.owner.id) and len(data["members"]) == len(sb.users)
    admins = next(r["id"] for r in data["roles"] if r["name"] == "Admins")
    roles = {m["user"]["username"]: m["roles"] for m in data["members"]}
    assert roles["admin"] == [admins] and roles["member"] == []  # the first server's Admins role is not here
    assert sb.permissions_for(sb.admin, second.text_channel) & MANAGE_GUILD
    assert not sb.permissions_for(sb.member, second.text_channel) & MANAGE_GUILD
    third = sb.add_guild("Third", shard=(2, 3))
    assert shard_of(third.id, 3) == 2 and third.id > second.id


async def test_each_shard_sees_only_its_servers(sb: Sandbox, monkeypatch: pytest.MonkeyPatch, error_log) -> None:
    guilds = on_shards(sb)
    async with (bare_client(sb, monkeypatch, cls=Sharded, shard_ids=[0], shard_count=2) as zero,
                bare_client(sb, monkeypatch, cls=Sharded, shard_ids=[1], shard_count=2) as one):
        assert isinstance(zero, discord.AutoShardedClient) and isinstance(one, discord.AutoShardedClient)
        for client, shard in ((zero, 0), (one, 1)):
            assert [g.id for g in client.guilds] == [guilds[shard].id] and client.guilds[0].shard_id == shard
            assert list(client.shards) == [shard] and client.shard_count == 2
        assert sb.identify_count == 2 and sorted(s.shard for s in sb.sessions.values()) == [(0, 2), (1, 2)]
        inbox = {0: Inbox(zero), 1: Inbox(one)}
        await sb.post_message("member", "a DM", channel=sb.dm_channel("member"))
        await sb.post_message("member", "to 1, first", guild=guilds[1])
        await sb.post_message("member", "to 0", guild=guilds[0])
        await sb.post_message("admin", "to 1", guild=guilds[1])
        # A message sent to the wrong shard would have come before the one each waits for.
        said = await inbox[1].wait_for("to 1")
        await inbox[0].wait_for("to 0")
        assert inbox[0].contents == ["a DM", "to 0"] and inbox[1].contents == ["to 1, first", "to 1"]
        assert said.guild.id == guilds[1].id and said.channel.name == "general"
        await said.channel.send("an answer from shard 1")
        (answer,) = sb.bot_messages()
        assert answer.guild_id == guilds[1].id and answer.channel_id == guilds[1].text_channel.id


@pytest.mark.parametrize("how", ["shard_count given", "asked of /gateway/bot"])
async def test_one_client_runs_both_shards(sb: Sandbox, monkeypatch: pytest.MonkeyPatch, error_log, how: str) -> None:
    guilds = on_shards(sb)
    kwargs: dict[str, Any] = {"shard_count": 2}
    if how != "shard_count given":
        sb.recommended_shards, kwargs = 2, {}
    async with bare_client(sb, monkeypatch, cls=Sharded, **kwargs) as client:
        assert isinstance(client, discord.AutoShardedClient)
        assert client.shard_count == 2 and sorted(client.shards) == [0, 1]
        assert {g.id: g.shard_id for g in client.guilds} == {guilds[0].id: 0, guilds[1].id: 1}
        inbox = Inbox(client)
        for shard in (0, 1):
            await sb.post_message("member", f"to {shard}", guild=guilds[shard])
        await inbox.wait_for("to 0")
        await inbox.wait_for("to 1")
    assert sb.identify_count == 2


async def test_an_unsharded_client_sees_every_server(sb: Sandbox, monkeypatch: pytest.MonkeyPatch, error_log) -> None:
    async with bare_client(sb, monkeypatch) as client:
        assert {g.id for g in client.guilds} == set(sb.guilds)


async def test_an_invalid_shard_is_refused(sb: Sandbox) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(sb.gateway_url) as ws:
        assert (await ws.receive_json())["op"] == 10  # HELLO
        await ws.send_json({"op": 2, "d": {"token": sb.bot_token, "intents": 0, "properties": {}, "shard": [2, 2]}})
        closed = await ws.receive()
        assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == 4010
    assert sb.identify_count == 0
