"""Greeting and the user guide."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from discord.ext import commands

from textsplit import split_message

log = logging.getLogger(__name__)

INSTRUCTIONS = Path(__file__).resolve().parent.parent / "instructions.txt"


class General(commands.Cog):
    """Say hello and read the guide."""

    def __init__(self, bot: commands.Bot, instructions: Path = INSTRUCTIONS) -> None:
        self.bot = bot
        self.instructions = instructions
        # Show !help under this cog rather than in an "Other" section.
        bot.help_command.cog = self

    async def cog_unload(self) -> None:
        self.bot.help_command.cog = None

    @commands.command()
    async def hi(self, ctx: commands.Context) -> None:
        """Say hello."""
        await ctx.send(f"Hi {ctx.author.display_name}! I'm the trainer bot. "
                       f"Talk to me here, or type `{ctx.clean_prefix}help` to see what I can do.")

    @commands.command()
    @commands.cooldown(2, 30.0, commands.BucketType.channel)
    async def instruction(self, ctx: commands.Context) -> None:
        """Send the full user guide."""
        try:
            text = await asyncio.to_thread(self.instructions.read_text, encoding="utf-8")
        except OSError:
            log.exception("cannot read %s", self.instructions)
            await ctx.send("The user guide is missing on the server; ask an admin to restore `instructions.txt`.")
            return
        text = text.replace("{prefix}", ctx.clean_prefix)
        for chunk in split_message(text):
            await ctx.send(chunk)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(General(bot))
