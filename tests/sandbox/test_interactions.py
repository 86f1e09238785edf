"""The sandbox's interactions, driven by a small discord.py client with an app-command tree: command
registration, slash commands with typed options and files, context menus, buttons, modals, ephemeral
messages, defer and follow-up, Discord's 3-second and 15-minute rules, a second acknowledgement, the
Message Content intent, and the terminal chat's syntax for all of it."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands

from sandbox.chat import TerminalChat
from sandbox.server import InteractionRefused, Sandbox
from tests.fakes.bare_client import bare_client
from tests.harness import type_lines


class Buttons(discord.ui.View):
    def __init__(self, client: AppClient) -> None:
        super().__init__(timeout=None)
        self.client = client
        self.add_item(discord.ui.Button(label="Spent", custom_id="spent", disabled=True))

    @discord.ui.button(label="Yes", custom_id="yes")
    async def yes(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.client.seen.append(("yes", interaction.user.name))
        button.disabled = True
        await interaction.response.edit_message(content="chose yes", view=self)

    @discord.ui.button(label="Tell me", custom_id="tell")
    async def tell(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.send_message(f"only for {interaction.user.name}", ephemeral=True)


class Form(discord.ui.Modal, title="Correct this answer"):
    answer = discord.ui.TextInput(label="Right answer", custom_id="answer", max_length=4000,
                                  style=discord.TextStyle.paragraph)

    def __init__(self, client: AppClient) -> None:
        super().__init__()
        self.client = client

    async def on_submit(self, interaction: discord.Interaction) -> None:
        self.client.seen.append(("form", self.answer.value))
        await interaction.response.send_message(f"saved {len(self.answer.value)} characters", ephemeral=True)


class AppClient(discord.Client):
    """A bot with slash commands, context menus, a view and a modal, as the product cogs will use them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tree = app_commands.CommandTree(self)
        self.seen: list[tuple[str, Any]] = []
        self.messages: list[discord.Message] = []
        self.release = asyncio.Event()
        tree = self.tree

        @tree.command(description="Repeat text")
        @app_commands.describe(text="what to say", count="how often")
        async def echo(interaction: discord.Interaction, text: str, count: app_commands.Range[int, 1, 5] = 1,
                       file: discord.Attachment | None = None) -> None:
            extra = f" +{file.filename}:{len(await file.read())}" if file is not None else ""
            await interaction.response.send_message(" ".join([text] * count) + extra)

        @tree.command(description="Admins only")
        @app_commands.default_permissions(manage_guild=True)
        async def admin(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("admin ok")

        @tree.command(description="Ask with buttons")
        async def ask(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("pick one", view=Buttons(self))

        @tree.command(description="Open a form")
        async def form(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(Form(self))

        @tree.command(description="Think first")
        async def slow(interaction: discord.Interaction, secret: bool = False) -> None:
            await interaction.response.defer(thinking=True, ephemeral=secret)
            await asyncio.sleep(0.05)
            await interaction.followup.send("done thinking")
            await interaction.followup.send("and one more")

        @tree.command(description="Answers when released")
        async def late(interaction: discord.Interaction) -> None:
            await self.release.wait()
            try:
                await interaction.response.send_message("too late?")
            except discord.NotFound as exc:
                self.seen.append(("late", exc.code))
                return
            self.seen.append(("late", "sent"))

        @tree.command(description="Pick a fruit")
        async def fruit(interaction: discord.Interaction, name: str) -> None:
            await interaction.response.send_message(f"fruit {name}")

        @fruit.autocomplete("name")
        async def fruit_names(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=f, value=f) for f in ("apple", "apricot", "banana") if f.startswith(current)]

        group = app_commands.Group(name="model", description="Models")

        @group.command(name="list", description="List models")
        async def model_list(interaction: discord.Interaction, limit: int = 3) -> None:
            await interaction.response.send_message(f"models (limit {limit})")

        tree.add_command(group)

        @tree.command(description="Only in servers")
        @app_commands.guild_only()
        async def server(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("in a server")

        @tree.context_menu(name="Quote")
        async def quote(interaction: discord.Interaction, message: discord.Message) -> None:
            await interaction.response.send_message(f"quoted: {message.content}")

        @tree.context_menu(name="Wave")
        async def wave(interaction: discord.Interaction, user: discord.Member) -> None:
            await interaction.response.send_message(f"waved at {user.name}")

    async def on_message(self, message: discord.Message) -> None:
        self.messages.append(message)


async def until(predicate: Any, timeout: float = 10.0) -> None:
    """Wait for something the client sees (the sandbox's own wait_for wakes on sandbox events only)."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


async def sync(client: AppClient, sb: Sandbox) -> None:
    guild = discord.Object(sb.guild_id)
    client.tree.copy_global_to(guild=guild)
    await client.tree.sync(guild=guild)
    await client.tree.sync()


async def test_registration_slash_options_and_refusals(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path, error_log) -> None:
    async with bare_client(sandbox, monkeypatch, cls=AppClient) as client:
        await sync(client, sandbox)
        fetched = await client.tree.fetch_commands(guild=discord.Object(sandbox.guild_id))
        assert {c.name for c in fetched} >= {"echo", "admin", "ask", "form", "model", "Quote", "Wave"}
        admin = next(c for c in fetched if c.name == "admin")
        assert admin.default_member_permissions == discord.Permissions(manage_guild=True)
        # A bulk overwrite keeps the ids of commands that stay.
        before = {c.name: c.id for c in fetched}
        again = await client.tree.sync(guild=discord.Object(sandbox.guild_id))
        assert {c.name: c.id for c in again} == before

        # Discord's checks on registration.
        with pytest.raises(discord.HTTPException) as failure:
            await client.http.bulk_upsert_global_commands(client.application_id, payload=[
                {"name": "Bad Name", "description": "x", "type": 1}])
        assert failure.value.code == 50035 and "0.name: Command name is invalid" in str(failure.value)
        with pytest.raises(discord.HTTPException) as bad:
            await client.http.bulk_upsert_global_commands(client.application_id, payload=[
                {"name": "many", "description": "x" * 101, "type": 1,
                 "options": [{"name": f"o{i}", "description": "d", "type": 3} for i in range(26)]}])
        assert bad.value.code == 50035 and "description" in str(bad.value) and "options" in str(bad.value)

        # One command at a time: create (201), update by name (200, same id), get, edit, delete.
        app_id = client.application_id
        made = await client.http.upsert_global_command(app_id, {"name": "extra", "description": "one", "type": 1})
        same = await client.http.upsert_global_command(app_id, {"name": "extra", "description": "two", "type": 1})
        assert same["id"] == made["id"] and same["description"] == "two"
        edited = await client.http.edit_global_command(app_id, int(made["id"]), {"description": "three"})
        assert edited["description"] == "three" and edited["name"] == "extra"
        assert (await client.http.get_global_command(app_id, int(made["id"])))["description"] == "three"
        await client.http.delete_global_command(app_id, int(made["id"]))
        with pytest.raises(discord.NotFound):
            await client.http.get_global_command(app_id, int(made["id"]))

        # Typed options and an attachment option, resolved as Discord resolves them.
        note = tmp_path / "note.txt"
        note.write_bytes(b"hello file")
        inter = await sandbox.slash("member", "echo", text="hi", count="2", file=note)
        await sandbox.wait_for_response(inter)
        assert inter.response is not None and inter.response.content == "hi hi +note.txt:10"
        assert inter.response.type == 20 and inter.response.interaction_metadata["name"] == "echo"
        sub = await sandbox.wait_for_response(await sandbox.slash("member", "model list", limit=7))
        assert sub.response is not None and sub.response.content == "models (limit 7)"

        # What Discord's client refuses: wrong types, ranges, unknown options, missing permissions, DMs.
        for name, options, why in [
            ("echo", {"text": "hi", "count": "two"}, "whole number"),
            ("echo", {"text": "hi", "count": 9}, "at most 5"),
            ("echo", {"text": "hi", "colour": "red"}, "no option 'colour'"),
            ("echo", {}, "needs text"),
            ("model", {}, "subcommands: list"),
            ("nope", {}, "no /'nope'"),
        ]:
            with pytest.raises(InteractionRefused, match=why):
                await sandbox.slash("member", name, **options)
        with pytest.raises(InteractionRefused, match="permission"):
            await sandbox.slash("member", "admin")
        ok = await sandbox.wait_for_response(await sandbox.slash("admin", "admin"))
        assert ok.response is not None and ok.response.content == "admin ok"
        dm = sandbox.dm_channel("member")
        with pytest.raises(InteractionRefused, match="cannot be used in DMs"):
            await sandbox.slash("member", "server", in_channel=dm)
        in_dm = await sandbox.wait_for_response(await sandbox.slash("member", "echo", in_channel=dm, text="dm"))
        assert in_dm.response is not None and in_dm.response.channel_id == dm.id

        # Autocomplete and context menus.
        choices = await sandbox.wait_for_response(await sandbox.autocomplete("member", "fruit", "name", {"name": "ap"}))
        assert [c["value"] for c in choices.choices or []] == ["apple", "apricot"]
        posted = await sandbox.post_message("member", "remember this")
        quoted = await sandbox.wait_for_response(await sandbox.menu("admin", posted.id, "Quote"))
        assert quoted.response is not None and quoted.response.content == "quoted: remember this"
        waved = await sandbox.wait_for_response(await sandbox.menu("admin", "member", "Wave"))
        assert waved.response is not None and waved.response.content == "waved at member"


async def test_buttons_modals_ephemeral(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, error_log) -> None:
    async with bare_client(sandbox, monkeypatch, cls=AppClient) as client:
        await sync(client, sandbox)
        asked = await sandbox.wait_for_response(await sandbox.slash("member", "ask"))
        msg = asked.response
        assert msg is not None
        assert TerminalChat.button_lines(msg) == ["[1: Yes] [2: Tell me] [3: Spent] (disabled)"]
        with pytest.raises(InteractionRefused, match="disabled"):
            await sandbox.click("member", msg.id, 3)
        with pytest.raises(InteractionRefused, match="buttons 1 to 3"):
            await sandbox.click("member", msg.id, 4)
        clicked = await sandbox.wait_for_response(await sandbox.click("member", msg.id, 1))
        assert clicked.response is msg and msg.content == "chose yes" and client.seen[-1] == ("yes", "member")
        assert TerminalChat.button_lines(msg) == ["[1: Yes] (disabled) [2: Tell me] [3: Spent] (disabled)"]

        # Ephemeral: its user sees it; no gateway event, no history, no channel route knows it.
        told = await sandbox.wait_for_response(await sandbox.click("admin", msg.id, 2))
        secret = told.response
        assert secret is not None and secret.ephemeral and secret.visible_to == {sandbox.admin.id}
        assert secret in sandbox.ephemeral_messages("admin") and not sandbox.ephemeral_messages("member")
        history = [m.id async for m in client.get_channel(sandbox.text_channel.id).history(limit=20)]
        assert msg.id in history and secret.id not in history
        assert secret.id not in [m.id for m in client.messages]
        with pytest.raises(discord.NotFound):
            await client.get_channel(sandbox.text_channel.id).fetch_message(secret.id)

        # A modal: opened, filled (4000 characters), submitted once.
        opened = await sandbox.wait_for_response(await sandbox.slash("member", "form"))
        assert opened.modal is not None and sandbox.open_modals[sandbox.member.id].interaction is opened
        with pytest.raises(InteractionRefused, match="at most 4000"):
            await sandbox.submit_modal("member", answer="x" * 4001)
        with pytest.raises(InteractionRefused, match="no field 'wrong'"):
            await sandbox.submit_modal("member", wrong="x")
        sent = await sandbox.wait_for_response(await sandbox.submit_modal("member", answer="y" * 4000))
        assert client.seen[-1] == ("form", "y" * 4000)
        assert sent.response is not None and sent.response.content == "saved 4000 characters" and sent.response.ephemeral
        with pytest.raises(InteractionRefused, match="no modal is open"):
            await sandbox.submit_modal("member", answer="again")


async def test_defer_followup_and_discords_rules(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, error_log) -> None:
    async with bare_client(sandbox, monkeypatch, cls=AppClient) as client:
        await sync(client, sandbox)
        # Deferred ("thinking"), then follow-ups: the first fills in the thinking message.
        slow = await sandbox.wait_for_response(await sandbox.slash("member", "slow"))
        await sandbox.wait_for(lambda: len(slow.messages) == 2)
        assert [m.content for m in slow.messages] == ["done thinking", "and one more"]
        assert not slow.messages[0].ephemeral and slow.messages[0].edited is None
        hidden = await sandbox.wait_for_response(await sandbox.slash("member", "slow", secret=True))
        await sandbox.wait_for(lambda: len(hidden.messages) == 2)
        assert hidden.messages[0].ephemeral and not hidden.messages[1].ephemeral

        # A second acknowledgement is refused (40060).
        url = f"{sandbox.api_base}/interactions/{slow.id}/{slow.token}/callback"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"type": 4, "data": {"content": "again"}}) as resp:
                assert resp.status == 400 and (await resp.json())["code"] == 40060
            # The token works for 15 minutes, then fails (401 Invalid Webhook Token).
            now = [sandbox.interaction_clock()]
            sandbox.interaction_clock = lambda: now[0]
            hook = f"{sandbox.api_base}/webhooks/{sandbox.application_id}/{slow.token}"
            now[0] += 14 * 60
            async with http.post(hook, json={"content": "still in time"}) as resp:
                assert resp.status == 200
            now[0] += 2 * 60
            async with http.post(hook, json={"content": "too late"}) as resp:
                assert resp.status == 401 and (await resp.json())["code"] == 50027
            async with http.patch(hook + "/messages/@original", json={"content": "too late"}) as resp:
                assert resp.status == 401

        # A first response after 3 seconds fails as Discord's does (404 Unknown interaction, 10062).
        late = await sandbox.slash("member", "late")
        now[0] += 3.5
        client.release.set()
        await until(lambda: ("late", 10062) in client.seen)
        assert late.refused == [("Unknown interaction", 10062)] and late.response is None


async def test_message_content_intent(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, error_log) -> None:
    intents = discord.Intents.default()  # no Message Content
    async with bare_client(sandbox, monkeypatch, cls=AppClient, intents=intents) as client:
        await sync(client, sandbox)
        ch = client.get_channel(sandbox.text_channel.id)
        mine = await ch.send("the bot's own")
        plain = await sandbox.post_message("member", "secret words", attachments=[("a.txt", b"abc", "text/plain")])
        mention = await sandbox.post_message("member", f"<@{sandbox.bot_user.id}> hello bot")
        reply = await sandbox.post_message("member", "a reply", reply_to=mine.id, ping_reply=False)
        dm = await sandbox.post_message("member", "in a dm", channel=sandbox.dm_channel("member"))
        await until(lambda: len(client.messages) >= 5)
        got = {m.id: m for m in client.messages}
        assert got[plain.id].content == "" and got[plain.id].attachments == []
        assert got[mention.id].content.endswith("hello bot")
        assert got[reply.id].content == "a reply"
        assert got[dm.id].content == "in a dm"
        assert got[mine.id].content == "the bot's own"
        # A message command's target carries its content without the intent.
        quoted = await sandbox.wait_for_response(await sandbox.menu("admin", plain.id, "Quote"))
        assert quoted.response is not None and quoted.response.content == "quoted: secret words"

    # With the intent switched off for the application, asking for it is refused (4014).
    sandbox.message_content_enabled = False
    with_intent = discord.Intents.default()
    with_intent.message_content = True
    with pytest.raises(discord.PrivilegedIntentsRequired):
        async with bare_client(sandbox, monkeypatch, intents=with_intent):
            pass


async def test_terminal_chat_interactions(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          error_log) -> None:
    note = tmp_path / "data.csv"
    note.write_bytes(b"q,a\n")
    async with bare_client(sandbox, monkeypatch, cls=AppClient) as client:
        await sync(client, sandbox)
        out = io.StringIO()
        chat = TerminalChat(sandbox, out=out, files_dir=tmp_path / "files", prefix="!", silence=2.0, quiet=0.2)
        lines = ["/help", "/slash echo text=hello count=2", f"/slash echo text=up file={note}", "/slash ask",
                 "/slash echo count=x text=a", "/slash form", "/modal answer='my answer'", "/modal answer=x",
                 "/slash slow secret=true"]
        await type_lines(chat, *lines)
        text = out.getvalue()
        ask_id = next(m.id for m in sandbox.bot_messages() if m.content == "pick one")
        await type_lines(chat, f"/click {ask_id} 1")
        posted = await sandbox.post_message("member", "quote me")
        await type_lines(chat, f'/menu {posted.id} "Quote"')
        await chat.handle(f"/click {ask_id} 3")
        # A click the bot does not answer (a forged custom_id no view knows) fails in the user's client.
        sandbox.interaction_deadline = 0.3
        forged = await sandbox.click("member", ask_id, forged_custom_id="ghost")
        await sandbox.wait_for(lambda: forged.failed, timeout=5)
        text = out.getvalue()
    for expected in ["/click ID N", "/slash NAME key=value", "/menu ID", "/modal field=value",
                     "trainer: hello hello", "trainer: up +data.csv:4", "    [1: Yes] [2: Tell me] [3: Spent] (disabled)",
                     "! /echo: count must be a whole number", "opened a form for member: Correct this answer",
                     "    answer: Right answer (required, at most 4000 characters)",
                     "(only you can see this) trainer: saved 9 characters", "! no modal is open",
                     "(only you can see this) trainer: done thinking", "(edited) trainer: chose yes",
                     "    [1: Yes] (disabled) [2: Tell me] [3: Spent] (disabled)", "trainer: quoted: quote me",
                     "! button 3 is disabled", "! The application did not respond (the interaction)"]:
        assert expected in text, f"{expected!r} not in:\n{text}"


async def test_world_keeps_commands_and_buttons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error_log) -> None:
    world = tmp_path / "world.json"
    sb = await Sandbox(world_file=world).start()
    try:
        async with bare_client(sb, monkeypatch, cls=AppClient) as client:
            await sync(client, sb)
            asked = await sb.wait_for_response(await sb.slash("member", "ask"))
            told = await sb.wait_for_response(await sb.click("member", asked.response.id, 2))
    finally:
        await sb.close()
    again = Sandbox(world_file=world)
    assert {c.name for c in again.commands} == {c.name for c in sb.commands}
    kept = again.messages[asked.response.id]
    assert TerminalChat.button_lines(kept) == ["[1: Yes] [2: Tell me] [3: Spent] (disabled)"]
    assert kept.interaction_metadata is not None and told.response.id not in again.messages  # ephemeral: gone
