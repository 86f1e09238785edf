"""Corrections, feedback, datasets, archives and files of the server's data space."""

from __future__ import annotations

import asyncio
import io
import logging

import discord
from discord.ext import commands

import checks
from dataset import archive as archiver
from dataset import corrections as records
from dataset import folder as dataset_folder
from errors import InvalidInput, NotFound, TooLarge
from storage import GuildSpace

log = logging.getLogger(__name__)


def parse_flag(value: str, name: str = "positive") -> bool:
    """yes/no style flags: ``positive=no``."""
    lowered = value.strip().lower()
    if lowered in ("yes", "y", "true", "1", "on", "positive"):
        return True
    if lowered in ("no", "n", "false", "0", "off", "negative"):
        return False
    raise InvalidInput(f"`{name}=` takes yes or no, not `{value}`.")


def split_flags(text: str, names: tuple[str, ...] = ("positive",)) -> tuple[str, dict[str, bool]]:
    """Take ``name=value`` words out of ``text``; return the rest and the flags."""
    rest, flags = [], {}
    for word in text.split(" "):
        key, sep, value = word.partition("=")
        if sep and key.lower() in names:
            flags[key.lower()] = parse_flag(value, key.lower())
        else:
            rest.append(word)
    return " ".join(rest).strip(), flags


