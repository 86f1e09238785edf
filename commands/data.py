"""The server's data space: choose the dataset, archive folders, fetch files (admins)."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from commands._dialogs import confirm
from commands._shared import TrainerContext, is_admin_or_owner, page_number, split_flags, trainer_admin
from dataset.sources import Source
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

    @commands.hybrid_group(invoke_without_command=True, fallback="list", usage="[page] | remove <id>")
    @commands.guild_only()
    @app_commands.guild_only()
    @trainer_admin()
    @app_commands.describe(page="Which page of the list (1 is the newest)")
    async def uploads(self, ctx: TrainerContext, page: str = "") -> None:
        """List what the dataset was given (uploads, examples, paths), with ids: `uploads remove ID` takes one back."""
        number = page_number(page)
        await ctx.defer()
        found = await ctx.model.list_uploads(ctx.guild_id)
        if not found:
            await ctx.send(f"The dataset `{await ctx.model.dataset_name(ctx.guild_id)}` has no examples yet. "
                           f"`{ctx.clean_prefix}train` with a file or examples adds some.")
            return
        p = ctx.clean_prefix
        total = sum(s.examples for s in found)
        header = (f"**{len(found):,} source(s), {total:,} examples** in the dataset "
                  f"`{await ctx.model.dataset_name(ctx.guild_id)}`, newest first — `{p}uploads remove ID` takes "
                  f"one back:")
        await ctx.send_page(header, [_source_line(s) for s in found], number, more=f"{p}uploads {{}}")

    @uploads.command(name="remove", usage="<id>")
    @commands.guild_only()
    @trainer_admin()
    @app_commands.describe(source_id="The source's id, from the list")
    async def uploads_remove(self, ctx: TrainerContext, source_id: str) -> None:
        """Take a source out of the dataset: its examples, and the stored file of an upload (asks first)."""
        await ctx.defer()
        found = await ctx.model.upload_removal_preview(ctx.guild_id, source_id)  # a bad id: its line, no dialog
        if not await confirm(ctx, f"Remove {_source_line(found)} from the dataset? Its examples go"
                                  f"{' with the stored file' if found.upload else ''}; the next training is without "
                                  f"them."):
            await ctx.send("Nothing was removed.")
            return
        async with ctx.typing():
            gone = await ctx.model.remove_upload(ctx.guild_id, source_id)
        stored = " and its stored file" if gone.upload else ""
        await ctx.send(f"Removed `{gone.id}` ({gone.what}): {gone.examples:,} example"
                       f"{'s' * (gone.examples != 1)}{stored}. The next `{ctx.clean_prefix}train` trains without "
                       f"them; the current model keeps them until then.")

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


def _source_line(s: Source) -> str:
    """One source of !uploads: id, what, how many examples, who and when."""
    who = discord.utils.escape_markdown(s.added_by or "?")[:80]
    when = f", {s.added_at[:16].replace('T', ' ')} UTC" if s.added_at else ""
    return f"`{s.id}` {s.what} — {s.examples:,} example{'s' * (s.examples != 1)}, by {who}{when}"


async def setup(bot: TrainerBot) -> None:
    await bot.add_cog(Data(bot))
