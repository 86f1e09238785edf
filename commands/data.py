"""The server's data space: choose the dataset, archive folders, fetch files (admins)."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from commands._shared import TrainerContext, is_admin_or_owner, split_flags, trainer_admin
from storage import fmt_bytes

if TYPE_CHECKING:
    from bot import TrainerBot

log = logging.getLogger(__name__)


class Data(commands.Cog):
    """The server's datasets, archives and files."""

    def __init__(self, bot: TrainerBot) -> None:
        self.bot = bot

    @commands.hybrid_command(usage="<folder> [positive=yes]")
    @commands.guild_only()
    @app_commands.guild_only()
    @trainer_admin()
    @commands.max_concurrency(1, commands.BucketType.guild, wait=False)
    @app_commands.describe(args="A folder of this server's data space",
                           positive="Are its examples good answers (yes) or answers to avoid (no)?")
    @app_commands.rename(args="folder")
    async def select_dataset(self, ctx: TrainerContext, *, args: str, positive: bool = True) -> None:
        """Use a folder of the data space as the dataset for the next training."""
        if ctx.interaction is None:  # `!select_dataset folder positive=no`: the flags are words of the text
            folder, flags = split_flags(args)
            positive = flags.get("positive", True)
        else:
            folder = args.strip()
        if not folder:
            raise commands.BadArgument("Name the folder to use")
        await ctx.defer()
        async with ctx.typing():
            result = await ctx.model.select_dataset(ctx.guild_id, folder, positive=positive)
        n = len(result.report.skipped)
        skipped = f" ({n:,} line{'s' * (n != 1)} skipped)" if n else ""
        links = result.report.skipped_links
        linked = (f" Skipped {links} link{'s' * (links != 1)} leading out of this server's data folder or to "
                  f"hidden files.") if links else ""
        await ctx.send(f"Dataset for the next training: `{result.name}` with **{result.examples:,}** "
                       f"examples{skipped}. Archived as `archives/{result.archive.name}`.{linked}")

    @commands.hybrid_command(usage="<folder>")
    @commands.guild_only()
    @app_commands.guild_only()
    @trainer_admin()
    @commands.max_concurrency(1, commands.BucketType.guild, wait=False)
    @app_commands.describe(folder="A folder of this server's data space")
    async def archive(self, ctx: TrainerContext, *, folder: str) -> None:
        """Zip a folder of the data space into archives/."""
        await ctx.defer()
        async with ctx.typing():
            result, shown, data = await ctx.model.archive(ctx.guild_id, folder, read_limit=ctx.upload_limit)
        text = (f"Archived `{shown}` as `archives/{result.name}`: {result.files:,} files, "
                f"{fmt_bytes(result.source_bytes)} → {fmt_bytes(result.bytes)}.")
        if result.skipped_symlinks or result.skipped_hidden:
            text += f" Skipped {result.skipped_symlinks} link(s) and {result.skipped_hidden} hidden file(s)."
        if data is not None:
            await ctx.send(text, file=discord.File(io.BytesIO(data), filename=result.name))
        else:
            await ctx.send(text + f" It is over this server's upload limit ({fmt_bytes(ctx.upload_limit)}); "
                           f"fetch it from the server's data folder.")

    @commands.hybrid_command(usage="<path>")
    @commands.guild_only()
    @app_commands.guild_only()
    @trainer_admin()
    @app_commands.describe(path="A file of this server's data space")
    async def getfile(self, ctx: TrainerContext, *, path: str) -> None:
        """Send a file from this server's data space."""
        await ctx.defer()
        shown, name, data = await ctx.model.read_file(ctx.guild_id, path, limit=ctx.upload_limit)
        await ctx.send(f"`{shown}` ({fmt_bytes(len(data))})", file=discord.File(io.BytesIO(data), filename=name))

    # ------------------------------------------------------------ autocomplete of the data space's paths

    async def _folders(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await _paths(self.bot, interaction, current, folders_only=True)

    async def _files(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await _paths(self.bot, interaction, current, folders_only=False)

    select_dataset.autocomplete("args")(_folders)
    archive.autocomplete("folder")(_folders)
    getfile.autocomplete("path")(_files)


async def _paths(bot: TrainerBot, interaction: discord.Interaction, current: str, *,
                 folders_only: bool) -> list[app_commands.Choice[str]]:
    """Suggestions from the asking server's data space only (never shown to members: admin commands)."""
    if interaction.guild_id is None or not await is_admin_or_owner(bot, interaction.user):
        return []
    found = await bot.model.suggest_paths(interaction.guild_id, current, folders_only=folders_only)
    return [app_commands.Choice(name=p[:100], value=p[:100]) for p in found]


async def setup(bot: TrainerBot) -> None:
    await bot.add_cog(Data(bot))
