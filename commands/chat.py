"""Answers: ordinary messages get a reply from the server's current model."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import deque

import discord
from discord.ext import commands

from dataset import corrections as records
from errors import TrainerError
from speech.audio import is_audio
from storage import GuildSpace
from textsplit import split_message

log = logging.getLogger(__name__)

DM_GUILD_TTL = 600.0  # seconds a DM author's server is remembered
MAX_DM_LOOKUPS = 25  # servers asked about a DM author before giving up
HISTORY_TURNS = 4  # previous (prompt, answer) turns given to the model as context


def has_audio(message: discord.Message) -> bool:
    """A voice message or an audio file: transcribed first, by the voice cog."""
    return any(a.is_voice_message() or is_audio(a.content_type, a.filename) for a in message.attachments)


class Chat(commands.Cog):
    """Talk with the server's model."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.dm_guilds: dict[int, tuple[int, float]] = {}  # user id -> (guild id or 0, when looked up)
        # Recent (role, content) turns per channel, given to the model as context.
        self.history: dict[int, deque[tuple[str, str]]] = {}

    def wants_answer(self, message: discord.Message) -> bool:
        """Chat channels, DMs and mentions get answers; everything else is left alone."""
        if message.guild is None:
            return True
        if self.bot.user is not None and self.bot.user.mentioned_in(message) and not message.mention_everyone:
            return True
        name = getattr(message.channel, "name", "") or ""
        return name.lower() in self.bot.settings.chat_channels

    async def guild_for(self, message: discord.Message) -> discord.Guild | None:
        """The server whose model answers: the message's, or for a DM the one server we share."""
        if message.guild is not None:
            return message.guild
        user_id = message.author.id
        cached = self.dm_guilds.get(user_id)
        if cached is not None and time.monotonic() - cached[1] < DM_GUILD_TTL:
            return self.bot.get_guild(cached[0]) if cached[0] else None
        shared = [g for g in self.bot.guilds if g.get_member(user_id) is not None]
        if not shared and len(self.bot.guilds) <= MAX_DM_LOOKUPS:
            # Without the members intent the cache rarely holds the author: ask each server.
            for guild in self.bot.guilds:
                try:
                    await guild.fetch_member(user_id)
                except discord.NotFound:
                    continue
                except discord.HTTPException as exc:
                    log.warning("member lookup in guild %s failed: %s", guild.id, exc)
                    continue
                shared.append(guild)
        guild = shared[0] if len(shared) == 1 else None
        self.dm_guilds[user_id] = (guild.id if guild else 0, time.monotonic())
        return guild

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.content.startswith(self.bot.settings.prefix):
            return  # bots are never answered; prefixed messages are commands (or another bot's)
        if not self.wants_answer(message):
            return
        if has_audio(message):
            # One listener for every message (a task per listener per message adds up): audio goes on
            # to the voice cog from here.
            voice = self.bot.get_cog("Voice")
            if voice is not None:
                await voice.answer_audio(message, self)
            return
        ctx = await self.bot.get_context(message)
        if ctx.prefix is not None and (ctx.prefix == self.bot.settings.prefix or ctx.command is not None):
            return  # a command: the command machinery answers it
        prompt = message.content
        if ctx.prefix is not None:  # "@bot question": drop the mention
            prompt = prompt[len(ctx.prefix):]
        if self.bot.user is not None:  # "hey @bot, question": the model should not see the mention either
            prompt = re.sub(rf"\s*<@!?{self.bot.user.id}>[,:]?", "", prompt)
        prompt = prompt.strip()
        if not prompt:
            return
        await self.reply_to(message, prompt)

    async def reply_to(self, message: discord.Message, prompt: str, *, heard: str | None = None) -> list[discord.Message]:
        """Answer ``prompt`` as a reply to ``message`` and record the turn for ``!correct``."""
        guild = await self.guild_for(message)
        if guild is None:
            text = ("In DMs I answer with the model of the one server we share; we share none or several, "
                    "so please talk to me in your server.")
            return [await message.reply(text, mention_author=False)]
        turns = self.history.setdefault(message.channel.id, deque(maxlen=2 * HISTORY_TURNS))
        try:
            async with message.channel.typing():
                answer = await self.bot.model.answer(guild.id, prompt, list(turns))
        except TrainerError as exc:
            return [await message.reply(str(exc)[:2000], mention_author=False)]
        except Exception:
            error_id = secrets.token_hex(3)
            log.exception("error %s answering message %s", error_id, message.id)
            return [await message.reply(f"I couldn't answer that (error id `{error_id}`); it has been logged.",
                                        mention_author=False)]
        text = f"> {heard}\n{answer}" if heard else answer
        sent: list[discord.Message] = []
        for i, chunk in enumerate(split_message(text) or ["…"]):
            if i == 0:
                sent.append(await message.reply(chunk, mention_author=False))
            else:
                sent.append(await message.channel.send(chunk))
        turns.extend((("user", prompt), ("assistant", answer)))
        self.bot.dispatch("chat_answer", message, answer)  # the voice cog speaks it when in a call
        space = GuildSpace(guild.id, self.bot.settings.data_dir, self.bot.settings.corrections_dir)
        model_name = self.bot.model.current_model(guild.id)
        for msg in sent:  # any part of a long answer can be the one someone corrects
            await asyncio.to_thread(
                records.record_answer, space, message_id=msg.id, channel_id=message.channel.id, prompt=prompt,
                answer=answer, prompt_message_id=message.id, author_id=message.author.id, model=model_name,
            )
        return sent


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Chat(bot))
