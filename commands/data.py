"""The server's data space: choose the dataset, archive folders, fetch files (admins)."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from commands._shared import TrainerContext, page_number, split_flags, trainer_admin
from dataset.sources import Source
from storage import fmt_bytes

if TYPE_CHECKING:
    from bot import TrainerBot

log = logging.getLogger(__name__)


class Data(commands.Cog):
    """The server's datasets, archives and files."""

    def __init__(self, bot: TrainerBot) -> None:
        self.bot = bot

    @commands.command(usage="<folder> [positive=yes]")
    @commands.guild_only()
    @trainer_admin()
    @commands.max_concurrency(1, commands.BucketType.guild, wait=False)
    async def select_dataset(self, ctx: TrainerContext, *, args: str) -> None:
        """Use a folder of the data space as the dataset for the next training."""
        folder, flags = split_flags(args)
        if not folder:
            raise commands.BadArgument("Name the folder to use")
        async with ctx.typing():
            result = await ctx.model.select_dataset(ctx.guild_id, folder, positive=flags.get("positive", True))
        n = len(result.report.skipped)
        skipped = f" ({n:,} line{'s' * (n != 1)} skipped)" if n else ""
        links = result.report.skipped_links
        linked = (f" Skipped {links} link{'s' * (links != 1)} leading out of this server's data folder or to "
                  f"hidden files.") if links else ""
        await ctx.send(f"Dataset for the next training: `{result.name}` with **{result.examples:,}** "
                       f"examples{skipped}. Archived as `archives/{result.archive.name}`.{linked}")

    @commands.command(usage="<folder>")
    @commands.guild_only()
    @trainer_admin()
    @commands.max_concurrency(1, commands.BucketType.guild, wait=False)
    async def archive(self, ctx: TrainerContext, *, folder: str) -> None:
        """Zip a folder of the data space into archives/."""
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

    @commands.group(invoke_without_command=True, usage="[page] | remove <id>")
    @commands.guild_only()
    @trainer_admin()
    async def uploads(self, ctx: TrainerContext, page: str = "") -> None:
        """List what the dataset was given (uploads, examples, paths), with ids: `uploads remove ID` takes one back."""
        number = page_number(page)
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
    async def uploads_remove(self, ctx: TrainerContext, source_id: str) -> None:
        """Take a source out of the dataset: its examples, and the stored file of an upload."""
        async with ctx.typing():
            gone = await ctx.model.remove_upload(ctx.guild_id, source_id)
        stored = " and its stored file" if gone.upload else ""
        await ctx.send(f"Removed `{gone.id}` ({gone.what}): {gone.examples:,} example"
                       f"{'s' * (gone.examples != 1)}{stored}. The next `{ctx.clean_prefix}train` trains without "
                       f"them; the current model keeps them until then.")

    @commands.command(usage="<path>")
    @commands.guild_only()
    @trainer_admin()
    async def getfile(self, ctx: TrainerContext, *, path: str) -> None:
        """Send a file from this server's data space."""
        shown, name, data = await ctx.model.read_file(ctx.guild_id, path, limit=ctx.upload_limit)
        await ctx.send(f"`{shown}` ({fmt_bytes(len(data))})", file=discord.File(io.BytesIO(data), filename=name))


def _source_line(s: Source) -> str:
    """One source of !uploads: id, what, how many examples, who and when."""
    who = discord.utils.escape_markdown(s.added_by or "?")[:80]
    when = f", {s.added_at[:16].replace('T', ' ')} UTC" if s.added_at else ""
    return f"`{s.id}` {s.what} — {s.examples:,} example{'s' * (s.examples != 1)}, by {who}{when}"


async def setup(bot: TrainerBot) -> None:
    await bot.add_cog(Data(bot))
