"""What members give back: corrections of the bot's answers and feedback for the admins."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from commands._shared import TrainerContext
from errors import InvalidInput

if TYPE_CHECKING:
    from bot import TrainerBot

log = logging.getLogger(__name__)


class Feedback(commands.Cog):
    """Correct my answers and tell the admins what works."""

    def __init__(self, bot: TrainerBot) -> None:
        self.bot = bot

    @commands.command(usage="[message_id] <correction...>")
    @commands.guild_only()
    @commands.cooldown(10, 60.0, commands.BucketType.user)
    async def correct(self, ctx: TrainerContext, *, text: str) -> None:
        """Correct my last answer to you here, a reply's answer, or the answer with that message id."""
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
            await self._correct_latest(ctx, text.strip())
            return
        answer = await ctx.model.find_answer(ctx.guild_id, message_id)
        if answer is None:
            resolved = ctx.replied_message if ref is not None and ref.message_id == message_id else None
            if resolved is None:
                resolved = await self._fetch(ctx, message_id)
            if resolved is not None and resolved.author.id != self.bot.user.id:
                await ctx.send("That message isn't one of my answers: reply to my answer to correct it.")
            else:
                await ctx.send(f"I have no answer with id `{message_id}` in this server. "
                               "Reply to my answer with the correction instead.")
            return
        await self._save(ctx, answer, correction)

    async def _correct_latest(self, ctx: TrainerContext, correction: str) -> None:
        """``!correct <text>`` with no reply and no id: my latest answer to the author in this channel."""
        answer = await ctx.model.latest_answer(ctx.guild_id, ctx.channel.id, ctx.author.id)
        if answer is None:
            raise InvalidInput(f"I haven't answered you in this channel yet. Reply to one of my answers with "
                               f"`{ctx.clean_prefix}correct <the right answer>`, or give its message id first.")
        question = discord.utils.escape_markdown(str(answer.get("prompt", "")))[:120]
        await ctx.send(f"Correcting my last answer to you here (to “{question}”).")
        await self._save(ctx, answer, correction)

    async def _save(self, ctx: TrainerContext, answer: dict, correction: str) -> None:
        record = await ctx.model.correct(ctx.guild_id, answer, correction, author_id=ctx.author.id,
                                         author_name=str(ctx.author), channel_id=ctx.channel.id)
        if ctx.model.backend.applies_corrections_now:
            await ctx.send(f"Thanks — correction `{record['ref']}` saved. I'll answer that question (or one "
                           f"that means the same) with it from now on, and it is training data for next time.")
        else:
            await ctx.send(f"Thanks — correction `{record['ref']}` saved. It will be used the next time I'm trained.")

    @staticmethod
    async def _fetch(ctx: TrainerContext, message_id: int) -> discord.Message | None:
        """The message with this id in this channel, if it is there and readable (for a precise refusal)."""
        try:
            return await ctx.channel.fetch_message(message_id)
        except discord.HTTPException:
            return None

    @commands.command(usage="<text...>")
    @commands.guild_only()
    @commands.cooldown(5, 60.0, commands.BucketType.user)
    async def feedback(self, ctx: TrainerContext, *, text: str) -> None:
        """Tell the admins what works and what doesn't."""
        reply_to = None
        ref = ctx.message.reference
        if ref is not None and ref.message_id:
            resolved = ctx.replied_message
            reply_to = {"message_id": ref.message_id,
                        "author_id": resolved.author.id if resolved else None,
                        "content": resolved.content if resolved else None}
        record = await ctx.model.feedback(ctx.guild_id, text, author_id=ctx.author.id, author_name=str(ctx.author),
                                          channel_id=ctx.channel.id, reply_to=reply_to)
        await ctx.send(f"Thanks for the feedback! Reference: `{record['ref']}`.")


async def setup(bot: TrainerBot) -> None:
    await bot.add_cog(Feedback(bot))
