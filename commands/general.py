"""Greeting, the user guide and ``!help``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import discord
from discord import app_commands
from discord.ext import commands

from commands._shared import TrainerContext, is_trainer_admin, split_message
from errors import InvalidInput

if TYPE_CHECKING:
    from bot import TrainerBot

log = logging.getLogger(__name__)

INSTRUCTIONS = Path(__file__).resolve().parent.parent / "instructions.txt"


class TrainerHelp(commands.HelpCommand):
    """A compact ``!help``: commands grouped by area, then details per command."""

    def __init__(self) -> None:
        # Everyone sees every command (admin ones marked), so members know what to ask an admin for.
        super().__init__(verify_checks=False,
                         command_attrs={"help": "Show what the bot can do, or details of one command."})

    def _line(self, command: commands.Command) -> str:
        admin = " *(admins)*" if is_trainer_admin in command.checks else ""
        return f"`{self.context.clean_prefix}{command.qualified_name}` — {command.short_doc or ''}{admin}"

    async def _send(self, text: str) -> None:
        for chunk in split_message(text):
            # The context, not the channel: after /help the answer must be the interaction's response.
            await self.context.send(chunk)

    async def send_bot_help(self, mapping: Mapping[commands.Cog | None, list[commands.Command[Any, ..., Any]]]) -> None:
        p = self.context.clean_prefix
        lines = ["**Trainer bot** — chat with me, correct me, and train me on your own data."]
        for cog, cmds in sorted(mapping.items(), key=lambda kv: getattr(kv[0], "qualified_name", "~")):
            shown = await self.filter_commands(cmds, sort=True)
            if not shown:
                continue
            name = getattr(cog, "qualified_name", "Other")
            lines.append(f"\n__{name}__")
            lines.extend(self._line(c) for c in shown)
        backend = getattr(getattr(self.context.bot, "model", None), "backend", None)
        if backend is not None:
            # A blurb names commands as `{prefix}…`: shown with this bot's prefix.
            lines.append("\n" + (backend.blurb.replace("{prefix}", p) or f"Model backend: {backend.name}."))
        lines.append(f"\nType `{p}help <command>` for details, or `{p}instruction` for the full guide.")
        await self._send("\n".join(lines))

    async def send_cog_help(self, cog: commands.Cog) -> None:
        shown = await self.filter_commands(cog.get_commands(), sort=True)
        await self._send("\n".join([f"__{cog.qualified_name}__", *(self._line(c) for c in shown)]))

    async def send_command_help(self, command: commands.Command) -> None:
        lines = [f"**Usage:** `{self.get_command_signature(command).strip()}`"]
        if command.help:
            lines.append(command.help)
        if command.aliases:
            lines.append("Also: " + ", ".join(f"`{a}`" for a in command.aliases))
        await self._send("\n".join(lines))

    async def send_group_help(self, group: commands.Group) -> None:
        await self.send_command_help(group)

    async def send_error_message(self, error: str, /) -> None:
        await self._send(error)

    def command_not_found(self, string: str) -> str:
        return f"No command called `{string}`. Type `{self.context.clean_prefix}help` to see them all."


class General(commands.Cog):
    """Say hello and read the guide."""

    def __init__(self, bot: TrainerBot, instructions: Path = INSTRUCTIONS) -> None:
        self.bot = bot
        self.instructions = instructions
        # This cog owns !help: it installs it and puts the old one back when unloaded.
        self._old_help = bot.help_command
        bot.help_command = TrainerHelp()
        bot.help_command.cog = self

    async def cog_load(self) -> None:
        # Read once at start (a few KB): the guide changes with the code, not while the bot runs.
        try:
            self.guide: str | None = self.instructions.read_text(encoding="utf-8")
        except OSError:
            log.exception("cannot read %s", self.instructions)
            self.guide = None

    async def cog_unload(self) -> None:
        self.bot.help_command = self._old_help

    @commands.hybrid_command()  # type: ignore[arg-type]  # TrainerContext: see _shared
    async def hi(self, ctx: TrainerContext) -> None:
        """Say hello."""
        await ctx.send(f"Hi {ctx.author.display_name}! I'm the trainer bot. "
                       f"Talk to me here, or type `{ctx.clean_prefix}help` to see what I can do.")

    @commands.hybrid_command()  # type: ignore[arg-type]  # TrainerContext: see _shared
    @commands.cooldown(2, 30.0, commands.BucketType.channel)
    async def instruction(self, ctx: TrainerContext) -> None:
        """Send the full user guide."""
        if self.guide is None:
            await ctx.send("The user guide is missing on the server; ask an admin to restore `instructions.txt`.")
            return
        await ctx.send_long(self.guide.replace("{prefix}", ctx.clean_prefix))

    @app_commands.command(name="help", description="Show what the bot can do, or details of one command.")
    @app_commands.describe(command="A command to explain (leave empty for all of them)")
    async def help_slash(self, interaction: discord.Interaction, command: str | None = None) -> None:
        ctx = await self.bot.get_context(interaction)
        await ctx.defer()
        await ctx.send_help(*([command.strip().lstrip("/!")] if command else []))

    @help_slash.autocomplete("command")
    async def _help_names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        names = sorted(c.qualified_name for c in self.bot.walk_commands() if not c.hidden)
        return [app_commands.Choice(name=n, value=n) for n in names if current.lower() in n][:25]

    @commands.command(hidden=True, usage="[here | global | clear]")
    @commands.is_owner()
    async def sync(self, ctx: TrainerContext, scope: str = "global") -> None:
        """Register my slash commands with Discord (owner only): everywhere, or at once in this server only.

        Run it after an update that changes commands, not on every start: Discord rate-limits it.
        `here` copies them to this server (visible at once, for trying); `clear` removes this server's copies."""
        scope = scope.lower()
        if scope in ("here", "clear") and ctx.guild is None:
            raise commands.NoPrivateMessage()
        if scope == "global":
            n = await self.bot.sync_commands()
            await ctx.send(f"Registered {n} commands everywhere; Discord shows them to every server shortly.")
        elif scope == "here":
            n = await self.bot.sync_commands(ctx.guild)
            await ctx.send(f"Registered {n} commands in this server; they show up at once.")
        elif scope == "clear":
            assert ctx.guild is not None
            self.bot.tree.clear_commands(guild=ctx.guild)
            await self.bot.tree.sync(guild=ctx.guild)
            await ctx.send("Removed this server's copies of my commands (the global ones stay).")
        else:
            raise InvalidInput(f"`{ctx.clean_prefix}sync` takes `here`, `global` or `clear`.")


async def setup(bot: TrainerBot) -> None:
    await bot.add_cog(General(bot))
