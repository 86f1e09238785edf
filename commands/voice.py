"""Voice: voice messages and audio files understood, voice channels joined, answers spoken."""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from typing import Any

import discord
from discord.ext import commands

from errors import Busy, TrainerError
from speech import synthesize as tts
from speech.audio import is_audio
from speech.recognize import AudioPipeline

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 20.0
SPEAK_QUEUE = 8  # answers waiting to be spoken per server; older ones are dropped beyond this


def audio_attachment(message: discord.Message) -> discord.Attachment | None:
    """The first voice message or audio file of a message, if any."""
    for att in message.attachments:
        if att.is_voice_message() or is_audio(att.content_type, att.filename):
            return att
    return None


class Speaker:
    """Plays answers one after another in one server's voice channel; they never cut each other off."""

    def __init__(self, cog: Voice, guild_id: int) -> None:
        self.cog = cog
        self.guild_id = guild_id
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=SPEAK_QUEUE)
        self.task = asyncio.create_task(self._run(), name=f"speaker-{guild_id}")

    def say(self, text: str) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # a backlog of stale answers helps nobody: drop the oldest
        self.queue.put_nowait(text)

    async def _run(self) -> None:
        while True:
            text = await self.queue.get()
            try:
                await self._play(text)
            except asyncio.CancelledError:
                raise
            except TrainerError as exc:
                log.warning("guild %s: could not speak: %s", self.guild_id, exc)
            except Exception:
                log.exception("guild %s: speaking failed", self.guild_id)

    async def _play(self, text: str) -> None:
        guild = self.cog.bot.get_guild(self.guild_id)
        vc = guild.voice_client if guild else None
        if not isinstance(vc, discord.VoiceClient) or not vc.is_connected():
            return
        audio = await tts.synthesize(text, self.cog.bot.settings, self.cog.openai_client)
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def after(error: Exception | None) -> None:
            if error:
                log.warning("guild %s: playback error: %s", self.guild_id, error)
            loop.call_soon_threadsafe(done.set)

        # ffmpeg reads the WAV from a pipe: no temp file to clean up. "-loglevel error" overrides
        # discord.py's "warning": ffmpeg's stderr is the bot's, and its notes about guessed channel
        # layouts would land in the terminal (the sandbox chat) for every answer spoken.
        vc.play(discord.FFmpegPCMAudio(io.BytesIO(audio), pipe=True, options="-loglevel error"), after=after)
        await done.wait()

    def close(self) -> None:
        self.task.cancel()