def fmt_bytes(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def upload_limit(ctx: commands.Context) -> int:
    return ctx.guild.filesize_limit if ctx.guild else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES


class Data(commands.Cog):
    """Corrections, feedback and the server's data."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    def space(self, ctx: commands.Context) -> GuildSpace:
        return GuildSpace(ctx.guild.id, self.bot.settings.data_dir, self.bot.settings.corrections_dir)

    async def cog_check(self, ctx: commands.Context) -> bool:
        if ctx.guild is None:
            raise commands.NoPrivateMessage("This command only works in a server.")
        return True

    @commands.command(usage="<message_id> <correction...>")
    @commands.cooldown(10, 60.0, commands.BucketType.user)
    async def correct(self, ctx: commands.Context, *, text: str) -> None:
        """Correct one of my answers (or reply to it with just the correction)."""
        ref = ctx.message.reference
        first, _, rest = text.partition(" ")
        if first.isdigit() and len(first) >= 15 and rest.strip():
            message_id, correction = int(first), rest.strip()
        elif ref is not None and ref.message_id:
            message_id, correction = ref.message_id, text.strip()
        elif first.isdigit() and len(first) >= 15:
            raise commands.BadArgument("Give the correction after the message id")
        elif first.isdigit():
            raise InvalidInput(f"`{first}` is not a message id (they are long numbers: use Copy Message ID "
                               f"on my answer), or reply to my answer with "
                               f"`{ctx.clean_prefix}correct <correction>`.")
        else:
            raise commands.BadArgument("Give the id of my answer first, or reply to my answer")
        space = self.space(ctx)
        answer = await asyncio.to_thread(records.find_answer, space, message_id)
        if answer is None:
            resolved = ref.resolved if ref is not None and ref.message_id == message_id else None
            if not isinstance(resolved, discord.Message):
                resolved = await self._fetch(ctx, message_id)
            if isinstance(resolved, discord.Message) and resolved.author.id != self.bot.user.id:
                await ctx.send("That message isn't one of my answers: reply to my answer to correct it.")
            else:
                await ctx.send(f"I have no answer with id `{message_id}` in this server. "
                               "Reply to my answer with the correction instead.")
            return
        record = await asyncio.to_thread(
            records.add_correction, space, message_id=message_id, prompt=answer.get("prompt", ""),
            answer=answer.get("answer", ""), correction=correction, author_id=ctx.author.id,
            author_name=str(ctx.author), channel_id=ctx.channel.id,
        )
        if getattr(self.bot.model.backend, "name", "") == "local":
            # The local backend searches corrections before the trained pairs (training.local).
            await ctx.send(f"Thanks — correction `{record['ref']}` saved. I'll answer that question (or one "
                           f"that means the same) with it from now on, and it is training data for next time.")
        else:
            await ctx.send(f"Thanks — correction `{record['ref']}` saved. It will be used the next time I'm trained.")

    @staticmethod
    async def _fetch(ctx: commands.Context, message_id: int) -> discord.Message | None:
        """The message with this id in this channel, if it is there and readable (for a precise refusal)."""
        try:
            return await ctx.channel.fetch_message(message_id)
        except discord.HTTPException:
            return None

    @commands.command(usage="<text...>")
    @commands.cooldown(5, 60.0, commands.BucketType.user)
    async def feedback(self, ctx: commands.Context, *, text: str) -> None:
        """Tell the admins what works and what doesn't."""
        reply_to = None
        ref = ctx.message.reference
        if ref is not None and ref.message_id:
            resolved = ref.resolved if isinstance(ref.resolved, discord.Message) else None
            reply_to = {"message_id": ref.message_id,
                        "author_id": resolved.author.id if resolved else None,
                        "content": resolved.content if resolved else None}
        record = await asyncio.to_thread(
            records.add_feedback, self.space(ctx), text=text, author_id=ctx.author.id,
            author_name=str(ctx.author), channel_id=ctx.channel.id, reply_to=reply_to,
        )
        await ctx.send(f"Thanks for the feedback! Reference: `{record['ref']}`.")

    @commands.command(usage="<folder> [positive=yes]")
    @checks.trainer_admin()
    @commands.max_concurrency(1, commands.BucketType.guild, wait=False)
    async def select_dataset(self, ctx: commands.Context, *, args: str) -> None:
        """Use a folder of the data space as the dataset for the next training."""
        folder, flags = split_flags(args)
        if not folder:
            raise commands.BadArgument("Name the folder to use")
        async with ctx.typing():
            result = await asyncio.to_thread(dataset_folder.select_dataset, self.space(ctx), folder,
                                             positive=flags.get("positive", True))
        n = len(result.report.skipped)
        skipped = f" ({n:,} line{'s' * (n != 1)} skipped)" if n else ""
        await ctx.send(f"Dataset for the next training: `{result.name}` with **{result.examples:,}** "
                       f"examples{skipped}. Archived as `archives/{result.archive.name}`.")

    @commands.command(usage="<folder>")
    @checks.trainer_admin()
    @commands.max_concurrency(1, commands.BucketType.guild, wait=False)
    async def archive(self, ctx: commands.Context, *, folder: str) -> None:
        """Zip a folder of the data space into archives/."""
        async with ctx.typing():
            space = self.space(ctx)
            result = await asyncio.to_thread(archiver.archive_folder, space, folder)
        shown = space.relative(space.resolve(folder))  # as stored, not as typed (quotes, trailing slash)
        text = (f"Archived `{shown}` as `archives/{result.name}`: {result.files:,} files, "
                f"{fmt_bytes(result.source_bytes)} → {fmt_bytes(result.bytes)}.")
        if result.skipped_symlinks or result.skipped_hidden:
            text += f" Skipped {result.skipped_symlinks} link(s) and {result.skipped_hidden} hidden file(s)."
        if result.bytes <= upload_limit(ctx):
            data = await asyncio.to_thread(result.path.read_bytes)
            await ctx.send(text, file=discord.File(io.BytesIO(data), filename=result.name))
        else:
            await ctx.send(text + f" It is over this server's upload limit ({fmt_bytes(upload_limit(ctx))}); "
                           f"fetch it from the server's data folder.")

    @commands.command(usage="<path>")
    @checks.trainer_admin()
    async def getfile(self, ctx: commands.Context, *, path: str) -> None:
        """Send a file from this server's data space."""
        space = self.space(ctx)
        target = space.resolve(path, must_exist=True)
        shown = space.relative(target)
        if not target.is_file():
            raise InvalidInput(f"`{shown}` is a folder; `{ctx.clean_prefix}archive {shown}` zips it.")
        size = target.stat().st_size
        limit = upload_limit(ctx)
        if size > limit:
            said, cap = fmt_bytes(size), fmt_bytes(limit)
            if said == cap:  # "10.0 MB, over the limit of 10.0 MB" would make no sense
                said, cap = f"{size:,} bytes", f"{limit:,} bytes"
            raise TooLarge(f"`{shown}` is {said}, over this server's upload limit of {cap}.")
        try:
            data = await asyncio.to_thread(target.read_bytes)
        except FileNotFoundError:
            raise NotFound(f"`{shown}` does not exist in this server's data folder.") from None
        await ctx.send(f"`{shown}` ({fmt_bytes(size)})", file=discord.File(io.BytesIO(data), filename=target.name))


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Data(bot))
