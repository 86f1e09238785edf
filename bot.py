"""The trainer bot: entry point and the ``commands.Bot`` subclass.

``python bot.py`` reads ``.env``, validates the configuration and either connects to Discord
(or any Discord-compatible server named by ``DISCORD_API_BASE``) or, in ``dev`` mode without a
token, starts the local sandbox and opens a chat with the bot in this terminal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import functools
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TextIO, TypedDict
from urllib.parse import urlsplit


def _run_in_venv() -> None:
    """``python bot.py`` with an interpreter outside the project's .venv (which ``make`` builds): start again in
    the venv, so a newcomer's ``printf '!hi\n' | python bot.py`` finds the packages instead of failing on the
    first import. Only when the venv exists, and once (a venv that cannot import them reports it)."""
    venv = Path(__file__).resolve().parent / ".venv"
    python = venv / "bin" / "python"
    if (not python.exists() or os.environ.get("TRAINER_BOT_REEXEC")
            or Path(sys.prefix).resolve() == venv.resolve()):
        return
    os.environ["TRAINER_BOT_REEXEC"] = "1"
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


if __name__ == "__main__":
    _run_in_venv()

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands
from dotenv import load_dotenv

from commands._dialogs import ConfirmButton, Dialogs
from commands._shared import (
    CannotPostHere,
    NotTrainerAdmin,
    TrainerContext,
    may_post,
    refused_post,
    report_unexpected,
    user_line,
)
from config import Settings
from errors import ConfigError, TrainerError
from records.db import Database, DatabaseError

if TYPE_CHECKING:
    import openai

    from model import Model
    from speech.recognize import Transcriber

log = logging.getLogger("trainer")

ROOT = Path(__file__).resolve().parent
REFUSAL_LOG_SECONDS = 600.0  # a channel where Discord refuses my messages is logged once per this long
# The cogs, in load order; commands/_shared.py is a helper module, not a cog.
EXTENSIONS = ("commands.general", "commands.chat", "commands.voice", "commands.feedback", "commands.data",
              "commands.training", "commands.offers")


DESCRIPTION_LIMIT = 100  # characters Discord allows in a slash command's description


class RedactSecrets(logging.Filter):
    """Replace secrets in log records, whatever library logs them."""

    def __init__(self, secrets_: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets_ if s and len(s) >= 8]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            if any(s in text for s in self.secrets):
                for s in self.secrets:
                    text = text.replace(s, "[redacted]")
                record.msg, record.args = text, None
        return True


def setup_logging(settings: Settings, *, log_file: Path | None = None, extra_secrets: Sequence[str] = ()) -> None:
    """dev: DEBUG in readable lines; prod: INFO. With ``log_file`` only warnings reach stderr."""
    level = logging.DEBUG if settings.dev else logging.INFO
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    # DATABASE_URL's password too: a driver's error may quote the URL.
    db_password = urlsplit(settings.database_url).password if settings.database_url else None
    redact = RedactSecrets([settings.token or "", settings.openai_api_key or "", db_password or "", *extra_secrets])
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level)
    handlers: list[logging.Handler] = []
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.WARNING if log_file else level)
    handlers.append(stderr)
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler.addFilter(redact)
        root.addHandler(handler)
    # discord.py's DEBUG (every gateway event and heartbeat) would bury the bot's own lines.
    logging.getLogger("discord").setLevel(max(level, logging.INFO))
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


async def use_api_base(api_base: str, token: str) -> None:
    """Point discord.py at a Discord-compatible server: REST base, then the gateway it names."""
    base = api_base.rstrip("/")
    if "/api" not in yarl.URL(base).path:
        base += "/api/v10"
    discord.http.Route.BASE = base
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/gateway/bot", headers={"Authorization": f"Bot {token}"}) as resp:
            if resp.status != 200:
                raise ConfigError(f"DISCORD_API_BASE: GET /gateway/bot answered HTTP {resp.status}")
            data = await resp.json(content_type=None)
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(data["url"])
    log.info("using Discord-compatible server at %s (gateway %s)", base, data["url"])


class _ShardOptions(TypedDict, total=False):
    """discord.py's sharding arguments (left out: its default)."""

    shard_count: int
    shard_ids: list[int]


