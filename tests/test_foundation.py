"""The bot against the sandbox: login, !hi, !help, !instruction, errors, RESUME, config, terminal chat."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, BotHarness, subprocess_env
from discord.ext import commands

from bot import RedactSecrets
from commands._shared import split_message, trainer_admin
from commands.general import General
from config import Settings
from errors import ConfigError, InvalidInput


class Probe(commands.Cog):
    """Commands that exist only in tests, to drive each branch of the global error handler."""

    @commands.command()
    async def add(self, ctx: commands.Context, a: int, b: int) -> None:
        """Add two numbers."""
        await ctx.send(str(a + b))

    @commands.command()
    async def boom(self, ctx: commands.Context) -> None:
        """Fail unexpectedly."""
        raise RuntimeError("kaboom")

    @commands.command()
    async def refuse(self, ctx: commands.Context) -> None:
        """Fail with a user-facing project error."""
        raise InvalidInput("That file is empty.")

    @commands.command()
    @trainer_admin()
    async def secret(self, ctx: commands.Context) -> None:
        """Admins only."""
        await ctx.send("admin ok")

    @commands.command()
    @commands.cooldown(1, 60.0, commands.BucketType.user)
    async def once(self, ctx: commands.Context) -> None:
        """Once a minute."""
        await ctx.send("done once")


async def test_login_and_guild(harness: BotHarness) -> None:
    bot, sb = harness.bot, harness.sandbox
    assert bot.user.id == sb.bot_user.id
    guild = bot.get_guild(sb.guild_id)
    assert guild is not None and guild.member_count == len(sb.users)
    assert {c.name for c in guild.channels} == {"general", "Voice"}
    assert sb.identify_count == 1
    assert bot.intents.message_content and bot.intents.voice_states and not bot.intents.members
    assert not bot.failed_cogs


async def test_hi_names_the_user(harness: BotHarness) -> None:
    assert "Hi member!" in await harness.ask("!hi")
    assert "Hi admin!" in await harness.ask("!hi", user="admin")
    # Case-insensitive and tolerant of a space after the prefix.
    assert "Hi member!" in await harness.ask("! HI")


async def test_help_lists_commands_and_details(harness: BotHarness) -> None:
    text = "\n".join(m.content for m in await harness.send("!help"))
    assert "`!hi`" in text and "`!instruction`" in text and "`!help`" in text
    assert "Other" not in text
    detail = await harness.ask("!help hi")
    assert detail.startswith("**Usage:** `!hi`") and "Say hello." in detail
    assert "No command called `nope`" in await harness.ask("!help nope")


async def test_unknown_command_suggests_or_stays_silent(harness: BotHarness) -> None:
    assert await harness.ask("!hii") == "Unknown command `!hii` — did you mean `!hi`?"
    await harness.silent("!frobnicate")  # another bot may own it


async def test_instruction_sends_the_guide(harness: BotHarness) -> None:
    messages = await harness.send("!instruction")
    text = "\n".join(m.content for m in messages)
    guide = (ROOT / "instructions.txt").read_text(encoding="utf-8")
    assert len(guide) > 1500
    assert all(len(m.content) <= 2000 for m in messages)
    assert "{prefix}" not in text
    for command in ("hi", "help", "instruction"):
        assert f"!{command}" in text


async def test_instruction_splits_5000_chars_on_lines_and_code_blocks(harness: BotHarness, tmp_path: Path) -> None:
    lines = []
    for i in range(60):
        lines.append(f"Line {i:02d}: " + "x" * 40)
        if i % 15 == 7:
            lines += ["```json", *[f'{{"example": {j}, "text": "{"y" * 30}"}}' for j in range(12)], "```"]
    guide = "\n".join(lines)
    assert len(guide) >= 5000
    path = tmp_path / "guide.txt"
    path.write_text(guide, encoding="utf-8")
    await harness.bot.remove_cog("General")
    await harness.bot.add_cog(General(harness.bot, instructions=path))
    messages = await harness.send("!instruction", count=3)
    assert len(messages) >= 3
    for m in messages:
        assert len(m.content) <= 2000
        assert m.content.count("```") % 2 == 0, "a chunk leaves a code block open"
        assert m.content.split("\n")[0] in guide.split("\n"), "chunk does not start on a line boundary"
    # Every original line arrives once, in order (fence repairs aside).
    got = [ln for m in messages for ln in m.content.split("\n") if not ln.startswith("```")]
    assert got == [ln for ln in lines if not ln.startswith("```")]


async def test_error_layers(harness: BotHarness, error_log) -> None:
    await harness.bot.add_cog(Probe())
    assert await harness.ask("!add 2 3") == "5"
    missing = await harness.ask("!add 2")
    assert "Missing `b`" in missing and "Usage: `!add <a> <b>`" in missing
    bad = await harness.ask("!add two 3")
    assert 'Converting to "int" failed for parameter "a"' in bad and "Usage: `!add <a> <b>`" in bad
    assert await harness.ask("!refuse") == "That file is empty."
    assert "Manage Server" in await harness.ask("!secret", user="member")
    assert await harness.ask("!secret", user="admin") == "admin ok"
    assert await harness.ask("!once") == "done once"
    assert "again in" in await harness.ask("!once")
    boom = await harness.ask("!boom")
    assert boom.startswith("Something went wrong on my side (error id `")
    error_id = boom.split("`")[1]
    logged = error_log.take(error_id)
    assert len(logged) == 1 and logged[0].exc_info and "kaboom" in str(logged[0].exc_info[1])


async def test_trainer_role_grants_admin(sandbox, settings, error_log) -> None:
    import dataclasses

    from conftest import start_bot, stop_bot

    from sandbox.server import Role

    trainers = Role(sandbox.ids.next(), "Trainers", 0, 2)
    sandbox.roles[trainers.id] = trainers
    sandbox.add_user("helper", roles=[trainers.id])
    bot = await start_bot(sandbox, dataclasses.replace(settings, trainer_role="Trainers"))
    try:
        await bot.add_cog(Probe())
        h = BotHarness(sandbox, bot)
        assert await h.ask("!secret", user="helper") == "admin ok"
        refused = await h.ask("!secret", user="member")
        assert "Manage Server" in refused and "Trainers" in refused
    finally:
        await stop_bot(bot)


async def test_disconnect_then_resume_loses_no_command(harness: BotHarness) -> None:
    sb = harness.sandbox
    await sb.drop_bot_connections()
    # Posted while the bot is offline: it must arrive through RESUME's replay.
    msg = await sb.post_message("member", "!hi")
    await sb.wait_for_bot_message(msg.channel_id, after=msg.id, timeout=20)
    assert "Hi member!" in sb.bot_messages(after=msg.id)[0].content
    assert sb.resume_count == 1 and sb.identify_count == 1


@pytest.mark.parametrize("env, variable", [
    ({"MODE": "staging"}, "MODE"),
    ({"PREFIX": ""}, "PREFIX"),
    ({"PREFIX": " ! "}, "PREFIX"),
    ({"MODE": "prod"}, "DISCORD_TOKEN"),
    ({"AUDIO_WORKERS": "many"}, "AUDIO_WORKERS"),
    ({"MODEL_BACKEND": "gpt"}, "MODEL_BACKEND"),
    ({"DISCORD_API_BASE": "ftp://x"}, "DISCORD_API_BASE"),
])
def test_bad_configuration_names_the_variable(env: dict[str, str], variable: str, tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "d"), "CORRECTIONS_DIR": str(tmp_path / "c"), **env}
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(env)


def test_unusable_data_dir_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="DATA_DIR"):
        Settings.from_env({"DATA_DIR": str(blocker / "sub"), "CORRECTIONS_DIR": str(tmp_path / "c")})


def test_bot_exits_2_with_one_line_on_bad_config(tmp_path: Path) -> None:
    token = "super.secret.token.value"
    for extra, variable in (({"MODE": "nope"}, "MODE"), ({"MODE": "prod", "DISCORD_TOKEN": ""}, "DISCORD_TOKEN"),
                            ({"PREFIX": "", "DISCORD_TOKEN": token}, "PREFIX")):
        proc = subprocess.run([sys.executable, "bot.py"], cwd=ROOT, env=subprocess_env(tmp_path, **extra),
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and variable in lines[0], proc.stderr
        assert token not in proc.stderr + proc.stdout


def test_secrets_are_redacted_from_logs(caplog: pytest.LogCaptureFixture) -> None:
    record = logging.LogRecord("discord.http", logging.INFO, __file__, 1, "sent %s with Bot %s",
                               ("payload", "tok.en.1234567890"), None)
    RedactSecrets(["tok.en.1234567890"]).filter(record)
    assert "tok.en.1234567890" not in record.getMessage() and "[redacted]" in record.getMessage()


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


# ---------------------------------------------------------------------------- text splitting
def test_split_short_and_empty() -> None:
    assert split_message("") == []
    assert split_message("hello") == ["hello"]


def test_split_long_line_is_cut_hard() -> None:
    chunks = split_message("a" * 4500)
    assert all(len(c) <= 2000 for c in chunks) and "".join(chunks) == "a" * 4500


def test_split_reopens_code_fence_with_language() -> None:
    text = "intro\n```py\n" + "\n".join(f"print({i})" for i in range(400)) + "\n```\noutro"
    chunks = split_message(text, limit=500)
    assert all(len(c) <= 500 for c in chunks)
    assert all(c.count("```") % 2 == 0 for c in chunks)
    assert all(c.startswith("```py") for c in chunks[1:-1])
    assert chunks[-1].endswith("outro")


async def test_bot_starts_without_a_broken_cog(sandbox, settings, error_log, tmp_path, monkeypatch) -> None:
    from conftest import start_bot, stop_bot

    import bot as bot_module

    cogs = tmp_path / "cogs"
    cogs.mkdir()
    (cogs / "broken.py").write_text("raise ImportError('missing dependency')\n")
    monkeypatch.setattr(bot_module, "EXTENSIONS", ("commands.general", "commands.broken"))
    # commands.broken comes from the temporary folder, the rest from the real package.
    import commands as pkg

    monkeypatch.setattr(pkg, "__path__", [str(cogs), *pkg.__path__])
    bot = await start_bot(sandbox, settings)
    try:
        assert "commands.broken" in bot.failed_cogs
        logged = error_log.take("could not load commands.broken")
        assert logged and logged[0].exc_info
        h = BotHarness(sandbox, bot)
        assert "Hi member!" in await h.ask("!hi")
    finally:
        await stop_bot(bot)
        await asyncio.sleep(0)


async def test_prod_bot_runs_against_a_discord_compatible_server(sandbox, tmp_path: Path) -> None:
    """`python bot.py` with a token and DISCORD_API_BASE: REST there, gateway from its /gateway/bot."""
    env = subprocess_env(tmp_path, MODE="prod", DISCORD_TOKEN=sandbox.bot_token, DISCORD_API_BASE=sandbox.base_url)
    proc = await asyncio.create_subprocess_exec(sys.executable, "bot.py", cwd=ROOT, env=env,
                                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            if sandbox.identify_count:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # GUILD_CREATE handled, on_ready
        h = BotHarness(sandbox, None)
        assert "Hi member!" in await h.ask("!hi", timeout=30)
    finally:
        proc.terminate()  # a clean stop: speech workers and all must go, or stdout never closes
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    log_text = out.decode()
    assert "has connected to Gateway" in log_text and " DEBUG " not in log_text  # prod logs at INFO
    assert sandbox.bot_token not in log_text
