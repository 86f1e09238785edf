"""A bare discord.py client logged into a sandbox: for tests of the sandbox itself (no cogs, no bot.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import discord
import pytest
import yarl

from sandbox.server import Sandbox


@asynccontextmanager
async def bare_client(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, *, intents: discord.Intents | None = None,
                      cls: type[discord.Client] = discord.Client, **kwargs) -> AsyncIterator[discord.Client]:
    """``discord.Client`` (or ``cls``, e.g. an ``AutoShardedClient``) connected to ``sandbox`` (REST base
    and gateway patched for the test only); ``kwargs`` go to the client."""
    monkeypatch.setattr(discord.http.Route, "BASE", sandbox.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(sandbox.gateway_url))
    if intents is None:
        intents = discord.Intents.default()
        intents.message_content = True
    client = cls(intents=intents, guild_ready_timeout=0.1, **kwargs)
    runner = asyncio.create_task(client.start(sandbox.bot_token))
    try:
        ready = asyncio.create_task(client.wait_until_ready())
        done, _ = await asyncio.wait({ready, runner}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if runner in done:
            runner.result()
        assert ready in done, "client did not become ready"
        yield client
    finally:
        await client.close()
        try:
            await asyncio.wait_for(runner, 10)
        except asyncio.CancelledError:
            pass
