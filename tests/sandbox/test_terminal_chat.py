"""sandbox/chat.py, the terminal chat: ``python bot.py`` in dev mode driven through stdin (users, files,
voice, replies, /quit), and the chat's voice channel with and without openssl."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

import sandbox.voice as sandbox_voice
from bot import dev_chat
from config import Settings
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
