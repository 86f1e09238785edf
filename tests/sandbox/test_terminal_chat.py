"""sandbox/chat.py, the terminal chat: what a person sees (timestamps, notifies, reactions, /reset), how fast
/quit leaves, ``python bot.py`` in dev mode driven through stdin, and the voice channel with and without openssl."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
from datetime import timedelta, timezone
from pathlib import Path

import pytest

import sandbox.voice as sandbox_voice
from bot import dev_chat
from config import Settings
from sandbox.chat import TerminalChat, render_timestamp
from sandbox.server import Sandbox
from tests.harness import ROOT, subprocess_env


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
    assert took < 2.0, f"/quit took {took:.1f} s"


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
