"""sandbox/chat.py, the terminal chat: what a person sees (timestamps, notifies, reactions, /reset), how fast
/quit leaves, ``python bot.py`` in dev mode driven through stdin, and the voice channel with and without openssl."""

from __future__ import annotations

import dataclasses
import io
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import sandbox.voice as sandbox_voice
from bot import dev_chat
from config import Settings
from sandbox.chat import TerminalChat, render_timestamp
from sandbox.server import SEND_MESSAGES, Sandbox
from tests.harness import ROOT, start_bot, stop_bot, subprocess_env


def test_terminal_chat_through_stdin(tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("hello file")
    script = "\n".join([
        "!hi", "/as admin", "!hi", "/as nobody", f"/attach {note} here is a file", "/voice join",
        "/voice leave", "/wait 0.1", "!hii", "/bogus", "/reply 1 x", "",
    ])
    proc = subprocess.run([sys.executable, "bot.py"], cwd=ROOT, input=script, text=True, capture_output=True,
                          timeout=120, env=subprocess_env(tmp_path))
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr + out
    assert "Hi member!" in out and "Hi admin!" in out
    assert "* you are now admin" in out and "no user 'nobody'" in out
    assert "[file note.txt, 10 bytes]" in out
    assert "admin joined voice channel" in out and "admin left voice channel" in out
    assert "did you mean `!hi`?" in out
    assert "unknown chat command /bogus" in out and "no message 1" in out
    # Every printed message carries its id so /reply can name it.
    assert all(line.startswith("[") for line in out.splitlines() if "trainer:" in line)


def test_terminal_chat_reply_and_quit(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "bot.py"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env(tmp_path))
    assert proc.stdin and proc.stdout
    proc.stdin.write("!hi\n")
    proc.stdin.flush()
    reply_id = None
    for line in proc.stdout:
        if "trainer: Hi member!" in line:
            reply_id = line.split("]")[0].strip("[")
            break
    assert reply_id and reply_id.isdigit()
    proc.stdin.write(f"/reply {reply_id} !hi\n/quit\n!hi\n")
    proc.stdin.close()
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    assert f"↪{reply_id} member: !hi" in rest
    assert rest.count("Hi member!") == 1  # the line after /quit was never sent


# ---------------------------------------------------------------------------- the terminal chat
async def run_chat(settings: Settings, script: list[str], tmp_path: Path) -> str:
    out = io.StringIO()
    rc = await dev_chat(settings, stdin=io.StringIO("\n".join(script) + "\n"), out=out,
                         files_dir=tmp_path / "files", silence=1.0)
    assert rc == 0, out.getvalue()
    return out.getvalue()


async def test_terminal_chat_joins_voice(settings: Settings, tmp_path: Path, error_log) -> None:
    out = await run_chat(settings, ["/voice join", "!join", "hello", "/wait 1.5", "!leave"], tmp_path)
    assert "* member joined voice channel Voice; then !join brings the bot" in out
    assert "* trainer connected to voice channel Voice" in out
    assert "trainer: Joined #Voice. I'll speak my answers to you there." in out
    assert "* trainer is speaking in Voice" in out
    assert "* trainer stopped speaking (" in out  # cut short by !leave
    assert "trainer: Left #Voice." in out and "* trainer disconnected from voice channel Voice" in out
    assert "Voice channels are off" not in out


async def test_terminal_chat_without_openssl_works_without_voice(settings: Settings, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 error_log) -> None:
    monkeypatch.setattr(sandbox_voice, "OPENSSL", "openssl-is-not-installed")
    error_log.take("voice channels unavailable")  # a warning, but be sure nothing is logged as an error
    out = await run_chat(settings, ["!hi", "/voice join", "!hi"], tmp_path)
    assert out.count("Voice channels are off in this sandbox: openssl is not installed") == 1
    assert out.count("trainer: Hi member!") == 2
    assert "* member joined voice channel Voice" in out and "then !join" not in out


NOV_28 = 1795879696  # Saturday, 2026-11-28 15:28:16 UTC


@pytest.mark.parametrize("style, shown", [
    ("t", "3:28 PM"), ("T", "3:28:16 PM"), ("d", "11/28/2026"), ("D", "November 28, 2026"),
    ("f", "November 28, 2026 3:28 PM"), ("F", "Saturday, November 28, 2026 3:28 PM"),
])
def test_timestamp_styles(style: str, shown: str) -> None:
    assert render_timestamp(NOV_28, style, tz=timezone.utc) == shown


def test_timestamp_in_the_readers_time_zone() -> None:
    tokyo = timezone(timedelta(hours=9))
    assert render_timestamp(NOV_28, "F", tz=tokyo) == "Sunday, November 29, 2026 12:28 AM"


@pytest.mark.parametrize("offset, shown", [
    (10, "in a few seconds"), (-10, "a few seconds ago"), (60, "in a minute"), (-5 * 60, "5 minutes ago"),
    (3600, "in an hour"), (-3 * 3600, "3 hours ago"), (30 * 3600, "in a day"), (-4 * 86400, "4 days ago"),
    (35 * 86400, "in a month"), (-90 * 86400, "3 months ago"), (400 * 86400, "in a year"),
    (-3 * 365 * 86400, "3 years ago"),
])
def test_relative_timestamps(offset: int, shown: str) -> None:
    assert render_timestamp(NOV_28 + offset, "R", now=NOV_28) == shown


async def test_bot_messages_show_timestamps_mentions_and_ids(tmp_path: Path) -> None:
    sb = await Sandbox().start()
    try:
        out = io.StringIO()
        TerminalChat(sb, out=out, files_dir=tmp_path, prefix="!")
        soon = int(time.time()) + 2 * 3600 + 60
        msg = await sb.post_message(sb.bot_user, f"Job done <t:{soon}:R> (<t:{NOV_28}:D>), <#{sb.text_channel.id}> "
                                                 f"<t:{NOV_28}:X> <t:{NOV_28}>")
        line = out.getvalue().strip()
        fmt = render_timestamp(NOV_28, "f")
        assert line == (f"[{msg.id}] trainer: Job done in 2 hours (November 28, 2026), #general "
                        f"<t:{NOV_28}:X> {fmt}")
    finally:
        await sb.close()


def test_quit_in_a_terminal_is_prompt(tmp_path: Path) -> None:
    """`make run` in a terminal: a question, then /quit at once, exits within a second or two
    (it used to wait 6 s for the answer, then for one more line of input)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "bot.py"], cwd=ROOT, stdin=slave, stdout=slave, stderr=slave,
                            env=subprocess_env(tmp_path), close_fds=True)
    os.close(slave)
    seen = b""

    def read_until(token: bytes, timeout: float) -> bool:
        nonlocal seen
        end = time.monotonic() + timeout
        while token not in seen and time.monotonic() < end:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
        return token in seen

    try:
        assert read_until(b"member> ", 60), seen.decode(errors="replace")
        os.write(master, b"!hi\n")
        assert read_until(b"Hi member!", 30), seen.decode(errors="replace")
        os.write(master, b"are you there?\n/quit\n")
        started = time.monotonic()
        assert proc.wait(timeout=30) == 0
        took = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    assert took < 4.0, f"/quit took {took:.1f} s"


async def test_quit_does_not_wait_for_an_answer(tmp_path: Path) -> None:
    """Typed in a terminal, a message then /quit leaves at once; piped input waits for the answer."""
    sb = await Sandbox().start()  # no bot: nothing will ever answer
    try:
        chat = TerminalChat(sb, out=io.StringIO(), files_dir=tmp_path, prefix="!", silence=1.0, quiet=0.1)
        assert await chat.handle("anyone there?") and chat.posted
        started = time.monotonic()
        await chat.settle()  # end of piped input: waits `silence` for the answer
        assert time.monotonic() - started >= 0.9
        started = time.monotonic()
        await chat.settle()  # nothing outstanding any more
        assert time.monotonic() - started < 0.1
        assert await chat.handle("hello?")
        assert not await chat.handle("/quit")
        started = time.monotonic()
        await chat.settle()
        assert time.monotonic() - started < 0.1
    finally:
        await sb.close()


# ---------------------------------------------------------------------------- chat commands for testers
@pytest.fixture
async def two_servers(settings: Settings, error_log) -> AsyncIterator[tuple[Sandbox, Any]]:
    """A sandbox with two servers and a bot whose TRAINER_ROLE is "Trainer"."""
    sb = await Sandbox(servers=2).start()
    bot = await start_bot(sb, dataclasses.replace(settings, trainer_role="Trainer"))
    try:
        yield sb, bot
    finally:
        await stop_bot(bot)
        await sb.close()
    assert not sb.unimplemented


class Typist:
    """A terminal chat typed into line by line, as piped input is: each line settled before the next."""

    def __init__(self, sb: Sandbox, tmp_path: Path) -> None:
        self.out = io.StringIO()
        self.chat = TerminalChat(sb, out=self.out, files_dir=tmp_path / "files", prefix="!", silence=2.0, quiet=0.2)

    async def type(self, *lines: str) -> str:
        """Type ``lines``; what the chat printed meanwhile."""
        start = len(self.out.getvalue())
        for line in lines:
            assert await self.chat.handle(line)
            await self.chat.settle()
        return self.out.getvalue()[start:]


async def test_chat_roles_and_permissions(two_servers: tuple[Sandbox, Any], tmp_path: Path) -> None:
    sb, _ = two_servers
    t = Typist(sb, tmp_path)
    out = await t.type("/role add member Trainer", "!review")
    assert "* member now has the Trainer role (a new role in Sandbox)" in out
    assert "trainer: No corrections are waiting for review." in out
    out = await t.type("/role remove member Trainer", "!review")
    assert "* member no longer has the Trainer role" in out and "You need the **Manage Server**" in out
    assert "! member does not have the Trainer role" in await t.type("/role remove member Trainer")
    out = await t.type("/role list")
    assert "  @everyone: everyone" in out and "  @Admins: owner, admin" in out and "  @Trainer: nobody" in out
    assert "usage: /role add USER ROLE" in await t.type("/role give member Trainer")
    assert "no user 'nobody'" in await t.type("/role add nobody Trainer")

    out = await t.type("/perm #general -send", "hello?")
    assert "* #general: -send for @everyone" in out and "! member may not send messages in #general" in out
    assert not sb.permissions_for(sb.bot_user, sb.text_channel) & SEND_MESSAGES
    out = await t.type("/perm general =send", "!hi")
    assert "* #general: =send for @everyone" in out and "trainer: Hi member!" in out
    assert sb.text_channel.overwrites == []
    out = await t.type("/perm #general -view +send admin")
    assert "* #general: -view +send for @admin" in out
    assert not sb.can_see(sb.admin, sb.text_channel) and sb.can_see(sb.member, sb.text_channel)
    assert "usage: /perm" in await t.type("/perm #general -fly")
    assert "no channel #nowhere" in await t.type("/perm #nowhere -send")


async def test_chat_threads_servers_and_the_gateway(two_servers: tuple[Sandbox, Any], tmp_path: Path) -> None:
    sb, bot = two_servers
    t = Typist(sb, tmp_path)
    out = await t.type("/thread Shop hours", "!hi")
    thread = next(c for c in sb.channels.values() if c.is_thread)
    assert "* member started the thread #Shop hours in #general; you are in it now" in out
    assert "trainer: Hi member!" in out and sb.bot_messages(thread.id)
    assert t.chat.prompt == "member #Shop hours> "
    out = await t.type("/channel", "/channel general")
    assert "  #Shop hours — thread in #general" in out and "* you are now in #general" in out
    assert t.chat.prompt == "member> "

    out = await t.type("/guild", "/guild 2", "!hi")
    assert "  1. Sandbox (you are here)" in out and "  2. Sandbox 2" in out
    assert "* you are now in Sandbox 2, #general" in out and "trainer: Hi member!" in out
    second = list(sb.guilds)[1]
    assert sb.bot_messages(sb.guilds[second].text_channel.id) and t.chat.prompt == "member Sandbox 2 #general> "
    assert "usage: /guild N, with N from 1 to 2" in await t.type("/guild 3")
    await t.type("/guild 1")

    # DMs with two servers: a member of both is told why; one who left the second is answered by the first.
    out = await t.type("/dm", "when does the shop open?")
    assert "* member is now in a DM with trainer (servers you share: Sandbox, Sandbox 2)" in out
    assert "we share none or several" in out and t.chat.prompt == "member (DM)> "
    out = await t.type("/guild 2", "/leave", "/leave", "/dm", "when does the shop open?")
    assert "* member left Sandbox 2" in out and "! member is not a member of Sandbox 2" in out
    assert "(servers you share: Sandbox)" in out and "haven't been trained" in out
    out = await t.type("/as owner", "/guild 2", "/leave", "/join")
    assert "! owner owns Sandbox 2 and cannot leave it" in out and "! owner is already a member" in out
    await t.type("/as member", "/guild 1")

    out = await t.type("/reconnect", "!hi")
    assert "* sent op 7 (reconnect)" in out and "* trainer resumed its session" in out and "Hi member!" in out
    out = await t.type("/invalidate resume")
    assert "op 9 (invalid session, resumable)" in out and "* trainer resumed its session" in out
    assert "usage: /invalidate [resume]" in await t.type("/invalidate now")
    help_text = await t.type("/help")
    for command in ("/role add USER ROLE", "/perm #CHANNEL", "/thread NAME", "/guild [N]", "/reconnect", "/invalidate"):
        assert command in help_text


async def test_chat_free_text_keeps_its_apostrophes(two_servers: tuple[Sandbox, Any], tmp_path: Path) -> None:
    sb, _ = two_servers
    t = Typist(sb, tmp_path)
    await t.type("!hi")
    answer = sb.bot_messages()[-1]
    out = await t.type(f"/reply {answer.id} it's fine, isn't it?")
    assert f"↪{answer.id} member: it's fine, isn't it?" in out
    assert any(m.content == "it's fine, isn't it?" and m.reference_id == answer.id for m in sb.messages.values())
    (tmp_path / "Bob's notes.txt").write_text("hello")
    (tmp_path / "plain.txt").write_text("hi")
    out = await t.type(f"/attach {tmp_path / 'plain.txt'} here's my file", f"/attach \"{tmp_path}/Bob's notes.txt\" Bob's")
    assert "member: here's my file [file plain.txt, 2 bytes]" in out
    assert "member: Bob's [file Bob's notes.txt, 5 bytes]" in out
    out = await t.type(f"/attach {tmp_path / 'plain.txt'} \"quoted text\"", "/as 'admin'", "/reply 1 it's")
    assert "member: quoted text [file plain.txt" in out and "* you are now admin" in out and "no message 1" in out
