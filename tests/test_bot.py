"""bot.py against the sandbox: login, the one error handler and each of its layers (unknown command,
bad arguments, project errors, permissions and the trainer role, cooldowns, unexpected errors with an
error id), RESUME after a dropped connection, exit status 2 on bad configuration, secret redaction,
starting without a broken cog, and ``python bot.py`` in prod mode against DISCORD_API_BASE."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from discord.ext import commands

from bot import RedactSecrets
from commands._shared import trainer_admin
from errors import InvalidInput
from tests.harness import ROOT, BotHarness, running_bot, start_bot, stop_bot, subprocess_env


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


async def test_unknown_command_suggests_or_stays_silent(harness: BotHarness) -> None:
    assert await harness.ask("!hii") == "Unknown command `!hii` — did you mean `!hi`?"
    await harness.silent("!frobnicate")  # another bot may own it


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
    from sandbox.server import Role

    trainers = Role(sandbox.ids.next(), "Trainers", 0, 2)
    sandbox.roles[trainers.id] = trainers
    sandbox.add_user("helper", roles=[trainers.id])
    async with running_bot(sandbox, settings, trainer_role="Trainers") as h:
        await h.bot.add_cog(Probe())
        assert await h.ask("!secret", user="helper") == "admin ok"
        refused = await h.ask("!secret", user="member")
        assert "Manage Server" in refused and "Trainers" in refused


async def test_disconnect_then_resume_loses_no_command(harness: BotHarness) -> None:
    sb = harness.sandbox
    await sb.drop_bot_connections()
    # Posted while the bot is offline: it must arrive through RESUME's replay.
    msg = await sb.post_message("member", "!hi")
    await sb.wait_for_bot_message(msg.channel_id, after=msg.id, timeout=20)
    assert "Hi member!" in sb.bot_messages(after=msg.id)[0].content
    assert sb.resume_count == 1 and sb.identify_count == 1


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


async def test_bot_starts_without_a_broken_cog(sandbox, settings, error_log, tmp_path, monkeypatch) -> None:
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


def test_python_bot_py_outside_the_venv_runs_in_it(tmp_path: Path) -> None:
    """The README's `printf '!hi\\n' | python bot.py` with a python that lacks the packages: bot.py starts again
    in .venv (here it gets as far as reading the configuration, which it refuses in one line)."""
    bare = Path(sys.base_prefix) / "bin" / "python3"
    if not (ROOT / ".venv" / "bin" / "python").exists() or not bare.exists():
        pytest.skip("needs the project's .venv and a python outside it")
    env = {k: v for k, v in subprocess_env(tmp_path, MODE="nope").items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(bare), "bot.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "ModuleNotFoundError" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("configuration error:") and "MODE" in proc.stderr


def test_the_dev_session_keeps_its_log_and_attachments_beside_data_dir(settings: Any, monkeypatch: Any) -> None:
    """With the sandbox's world (beside DATA_DIR), not under the project folder."""
    import bot as bot_module

    seen: dict[str, Path] = {}

    async def fake_chat(settings: Any, *, stdin: Any, out: Any, files_dir: Path) -> int:
        seen["files"] = files_dir
        return 0

    monkeypatch.setattr(bot_module, "dev_chat", fake_chat)
    monkeypatch.setattr(bot_module, "setup_logging", lambda settings, log_file: seen.setdefault("log", log_file))
    assert bot_module.run_dev(settings) == 0
    world = bot_module.sandbox_world_file(settings).parent
    assert seen == {"files": world / "attachments", "log": world / "bot.log"}
    assert world == settings.data_dir.resolve().parent / "sandbox_files"