def _shard_options(settings: Settings) -> _ShardOptions:
    """Several processes (one PostgreSQL): each runs its SHARD_IDS of SHARD_COUNT; unset: Discord's advice."""
    options: _ShardOptions = {}
    if settings.shard_count is not None:
        options["shard_count"] = settings.shard_count
    if settings.shard_ids is not None:
        options["shard_ids"] = list(settings.shard_ids)
    return options


class TrainerBot(commands.AutoShardedBot):
    """The bot: builds the shared clients once, loads the cogs and turns errors into one friendly line."""

    def __init__(self, settings: Settings, *, openai_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        intents = discord.Intents.default()
        # Privileged: without it (MESSAGE_CONTENT=off) a server message's text reaches the bot only when it
        # mentions the bot or replies to it; slash commands and context menus carry their own.
        intents.message_content = settings.message_content
        intents.voice_states = True
        super().__init__(
            command_prefix=commands.when_mentioned_or(settings.prefix),
            intents=intents,
            case_insensitive=True,
            strip_after_prefix=True,
            # Nothing the bot repeats from users may ping anyone; a ping must be asked for per message.
            allowed_mentions=discord.AllowedMentions.none(),
            **_shard_options(settings),
            **kwargs,
        )
        self.settings = settings
        # Extra options for the one OpenAI client (tests ask for strict response validation).
        self.openai_options = openai_options or {}
        self.runner: asyncio.Task[None] | None = None  # set by start_bot
        self.failed_cogs: dict[str, str] = {}
        self.refused_channels: dict[int, float] = {}  # channel id -> when its refusal was last logged
        self.add_check(self._may_answer_here)
        self.openai_client: openai.AsyncOpenAI | None = None
        self.db: Database | None = None
        self.dialogs = Dialogs()
        self.model: Model
        self.transcriber: Transcriber

    async def setup_hook(self) -> None:
        # Heavy imports (scikit-learn, the speech stack) only when a bot is really built.
        from model import Model
        from speech.recognize import Transcriber
        from training.openai_api import make_client

        self.openai_client = make_client(self.settings, **self.openai_options)
        self.db = Database.open(self.settings.database_url, self.settings.data_dir)
        self.model = Model(self.settings, db=self.db, openai_client=self.openai_client)
        await self.model.start()
        self.transcriber = Transcriber(self.settings, openai_client=self.openai_client)
        if not self.settings.dev:
            # Start the speech workers and load the recogniser now, not on the first voice message.
            self._warm_up = asyncio.create_task(self.transcriber.warm_up(), name="speech-warm-up")
        self.add_dynamic_items(ConfirmButton)
        for name in EXTENSIONS:
            try:
                await self.load_extension(name)
            except Exception as exc:  # one broken cog must not take the bot down
                log.error("could not load %s; starting without it", name, exc_info=exc)
                self.failed_cogs[name] = f"{type(exc).__name__}: {exc}"
            else:
                log.debug("loaded %s", name)

    async def _may_answer_here(self, ctx: commands.Context) -> bool:
        """Every command's first check: a command I could not answer is not run (a `!train` nobody hears about).
        A slash command is answered through its interaction, which needs no permission in the channel."""
        if ctx.interaction is not None:
            return True
        if not may_post(ctx.channel):
            raise CannotPostHere("no Send Messages permission here")
        return True

    def cannot_post(self, channel: Any, why: object) -> None:
        """Discord refuses my messages in ``channel`` (its permissions): one line in the log, at most once
        per channel every :data:`REFUSAL_LOG_SECONDS`, and nothing else (no retry, no reply elsewhere)."""
        now = time.monotonic()
        last = self.refused_channels.get(channel.id)
        if last is not None and now - last < REFUSAL_LOG_SECONDS:
            return
        self.refused_channels[channel.id] = now
        guild = getattr(channel, "guild", None)
        log.warning("not allowed to post in #%s (%s) of server %s: %s; staying quiet there",
                    getattr(channel, "name", "DM"), channel.id, getattr(guild, "id", "-"), why)

    async def sync_commands(self, guild: discord.abc.Snowflake | None = None) -> int:
        """Register the slash and context-menu commands with Discord: globally, or copied to one server (at once
        there, for testing); returns how many. Discord limits how often this may run: never on every start."""
        for cmd in self.tree.walk_commands():
            if len(cmd.description) > DESCRIPTION_LIMIT:  # a docstring's first line is the description
                cmd.description = cmd.description[:DESCRIPTION_LIMIT - 1].rsplit(" ", 1)[0] + "…"
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        return len(await self.tree.sync(guild=guild))

    async def get_context(self, origin: discord.Message | discord.Interaction, /, *,
                          cls: type[commands.Context] = TrainerContext) -> Any:
        return await super().get_context(origin, cls=cls)

    async def close(self) -> None:
        await super().close()
        for name, closer in (("transcriber", "close"), ("model", "close"), ("openai_client", "close")):
            thing = getattr(self, name, None)
            if thing is not None:
                try:
                    await getattr(thing, closer)()
                except Exception:
                    log.exception("closing the %s failed", name)
        if self.db is not None:
            self.db.close()

    async def on_ready(self) -> None:
        log.info("logged in as %s (id %s) in %d server(s)", self.user, getattr(self.user, "id", "?"),
                 len(self.guilds))

    async def on_command_error(self, ctx: commands.Context, raised: commands.CommandError) -> None:
        """The one global error handler: every failure becomes a short line for the user."""
        if getattr(ctx, "error_handled", False):
            return
        error = _unwrapped(raised)
        if ctx.interaction is None and (isinstance(error, CannotPostHere) or not may_post(ctx.channel)):
            self.cannot_post(ctx.channel, error)  # nowhere to answer: the log has it, once
            return
        p = ctx.clean_prefix
        # A slash command's error line is shown to its user only (unless it was deferred: then it takes the
        # place of "thinking…", as Discord decides).
        send = functools.partial(ctx.send, ephemeral=True)
        if ctx.command is not None and isinstance(error, (commands.UserInputError, TrainerError)):
            # A mistyped attempt must not use up the cooldown the real one needs.
            ctx.command.reset_cooldown(ctx)
        if isinstance(error, commands.CommandNotFound):
            name = ctx.invoked_with or ""
            names = [c.name for c in self.commands if not c.hidden]
            for c in self.commands:
                names.extend(c.aliases)
            close = difflib.get_close_matches(name.lower(), names, n=1, cutoff=0.6)
            if close:  # other bots may share the prefix: stay silent unless we can help
                await send(f"Unknown command `{p}{name}` — did you mean `{p}{close[0]}`?")
            return
        if isinstance(error, app_commands.TransformerError):  # a slash option Discord's client let through
            name = ctx.command.qualified_name if ctx.command else "?"
            await send(f"`{error.value}` is not a valid {error.type.name.lower()} for this option. "
                       f"See `/help {name}`.")
            return
        if isinstance(error, commands.UserInputError):
            assert ctx.command is not None  # arguments are parsed for a command that was found
            usage = f"`{p}{ctx.command.qualified_name} {ctx.command.signature}`".replace(" `", "`")
            if isinstance(error, commands.MissingRequiredArgument):
                why = f"Missing `{error.param.name}`."
            elif isinstance(error, commands.MissingRequiredAttachment):
                why = f"Attach a file for `{error.param.name}`."
            elif isinstance(error, commands.TooManyArguments):
                why = "Too many arguments."
            else:
                why = str(error).rstrip(".") + "."
            if ctx.interaction is not None:  # the options are typed and described: the prefix usage would mislead
                await send(f"{why} See `/help {ctx.command.qualified_name}`.")
            else:
                await send(f"{why} Usage: {usage} (see `{p}help {ctx.command.qualified_name}`)")
            return
        if isinstance(error, commands.CommandOnCooldown):
            assert ctx.command is not None  # only a command that was found has a cooldown
            await send(f"Slow down — you can use `{p}{ctx.command.qualified_name}` again in "
                           f"{error.retry_after:.0f}s." if error.retry_after >= 1 else
                           f"Slow down — try `{p}{ctx.command.qualified_name}` again in a moment.")
            return
        if isinstance(error, commands.MissingPermissions):
            perms = ", ".join(p.replace("_", " ").replace("guild", "server").title() for p in error.missing_permissions)
            await send(f"You need the **{perms}** permission to use this command.")
            return
        if isinstance(error, commands.BotMissingPermissions):
            perms = ", ".join(p.replace("_", " ").title() for p in error.missing_permissions)
            await send(f"I need the **{perms}** permission here to do that.")
            return
        if isinstance(error, commands.NoPrivateMessage):
            await send("This command only works in a server.")
            return
        if isinstance(error, (NotTrainerAdmin, commands.MaxConcurrencyReached)):
            await send(str(error))
            return
        if isinstance(error, commands.CheckFailure):
            await send("You can't use this command here.")
            return
        if isinstance(error, TrainerError):
            await send(user_line(error, ctx.clean_prefix)[:1990])
            return
        if isinstance(error, discord.Forbidden):
            if refused_post(error, ctx.channel):  # my permissions changed and the cache does not know yet
                self.cannot_post(ctx.channel, error.text)
                return
            # Something else was refused (e.g. deleting a message without Manage Messages): say which.
            log.warning("command %s refused by Discord: %s", ctx.command, error.text)
            try:
                await ctx.send(f"Discord didn't let me do that here ({error.text}); an admin can check my permissions.")
            except discord.HTTPException as exc:
                self.cannot_post(ctx.channel, exc.text)
            return
        error_id = report_unexpected(f"in command {ctx.command} (message {ctx.message.id})", error)
        try:
            await send(f"Something went wrong on my side (error id `{error_id}`); it has been logged.")
        except discord.HTTPException:
            log.warning("could not report error %s to the channel", error_id)


def _unwrapped(error: Exception) -> Exception:
    """The error a command really raised: prefix commands wrap it once, slash ones (hybrid) twice."""
    if isinstance(error, commands.HybridCommandError):
        error = error.original
    if isinstance(error, (commands.CommandInvokeError, app_commands.CommandInvokeError)):
        error = error.original
    return error


def load_settings(env_file: Path | None = None) -> Settings:
    load_dotenv(env_file or ROOT / ".env", override=False)
    return Settings.from_env()


async def run_bot(settings: Settings) -> None:
    """Connect to Discord (or the server in DISCORD_API_BASE) until stopped."""
    assert settings.token
    if settings.api_base:
        await use_api_base(settings.api_base, settings.token)
    async with TrainerBot(settings) as bot:
        # SIGTERM (systemd, docker stop) closes the bot like Ctrl-C does: cogs unload, the speech
        # workers and the OpenAI client shut down, nothing is left running.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(bot.close()))
        await bot.start(settings.token)


async def start_bot(settings: Settings, *, api_base: str, token: str, ready_timeout: float = 30.0,
                    sync_commands: bool = True, **bot_kwargs: Any) -> TrainerBot:
    """Start the real bot against a Discord-compatible server and wait until it is ready.

    The one start-up path shared by the dev chat, the tests and the benchmarks. ``bot_kwargs`` go to
    ``commands.Bot`` (the sandbox passes a connector that trusts its voice server). The slash commands are
    synced to each server the bot is in (``sync_commands``). Stop it with
    :func:`stop_bot`.
    """
    settings = dataclasses.replace(settings, token=token)
    await use_api_base(api_base, token)
    # A sandbox sends its one guild right after READY: no need to wait 2 s for more.
    bot = TrainerBot(settings, **{"guild_ready_timeout": 0.1, **bot_kwargs})
    bot.runner = asyncio.create_task(bot.start(token), name="bot")
    ready = asyncio.create_task(bot.wait_until_ready())
    done, _ = await asyncio.wait({ready, bot.runner}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
    if bot.runner in done:
        ready.cancel()
        bot.runner.result()  # re-raise why the bot stopped
    if ready not in done:
        ready.cancel()
        await stop_bot(bot)
        raise TimeoutError(f"the bot did not come online within {ready_timeout:.0f} s")
    if sync_commands:
        # A sandbox server: its commands are registered per server at every start (on Discord an owner
        # runs !sync once instead: Discord rate-limits registration).
        try:
            for guild in bot.guilds:
                await bot.sync_commands(guild)
        except BaseException:
            await stop_bot(bot)
            raise
    return bot


async def stop_bot(bot: TrainerBot) -> None:
    """Close a bot started by :func:`start_bot` and wait for it to finish."""
    await bot.close()
    if bot.runner is None:
        return
    try:
        await asyncio.wait_for(bot.runner, 10)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        pass
    except Exception:
        log.exception("bot stopped with an error")


def sandbox_world_file(settings: Settings) -> Path:
    """Where the dev sandbox keeps its world: ``sandbox_files/world.json`` beside DATA_DIR."""
    return settings.data_dir.resolve().parent / "sandbox_files" / "world.json"


async def dev_chat(settings: Settings, *, stdin: TextIO, out: TextIO, files_dir: Path, silence: float = 6.0) -> int:
    """Start the sandbox and the bot, then run the terminal chat until /quit or end of input."""
    from sandbox.chat import TerminalChat
    from sandbox.server import Sandbox

    # The sandbox keeps its world (server id, users, messages) beside the data it serves, so the
    # same DATA_DIR finds the same server, model and data on the next `make run`.
    # Two servers, as a bot has in real life: /guild 2 in the chat switches (DMs and data stay per server).
    sandbox = await Sandbox(world_file=sandbox_world_file(settings), servers=2).start(voice=True)
    try:
        try:
            # sandbox.bot_kwargs(): an aiohttp connector that trusts the voice server's certificate.
            bot = await start_bot(settings, api_base=sandbox.api_base, token=sandbox.bot_token,
                                  **sandbox.bot_kwargs())
        except TimeoutError as exc:
            print(f"{exc}; see the log", file=sys.stderr)
            return 1
        try:
            chat = TerminalChat(sandbox, out=out, files_dir=files_dir, prefix=settings.prefix, silence=silence)
            chat.say(f"Sandbox chat with the trainer bot in #{sandbox.text_channel.name}. "
                     f"You are {chat.user.name}. /help lists chat commands; try {settings.prefix}hi")
            if sandbox.voice_unavailable:
                chat.say(f"* Voice channels are off in this sandbox: {sandbox.voice_unavailable}. "
                         f"Everything else works; {settings.prefix}join will not connect.")
            await chat.run(stdin)
            return 0
        finally:
            await stop_bot(bot)
    finally:
        await sandbox.close()


def run_dev(settings: Settings) -> int:
    """``python bot.py`` in dev mode without a token: the sandbox and a chat in this terminal."""
    # Beside DATA_DIR with the sandbox's world: one folder holds a dev session's world, log and attachments.
    workdir = sandbox_world_file(settings).parent
    log_file = workdir / "bot.log"
    setup_logging(settings, log_file=log_file)
    print(f"No DISCORD_TOKEN set: starting the local sandbox (log: {log_file}).", file=sys.stderr)
    try:
        return asyncio.run(dev_chat(settings, stdin=sys.stdin, out=sys.stdout, files_dir=workdir / "attachments"))
    except KeyboardInterrupt:
        return 0


def check_database(settings: Settings) -> None:
    """Open the records' database and bring its schema up to date before anything starts; ConfigError naming
    the setting when it cannot be reached or was written by a newer bot."""
    db = Database.open(settings.database_url, settings.data_dir)
    try:
        db.migrate()
    except DatabaseError as exc:
        where = "DATABASE_URL" if settings.database_url else f"DATA_DIR ({db.where})"
        reason = getattr(exc, "reason", "")
        if reason:
            log.warning("database check failed: %s", reason)
        raise ConfigError(f"{where}: {exc}") from None
    finally:
        db.close()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings()
        check_database(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if settings.token is None:
        # dev without a token: the sandbox chat is the whole point of `python bot.py` on a fresh machine.
        return run_dev(settings)
    setup_logging(settings)
    try:
        asyncio.run(run_bot(settings))
    except discord.LoginFailure:
        print("DISCORD_TOKEN was refused by Discord: check it in .env", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
