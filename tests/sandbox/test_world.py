"""The sandbox's persistent world: the same world file gives the same server, users, ids, messages,
reactions and files on the next run; a damaged file is set aside and a new world begins; /reset."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import discord
import pytest

from config import Settings
from sandbox import world as world_module
from sandbox.chat import TerminalChat
from sandbox.server import SEND_MESSAGES, Sandbox
from sandbox.world import FORMAT, WorldFile
from tests.fakes.bare_client import bare_client
from tests.harness import BotHarness, start_bot, stop_bot

NOT_TRAINED = "I haven't been trained on this server yet."


def every_id(sb: Sandbox) -> set[int]:
    return ({sb.guild_id, sb.application_id} | set(sb.users) | set(sb.channels) | set(sb.roles) | set(sb.messages)
            | {a.id for m in sb.messages.values() for a in m.attachments})


async def test_a_world_comes_back_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error_log) -> None:
    path = tmp_path / "sandbox_files" / "world.json"
    first = await Sandbox(world_file=path).start()
    assert path.exists(), "a new world is saved at its first start"
    random = first.add_channel("random", 0)
    helper = first.add_user("helper")
    data = bytes(range(256)) * 40
    upload = await first.post_message("member", "my data", attachments=[("data.bin", data, "application/octet-stream")])
    async with bare_client(first, monkeypatch, allowed_mentions=discord.AllowedMentions(everyone=False)) as client:
        channel = client.get_channel(first.text_channel.id)
        question = await channel.fetch_message(upload.id)
        answer = await question.reply(f"thanks <@{first.admin.id}>", file=discord.File(io.BytesIO(b"report"), "r.txt"))
        await answer.edit(content=f"thanks <@{first.admin.id}>, edited")
        await question.add_reaction("👀")
        gone = await channel.send("oops")
        await gone.delete()
    await first.react("member", first.text_channel.id, answer.id, "👍")
    dm = first.dm_channel(helper)
    await first.post_message(helper, "private note", channel=dm)
    before = {
        "ids": every_id(first), "guild": first.guild_id, "bot": first.bot_user.id, "member": first.member.id,
        "messages": {m.id: (m.channel_id, m.author.id, m.content, m.reference_id, m.deleted, m.edits,
                            dict(m.reactions), sorted(m.notified), [(a.filename, a.size) for a in m.attachments])
                     for m in first.messages.values()},
    }
    await first.close()

    second = await Sandbox(world_file=path).start()
    try:
        assert second.world_loaded and second.world_note is None
        assert (second.guild_id, second.bot_user.id, second.member.id) == (before["guild"], before["bot"],
                                                                            before["member"])
        assert second.user_named("helper").id == helper.id and random.id in second.channels
        assert second.dm_channel("helper").id == dm.id
        after = {m.id: (m.channel_id, m.author.id, m.content, m.reference_id, m.deleted, m.edits,
                        dict(m.reactions), sorted(m.notified), [(a.filename, a.size) for a in m.attachments])
                 for m in second.messages.values()}
        assert after == before["messages"]
        assert second.messages[answer.id].reactions == {"👍": [second.member.id]}
        assert second.notified(answer.id) == {second.admin.id, second.member.id}  # the reply pinged its author
        # New ids come after every id of the saved world.
        assert second.ids.next() > max(before["ids"])
        fresh = await second.post_message("member", "next day")
        assert fresh.id > max(before["ids"])
        # The bot finds the same server, history and files (served from the world's folder).
        async with bare_client(second, monkeypatch) as client:
            assert [g.id for g in client.guilds] == [before["guild"]]
            channel = client.get_channel(second.text_channel.id)
            history = [m async for m in channel.history(limit=10, oldest_first=True)]
            assert [m.id for m in history] == [upload.id, answer.id, fresh.id]
            assert await history[0].attachments[0].read() == data
            assert await history[1].attachments[0].read() == b"report"
            assert history[1].reference.message_id == upload.id and history[1].edited_at is not None
            assert [(str(r.emoji), r.count) for r in history[1].reactions] == [("👍", 1)]
            assert [(str(r.emoji), r.me) for r in history[0].reactions] == [("👀", True)]
            assert [u.id for u in history[1].mentions] == [second.admin.id, second.member.id]
    finally:
        await second.close()
    saved = json.loads(path.read_text())
    assert saved["format"] == FORMAT and saved["guild_id"] == before["guild"]
    assert fresh.id in {m["id"] for m in saved["messages"]}, "changes are saved by close() at the latest"


async def test_ids_keep_increasing_when_the_clock_steps_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "world.json"
    first = await Sandbox(world_file=path).start()
    last = (await first.post_message("member", "late")).id
    await first.close()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)  # an hour back
    second = await Sandbox(world_file=path).start()
    try:
        assert second.guild_id == first.guild_id
        ids = [(await second.post_message("member", f"m{i}")).id for i in range(3)]
        assert ids[0] > last and ids == sorted(set(ids))
    finally:
        await second.close()


async def test_a_second_server_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "world.json"
    first = Sandbox(world_file=path)
    second_guild = first.add_guild("Second")
    await first.start()
    posted = await first.post_message("admin", "in the second server", guild=second_guild)
    before = {g.id: (g.name, g.owner_id, g.text_channel.id, g.voice_channel.id) for g in first.guilds.values()}
    roles = {r.id: first.state.role_guild(r) for r in first.roles.values()}
    await first.close()
    again = await Sandbox(world_file=path).start()
    try:
        assert again.world_loaded and again.guild_id == first.guild_id
        assert {g.id: (g.name, g.owner_id, g.text_channel.id, g.voice_channel.id)
                for g in again.guilds.values()} == before
        assert {r.id: again.state.role_guild(r) for r in again.roles.values()} == roles
        msg = again.messages[posted.id]
        assert msg.guild_id == second_guild.id and msg.channel_id == second_guild.text_channel.id
        assert again.guild_payload(second_guild.id)["name"] == "Second"
    finally:
        await again.close()


async def test_threads_roles_and_memberships_come_back(tmp_path: Path) -> None:
    """What changed while the bot ran (sandbox.events) is saved too: threads and their counts, new roles,
    overwrites, who left which server; a world saved with one server gets the second it is asked for."""
    path = tmp_path / "world.json"
    first = await Sandbox(world_file=path).start()
    thread = await first.create_thread("member", "Shop hours")
    await first.post_message("member", "in the thread", channel=thread)
    gone = await first.post_message("member", "deleted later", channel=thread)
    gone.deleted = True
    trainer = await first.create_role("Trainer")
    await first.give_role("member", trainer)
    await first.set_permissions(first.text_channel, trainer, deny=SEND_MESSAGES)
    await first.remove_member("admin")
    await first.close()
    again = await Sandbox(world_file=path, servers=2).start()
    try:
        loaded = again.channels[thread.id]
        assert loaded.is_thread and loaded.parent_id == first.text_channel.id and loaded.owner_id == first.member.id
        assert (loaded.message_count, loaded.total_message_sent) == (1, 2)
        assert str(thread.id) in [t["id"] for t in again.guild_payload()["threads"]]
        assert trainer.id in again.member.roles and again.role_named("trainer").id == trainer.id
        assert again.text_channel.overwrites == [{"id": trainer.id, "type": 0, "allow": 0, "deny": SEND_MESSAGES}]
        assert not again.is_member(again.admin, again.guild_id)
        assert len(again.guilds) == 2 and again.is_member(again.admin, list(again.guilds)[1])
    finally:
        await again.close()


async def test_a_world_saved_before_there_were_more_servers_loads(tmp_path: Path) -> None:
    path = tmp_path / "world.json"
    first = await Sandbox(world_file=path).start()
    await first.close()
    record = json.loads(path.read_text())
    del record["guilds"]
    for role in record["roles"]:
        del role["guild_id"]
    path.write_text(json.dumps(record))
    again = await Sandbox(world_file=path).start()
    try:
        assert again.world_loaded and list(again.guilds) == [first.guild_id]
        assert again.text_channel.id == first.text_channel.id and again.guild_name == first.guild_name
        assert {r["name"] for r in again.guild_payload()["roles"]} == {"@everyone", "Admins"}
    finally:
        await again.close()


def test_without_a_world_file_every_sandbox_is_new() -> None:
    a = Sandbox()
    time.sleep(0.002)  # ids are time-based: another run is another moment
    b = Sandbox()
    assert a.world is None and a.guild_id != b.guild_id and a.member.id != b.member.id


@pytest.mark.parametrize("content, reason", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe garbage", "not valid JSON"),
    (b"[1, 2, 3]", "not a sandbox world"),
    (json.dumps({"format": 0, "guild_id": 1}).encode(), "format 0"),
    (json.dumps({"format": FORMAT, "guild_id": 1, "roles": []}).encode(), "damaged"),
])
async def test_an_unreadable_world_is_set_aside_and_a_new_one_begins(tmp_path: Path, content: bytes,
                                                                     reason: str, caplog) -> None:
    path = tmp_path / "world.json"
    path.write_bytes(content)
    sb = Sandbox(world_file=path)
    assert not sb.world_loaded and sb.world_note and reason in sb.world_note and "new world" in sb.world_note
    assert any(reason in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    kept = sorted(tmp_path.glob("world.json.*.bad"))  # noqa: ASYNC240 - a test's tiny folder
    assert len(kept) == 1 and kept[0].read_bytes() == content and kept[0].name in sb.world_note
    await sb.start()
    await sb.close()
    assert json.loads(path.read_text())["guild_id"] == sb.guild_id
    out = io.StringIO()
    again = Sandbox(world_file=path)
    TerminalChat(again, out=out, files_dir=tmp_path, prefix="!").say_world()
    assert again.world_loaded and again.guild_id == sb.guild_id and "Continuing the saved" in out.getvalue()


async def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "world.json"
    sb = await Sandbox(world_file=path).start()
    await sb.post_message("member", "kept")
    await sb.save_world()
    good = path.read_bytes()

    def crash(src: str, dst: str) -> None:  # the process dies between writing and renaming
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(world_module.os, "replace", crash)
    await sb.post_message("member", "lost")
    await sb.save_world()  # logs a warning, keeps running
    assert path.read_bytes() == good
    assert not list(tmp_path.glob(".*.tmp")), "the failed write cleaned up"  # noqa: ASYNC240
    monkeypatch.undo()
    # A writer killed outright leaves a temp file: the next start removes it.
    (tmp_path / ".world.json.abc123.tmp").write_bytes(b"half a world")
    await sb.close()  # the pending change is written now
    assert "lost" in path.read_text()
    again = Sandbox(world_file=path)
    assert again.world_loaded and not (tmp_path / ".world.json.abc123.tmp").exists()
    assert [m.content for m in again.messages.values()] == ["kept", "lost"]


async def test_the_bot_finds_its_training_after_a_restart(tmp_path: Path, settings: Settings, error_log) -> None:
    """Issue 11: `make run` twice, and the model trained in the first run answers in the second."""
    path = tmp_path / "sandbox_files" / "world.json"
    pairs = "".join(json.dumps({"messages": [{"role": "user", "content": "When does the shop open?"},
                                             {"role": "assistant", "content": "At 9 sharp."}]}) + "\n")
    sb = await Sandbox(world_file=path).start()
    bot = await start_bot(sb, settings)
    try:
        msg = await sb.post_message("admin", "!train", attachments=[("qa.jsonl", pairs.encode(), None)])
        await sb.wait_for(lambda: any(m.content.startswith("Training job") and "succeeded" in m.content
                                      for m in sb.bot_messages(after=msg.id)), timeout=30)
        h = BotHarness(sb, bot)
        await h.settle(msg.id, quiet=0.5)
        assert await h.ask("When does the shop open?") == "At 9 sharp."
    finally:
        await stop_bot(bot)
        await sb.close()

    sb = await Sandbox(world_file=path).start()
    bot = await start_bot(sb, settings)
    try:
        assert await BotHarness(sb, bot).ask("when does the shop open") == "At 9 sharp."
        # /reset: a new server, where the bot has learnt nothing yet.
        out = io.StringIO()
        chat = TerminalChat(sb, out=out, files_dir=tmp_path, prefix="!")
        old_guild, old_ids = sb.guild_id, every_id(sb)
        assert await chat.handle("/reset")
        assert sb.guild_id != old_guild and min(every_id(sb)) > max(old_ids)
        assert "* A new world: server" in out.getvalue() and "trainer joined the new server" in out.getvalue()
        assert chat.user is sb.member and not sb.messages
        assert [g.id for g in bot.guilds] == [sb.guild_id]
        assert (await BotHarness(sb, bot).ask("When does the shop open?")).startswith(NOT_TRAINED)
        assert json.loads(path.read_text())["guild_id"] == sb.guild_id
        assert not list(WorldFile(path).blobs.glob("*")), "the old world's files went with it"
    finally:
        await stop_bot(bot)
        await sb.close()
    assert Sandbox(world_file=path).guild_id == sb.guild_id



async def test_reset_while_the_bot_is_in_voice(tmp_path: Path, settings: Settings, error_log) -> None:
    """The old world's call ends as Discord ends it (4014): no voice connection is left behind to
    fail when the bot stops, and the bot can join the new world's voice channel."""
    sb = await Sandbox(world_file=tmp_path / "world.json").start(voice=True)
    assert sb.voice_server is not None, sb.voice_unavailable
    bot = await start_bot(sb, settings)
    try:
        chat = TerminalChat(sb, out=io.StringIO(), files_dir=tmp_path, prefix="!")
        await sb.set_voice("member", sb.voice_channel)
        assert (await BotHarness(sb, bot).ask("!join", timeout=30)).startswith("Joined")
        assert sb.voice_server.connected == 1
        await chat.handle("/reset")
        await sb.voice_server.wait_until(lambda: sb.voice_server.connected == 0)
        assert sb.bot_user.id not in sb.voice_states
        await sb.set_voice("member", sb.voice_channel)
        assert (await BotHarness(sb, bot).ask("!join", timeout=30)).startswith("Joined")
        assert sb.voice_states[sb.bot_user.id] == sb.voice_channel.id and sb.voice_server.connected == 1
    finally:
        await stop_bot(bot)
        await sb.close()
