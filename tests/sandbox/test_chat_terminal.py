"""The terminal chat (sandbox.chat.TerminalChat): what a person sees, and how fast it leaves."""

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
from conftest import ROOT, subprocess_env

from sandbox.chat import TerminalChat, render_timestamp
from sandbox.server import Sandbox

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