class Voice(commands.Cog):
    """Voice messages, voice channels and spoken answers."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.openai_client, self._own_client = self._openai_client(bot)
        self.pipeline = AudioPipeline(bot.settings, openai_client=self.openai_client)
        self.speakers: dict[int, Speaker] = {}
        self.idle_timers: dict[int, asyncio.Task[None]] = {}

    @staticmethod
    def _openai_client(bot: commands.Bot) -> tuple[Any, Any]:
        """One client for OpenAI speech/transcription: the model's when it has one, else our own."""
        settings = bot.settings
        if "openai" not in (settings.speech_backend, settings.tts_backend) or not settings.openai_api_key:
            return None, None
        backend = bot.model.backend
        if backend.name == "openai":
            return backend.client, None
        import openai

        client = openai.AsyncOpenAI(api_key=settings.openai_api_key, base_url=settings.openai_base_url)
        return client, client

    async def cog_load(self) -> None:
        if not self.bot.settings.dev:
            # Start the workers and load the speech model now, not on the first voice message.
            self._warm = asyncio.create_task(self.pipeline.warm_up())

    async def cog_unload(self) -> None:
        for speaker in self.speakers.values():
            speaker.close()
        for timer in self.idle_timers.values():
            timer.cancel()
        await self.pipeline.close()
        if self._own_client is not None:
            await self._own_client.close()

    # ----------------------------------------------------------------- audio in
    async def answer_audio(self, message: discord.Message, chat: Any) -> None:
        """Transcribe a message's audio and answer it through the chat cog (called by Chat.on_message)."""
        att = audio_attachment(message)
        if att is None:
            return
        limit = self.bot.settings.audio_max_bytes
        if att.size > limit:
            await message.reply(f"That audio file is {att.size / 1e6:.1f} MB; I take up to {limit / 1e6:.1f} MB.",
                                mention_author=False)
            return
        try:
            async with message.channel.typing():
                data = await att.read()
                transcript = await self.pipeline.transcribe(data, att.filename)
        except Busy as exc:
            await message.reply(str(exc), mention_author=False)
            return
        except TrainerError as exc:
            await message.reply(f"I couldn't use that audio: {exc}", mention_author=False)
            return
        except discord.HTTPException as exc:
            log.warning("could not download attachment %s: %s", att.id, exc)
            await message.reply("I couldn't download that audio file; please send it again.", mention_author=False)
            return
        except Exception:
            error_id = secrets.token_hex(3)
            log.exception("error %s transcribing %s", error_id, att.filename)
            await message.reply(f"Something went wrong with that audio (error id `{error_id}`).",
                                mention_author=False)
            return
        await chat.reply_to(message, transcript.text, heard=transcript.text)

    def speak_if_present(self, guild: discord.Guild, author: Any, text: str) -> None:
        """Speak an answer when the bot is in the author's voice channel."""
        vc = guild.voice_client
        voice = getattr(author, "voice", None)
        if not isinstance(vc, discord.VoiceClient) or not vc.is_connected():
            return
        if voice is None or voice.channel is None or voice.channel.id != vc.channel.id:
            return
        if self.bot.settings.tts_backend == "none":
            return
        speaker = self.speakers.get(guild.id)
        if speaker is None or speaker.task.done():
            speaker = self.speakers[guild.id] = Speaker(self, guild.id)
        speaker.say(text)

    @commands.Cog.listener()
    async def on_chat_answer(self, message: discord.Message, answer: str) -> None:
        """Every answer (to text or voice) is spoken while the bot sits in the author's voice channel."""
        if message.guild is not None:
            self.speak_if_present(message.guild, message.author, answer)

    # ----------------------------------------------------------------- channels
    @commands.command()
    @commands.guild_only()
    @commands.cooldown(3, 30.0, commands.BucketType.guild)
    async def join(self, ctx: commands.Context) -> None:
        """Join your voice channel and speak my answers there."""
        voice = getattr(ctx.author, "voice", None)
        if voice is None or voice.channel is None:
            await ctx.send("Join a voice channel first, then ask me again.")
            return
        channel = voice.channel
        perms = channel.permissions_for(ctx.guild.me)
        # Without Connect, Discord (and discord.py) clears every other voice permission too, so
        # naming Speak as well would send an admin to fix a setting that is not the problem.
        missing = "Connect" if not perms.connect else "Speak" if not perms.speak else None
        if missing:
            await ctx.send(f"I need the **{missing}** permission in {channel.mention}.")
            return
        vc = ctx.guild.voice_client
        if vc is not None and vc.is_connected():
            if vc.channel.id == channel.id:
                await ctx.send(f"I'm already in {channel.mention}.")
            else:
                await ctx.send(f"I'm already in {vc.channel.mention} on this server; "
                               f"`{ctx.clean_prefix}leave` first.")
            return
        try:
            await channel.connect(timeout=CONNECT_TIMEOUT, reconnect=True, self_deaf=True)
        except (asyncio.TimeoutError, discord.ClientException, discord.ConnectionClosed, RuntimeError) as exc:
            log.warning("could not join voice channel %s: %r", channel.id, exc)
            if ctx.guild.voice_client is not None:
                await ctx.guild.voice_client.disconnect(force=True)
            await ctx.send(f"I couldn't connect to {channel.mention} right now; try again later.")
            return
        await ctx.send(f"Joined {channel.mention}. I'll speak my answers to you there.")
        self._check_idle(ctx.guild)

    @commands.command()
    @commands.guild_only()
    async def leave(self, ctx: commands.Context) -> None:
        """Leave the voice channel."""
        vc = ctx.guild.voice_client
        if vc is None:
            await ctx.send("I'm not in a voice channel.")
            return
        name = vc.channel.mention
        await self._disconnect(ctx.guild)
        await ctx.send(f"Left {name}.")

    async def _disconnect(self, guild: discord.Guild) -> None:
        speaker = self.speakers.pop(guild.id, None)
        if speaker is not None:
            speaker.close()
        timer = self.idle_timers.pop(guild.id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        if guild.voice_client is not None:
            await guild.voice_client.disconnect(force=False)

    # ----------------------------------------------------------------- leaving empty channels
    @commands.Cog.listener()
    async def on_voice_state_update(self, member: discord.Member, before: discord.VoiceState,
                                    after: discord.VoiceState) -> None:
        self._check_idle(member.guild)

    def _check_idle(self, guild: discord.Guild) -> None:
        vc = guild.voice_client
        timer = self.idle_timers.get(guild.id)
        if vc is None or vc.channel is None:
            return
        humans = [m for m in vc.channel.members if not m.bot]
        if humans:
            if timer is not None:
                timer.cancel()
                self.idle_timers.pop(guild.id, None)
        elif timer is None or timer.done():
            self.idle_timers[guild.id] = asyncio.create_task(self._leave_when_idle(guild))

    async def _leave_when_idle(self, guild: discord.Guild) -> None:
        await asyncio.sleep(self.bot.settings.voice_idle_seconds)
        if guild.voice_client is not None:
            log.info("guild %s: voice channel empty for %gs; leaving", guild.id, self.bot.settings.voice_idle_seconds)
            self.idle_timers.pop(guild.id, None)
            await self._disconnect(guild)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Voice(bot))
