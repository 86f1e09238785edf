"""Answers: ordinary messages (text, voice messages and audio files) get a reply from the server's model."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from commands._shared import charge, may_post, no_pings, report_unexpected, split_message, user_line
from dataset.corrections import Answer
from errors import Busy, NotSaved, OverBudget, TrainerError
from speech.audio import is_audio

if TYPE_CHECKING:
    from bot import TrainerBot

log = logging.getLogger(__name__)

DM_GUILD_TTL = 600.0  # seconds a DM author's server is remembered
MAX_DM_LOOKUPS = 25  # servers asked about a DM author before giving up
HISTORY_TURNS = 4  # previous (prompt, answer) turns given to the model as context
NO_SHARED_GUILD = ("In DMs I answer with the model of the one server we share; we share none or several, "
                   "so please talk to me in your server.")


def audio_attachment(message: discord.Message) -> discord.Attachment | None:
    """The first voice message or audio file of a message, if any."""
    for att in message.attachments:
        if att.is_voice_message() or is_audio(att.content_type, att.filename):
            return att
    return None


class Chat(commands.Cog):
    """Talk with the server's model."""

    def __init__(self, bot: TrainerBot) -> None:
        self.bot = bot
        # user id -> (ids of the servers we share, when looked up)
        self.dm_guilds: dict[int, tuple[tuple[int, ...], float]] = {}
        # Recent (role, content) turns per channel, given to the model as context.
        self.history: dict[int, deque[tuple[str, str]]] = {}
        # Per channel, the answer that goes out last so far: done when it has been sent (or given up).
        # Answers are worked out side by side but sent in the order the questions came, however long
        # each takes and however long Discord's rate limits hold each send back.
        self.last_answer: dict[int, asyncio.Future[None]] = {}

    def wants_answer(self, message: discord.Message) -> bool:
        """Chat channels (and the threads in them), DMs, mentions and replies to my messages get answers;
        everything else is left alone. Without the Message Content intent only DMs, mentions and replies to me
        come with their text."""
        if message.guild is None:
            return True
        if self.bot.user is not None and self.bot.user.mentioned_in(message) and not message.mention_everyone:
            return True
        ref = message.reference
        if (self.bot.user is not None and ref is not None and isinstance(ref.resolved, discord.Message)
                and ref.resolved.author.id == self.bot.user.id):
            return True
        channel = message.channel
        # A thread is named after its topic; it is a chat place when the channel it grew from is one.
        place = (channel.parent or channel) if isinstance(channel, discord.Thread) else channel
        name = getattr(place, "name", "") or ""
        return name.lower() in self.bot.settings.chat_channels

    async def guild_for(self, message: discord.Message) -> discord.Guild | None:
        """The server whose model answers: the message's, or for a DM the one server we share."""
        if message.guild is not None:
            return message.guild
        user_id = message.author.id
        cached = self.dm_guilds.get(user_id)
        shared: list[discord.Guild] = []
        if cached is not None and time.monotonic() - cached[1] < DM_GUILD_TTL:
            # The servers we shared may have lost them (the bot gets no member events without the members
            # intent): one server's model must not answer someone who left it, and someone who left all but
            # one is answered again. Only those few are asked again; sharing none stays cached.
            known = [g for g in map(self.bot.get_guild, cached[0]) if g is not None]
            shared = [g for g in known if await self._still_member(g, user_id)]
            if shared == known:
                return shared[0] if len(shared) == 1 else None
        else:
            shared = [g for g in self.bot.guilds if g.get_member(user_id) is not None]
        if not shared and len(self.bot.guilds) <= MAX_DM_LOOKUPS:
            # Without the members intent the cache rarely holds the author: ask each server.
            for g in self.bot.guilds:
                try:
                    await g.fetch_member(user_id)
                except discord.NotFound:
                    continue
                except discord.HTTPException as exc:
                    log.warning("member lookup in guild %s failed: %s", g.id, exc)
                    continue
                shared.append(g)
        self.dm_guilds[user_id] = (tuple(g.id for g in shared), time.monotonic())
        return shared[0] if len(shared) == 1 else None

    @staticmethod
    async def _still_member(guild: discord.Guild, user_id: int) -> bool:
        if guild.get_member(user_id) is not None:
            return True
        try:
            await guild.fetch_member(user_id)
        except discord.NotFound:
            return False
        except discord.HTTPException as exc:  # unsure: keep the answer they had (the lookup said yes before)
            log.warning("member lookup in guild %s failed: %s", guild.id, exc)
        return True

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        # 1. Filter: bots are never answered; prefixed messages are commands (or another bot's).
        if message.author.bot or message.content.startswith(self.bot.settings.prefix):
            return
        asked = await self.asked_answer(message)
        if asked is not None:  # the right answer after a 👎, in any channel: the feedback cog corrects with it
            self.bot.dispatch("ask_reply", message, asked)
            return
        if not self.wants_answer(message):
            return
        if not may_post(message.channel):  # a channel I may read but not write in: no answer to give
            self.bot.cannot_post(message.channel, "no Send Messages permission")
            return
        channel_id = message.channel.id
        previous = self.last_answer.get(channel_id)
        mine = self.last_answer[channel_id] = asyncio.get_running_loop().create_future()
        try:
            # 2. What was said: the text, or the words of a voice message / audio file.
            att = audio_attachment(message)
            prompt: str | None
            heard: str | None
            live: discord.Message | None = None
            if att is not None:
                heard_as = await self.transcribe(message, att)
                if heard_as is None:
                    return
                prompt, heard, live = heard_as
            else:
                prompt, heard = await self.prompt_of(message), None
            if not prompt:
                return
            # 3. Answer, reply, record (and the voice cog speaks the answer when it is in a call).
            await self.reply_to(message, prompt, heard=heard, into=live, after=previous, turn=mine)
        except discord.Forbidden as exc:  # my permissions changed while I worked on it
            self.bot.cannot_post(message.channel, exc.text)
        finally:
            if not mine.done():
                mine.set_result(None)
            if self.last_answer.get(channel_id) is mine:
                del self.last_answer[channel_id]

    async def asked_answer(self, message: discord.Message) -> Answer | None:
        """The logged answer ``message`` corrects when it replies to my ask for the right answer (sent after
        a 👎), else None."""
        ref = message.reference
        if message.guild is None or ref is None or not ref.message_id:
            return None
        if isinstance(ref.resolved, discord.Message) and ref.resolved.author.id != getattr(self.bot.user, "id", None):
            return None
        return await self.bot.model.answer_asked_about(message.guild.id, ref.message_id)

    async def prompt_of(self, message: discord.Message) -> str | None:
        """The question in a text message, without the bot's mention; None for commands."""
        ctx = await self.bot.get_context(message)
        if ctx.prefix is not None and (ctx.prefix == self.bot.settings.prefix or ctx.command is not None):
            return None  # a command: the command machinery answers it
        prompt = message.content
        if ctx.prefix is not None:  # "@bot question": drop the mention
            prompt = prompt[len(ctx.prefix):]
        if self.bot.user is not None:  # "hey @bot, question": the model should not see the mention either
            prompt = re.sub(rf"\s*<@!?{self.bot.user.id}>[,:]?", "", prompt)
        return prompt.strip() or None

    async def transcribe(self, message: discord.Message, att: discord.Attachment
                         ) -> tuple[str, str, discord.Message | None] | None:
        """The words of an audio attachment (for the model, for people, and the message that shows them as
        they were heard, if a long one did), or None after telling the author why there are none.

        A long voice message is recognised in pieces: one reply shows the transcript as it grows, edited in
        place as each next piece is done, and later becomes the answer."""
        limit = self.bot.settings.audio_max_bytes
        if att.size > limit:
            await message.reply(f"That audio file is {att.size / 1e6:.1f} MB; I take up to {limit / 1e6:.1f} MB.",
                                mention_author=False)
            return None
        guild = await self.guild_for(message)
        if guild is None:  # nobody's model would answer: don't transcribe (perhaps paid) for nothing
            await message.reply(NO_SHARED_GUILD, mention_author=False)
            return None

        async def before_paid() -> None:
            # An OpenAI transcription is a paid call: counted against the author's daily budget first.
            await charge(self.bot, guild, message.author, "transcription")

        live: discord.Message | None = None

        async def show(text: str, done: int, total: int) -> None:
            nonlocal live
            content = no_pings(live_transcript(text, done, total))
            if live is None:
                live = await message.reply(content, mention_author=False)
            else:
                await live.edit(content=content)

        async def say(line: str) -> None:
            # A live transcript already showing becomes the line, so one reply holds what happened.
            if live is not None:
                try:
                    await live.edit(content=no_pings(line))
                    return
                except discord.HTTPException:
                    pass
            await message.reply(no_pings(line), mention_author=False)

        try:
            async with message.channel.typing():
                data = await att.read()
                transcript = await self.bot.transcriber.transcribe(data, att.filename, before_paid=before_paid,
                                                                   on_progress=show)
        except (Busy, OverBudget) as exc:
            await say(user_line(exc, self.bot.settings.prefix))
        except TrainerError as exc:
            await say(f"I couldn't use that audio: {exc}")
        except discord.Forbidden:
            raise  # the typing indicator refused: I may not post here (on_message logs it once)
        except discord.HTTPException as exc:
            log.warning("could not download attachment %s: %s", att.id, exc)
            await say("I couldn't download that audio file; please send it again.")
        except Exception as exc:
            error_id = report_unexpected(f"transcribing {att.filename}", exc)
            await say(f"Something went wrong with that audio (error id `{error_id}`).")
        else:
            return transcript.text, transcript.shown, live
        return None

    async def reply_to(self, message: discord.Message, prompt: str, *, heard: str | None = None,
                       into: discord.Message | None = None, after: asyncio.Future[None] | None = None,
                       turn: asyncio.Future[None] | None = None) -> list[discord.Message]:
        """Answer ``prompt`` as a reply to ``message`` and record the turn for ``!correct``.

        ``into``: my reply already showing the live transcript; it is edited into the answer's first part.
        The reply goes out once ``after`` (the previous answer in the channel) has gone out, and ``turn`` is
        done as soon as this one has (before it is recorded: the next answer need not wait for that)."""
        guild = await self.guild_for(message)
        if guild is None:
            await _wait_for(after)
            return [await message.reply(NO_SHARED_GUILD, mention_author=False)]
        turns = self.history.setdefault(message.channel.id, deque(maxlen=2 * HISTORY_TURNS))
        try:
            async with message.channel.typing():
                await charge(self.bot, guild, message.author, "chat")  # OverBudget: its line, and no call
                reply = await self.bot.model.reply(guild.id, prompt, list(turns))
        except TrainerError as exc:
            await _wait_for(after)
            return [await self._first(message, into, user_line(exc, self.bot.settings.prefix))]
        except discord.Forbidden:
            raise  # the typing indicator refused: I may not post here (on_message logs it once)
        except Exception as exc:
            error_id = report_unexpected(f"answering message {message.id}", exc)
            await _wait_for(after)
            return [await self._first(message, into,
                                      f"I couldn't answer that (error id `{error_id}`); it has been logged.")]
        await _wait_for(after)
        answer = reply.text
        sent: list[discord.Message] = []
        # "Did you mean": a button per question; the asker's click answers it (commands/offers.py; looked up by
        # name: an extension's module is its own copy, so its class is not the one an import here would see).
        send_offer = getattr(self.bot.get_cog("Offers"), "send_offer", None)
        if reply.offers and send_offer is not None:
            text = f"> {heard}\n{reply.offer_text}" if heard else reply.offer_text
            offered = await send_offer(message, guild, prompt, no_pings(text)[:2000], reply.offers)
            if offered is not None:
                sent.append(offered)
                answer = reply.offer_text  # what was shown is what the log keeps
                if into is not None:  # the live transcript stops saying it is still transcribing
                    await self._first(message, into, f"> {heard}"[:2000])
        text = f"> {heard}\n{answer}" if heard else answer
        for i, chunk in enumerate([] if sent else (split_message(no_pings(text)) or ["…"])):
            if i == 0:
                sent.append(await self._first(message, into, chunk))
            else:
                sent.append(await message.channel.send(chunk))
        if turn is not None and not turn.done():
            turn.set_result(None)
        turns.extend((("user", prompt), ("assistant", answer)))
        self.bot.dispatch("chat_answer", message, answer)  # the voice cog speaks it when in a call
        try:
            await self.bot.model.record_answer(
                guild.id, message_ids=[m.id for m in sent], channel_id=message.channel.id, prompt=prompt,
                answer=answer, prompt_message_id=message.id, author_id=message.author.id,
                author_name=str(message.author),
            )
        except NotSaved:
            sent.append(await message.channel.send(
                f"(I couldn't save this answer to my log, so `{self.bot.settings.prefix}correct` won't find it.)"))
        return sent

    async def _first(self, message: discord.Message, into: discord.Message | None, content: str) -> discord.Message:
        """The first part of my reply: the live-transcript message edited, or a new reply."""
        content = no_pings(content)
        if into is not None:
            try:
                return await into.edit(content=content)
            except discord.HTTPException as exc:  # deleted meanwhile: answer in a new reply
                log.info("could not edit the live transcript %s: %s", into.id, exc)
        return await message.reply(content, mention_author=False)


async def _wait_for(previous: asyncio.Future[None] | None) -> None:
    """Until ``previous`` is done (never raises: a previous answer that failed still lets the next go)."""
    if previous is not None and not previous.done():
        await asyncio.wait([previous])


def live_transcript(text: str, done: int, total: int) -> str:
    """My reply while a long voice message is being transcribed: the words so far and how far along."""
    status = f"-# transcribing… {done} of {total} parts done"
    room = 2000 - len(status) - 4
    shown = text if len(text) <= room else "…" + text[len(text) - room + 1:]
    return f"> {shown}\n{status}" if shown else f"> …\n{status}"


async def setup(bot: TrainerBot) -> None:
    await bot.add_cog(Chat(bot))
