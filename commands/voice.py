"""Voice channels: join, leave when idle, and speak every chat answer to people in the bot's channel.

Voice *messages* are chat: ``commands/chat.py`` transcribes them with the bot's Transcriber.
"""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from commands._shared import TrainerContext, budget_exempt
from errors import OverBudget, TrainerError
from speech import synthesize as tts

if TYPE_CHECKING:
    from bot import TrainerBot

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 20.0
SPEAK_QUEUE = 8  # answers waiting to be spoken per server; older ones are dropped beyond this


@dataclass(frozen=True)
class Spoken:
    """An answer to speak, and whose question it answered (their daily budget pays for paid speech)."""

    text: str
    user_id: int
    exempt: bool  # the asker is never limited (admin, BUDGET_EXEMPT_ROLE)


class Speaker:
    """Plays answers one after another in one server's voice channel; they never cut each other off."""

    def __init__(self, cog: Voice, guild_id: int) -> None:
        self.cog = cog
        self.guild_id = guild_id
        self.queue: asyncio.Queue[Spoken] = asyncio.Queue(maxsize=SPEAK_QUEUE)
        self.task = asyncio.create_task(self._run(), name=f"speaker-{guild_id}")

    def say(self, item: Spoken) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # a backlog of stale answers helps nobody: drop the oldest
        self.queue.put_nowait(item)

    async def _run(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                await self._play(item)
            except asyncio.CancelledError:
                raise
            except OverBudget:
                # The text answer was sent; only speaking it would be paid. Nobody needs a second message.
                log.info("guild %s: not speaking an answer to user %s: over today's paid-call budget",
                         self.guild_id, item.user_id)
            except TrainerError as exc:
                log.warning("guild %s: could not speak: %s", self.guild_id, exc)
            except Exception:
                log.exception("guild %s: speaking failed", self.guild_id)

    async def _play(self, item: Spoken) -> None:
        guild = self.cog.bot.get_guild(self.guild_id)
        vc = guild.voice_client if guild else None
        if not isinstance(vc, discord.VoiceClient) or not vc.is_connected():
            return
        # Charged here, right before the (perhaps paid) speech call: an answer dropped from the queue costs nothing.
        await self.cog.bot.model.charge(self.guild_id, item.user_id, "speech", exempt=item.exempt)
        audio = await tts.synthesize(item.text, self.cog.bot.settings, self.cog.bot.openai_client)
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def after(error: Exception | None) -> None:
            if error:
                log.warning("guild %s: playback error: %s", self.guild_id, error)
            try:
                loop.call_soon_threadsafe(done.set)
            except RuntimeError:  # the bot shut down while this answer was playing: nobody waits any more
                pass

        # ffmpeg reads the WAV from a pipe: no temp file to clean up. "-loglevel error" overrides
        # discord.py's "warning": ffmpeg's stderr is the bot's, and its notes about guessed channel
        # layouts would land in the terminal (the sandbox chat) for every answer spoken.
        vc.play(discord.FFmpegPCMAudio(io.BytesIO(audio), pipe=True, options="-loglevel error"), after=after)
        await done.wait()

    def close(self) -> None:
        self.task.cancel()


class Voice(commands.Cog):
    """Voice channels and spoken answers."""

    def __init__(self, bot: TrainerBot) -> None:
        self.bot = bot
        self.speakers: dict[int, Speaker] = {}
        self.idle_timers: dict[int, asyncio.Task[None]] = {}

    async def cog_unload(self) -> None:
        for speaker in self.speakers.values():
            speaker.close()
        for timer in self.idle_timers.values():
            timer.cancel()

    def hears(self, guild: discord.Guild, author: Any) -> bool:
        """Whether the bot speaks in ``guild`` and sits in the author's voice channel."""
        vc = guild.voice_client
        voice = getattr(author, "voice", None)
        if not isinstance(vc, discord.VoiceClient) or not vc.is_connected():
            return False
        if voice is None or voice.channel is None or voice.channel.id != vc.channel.id:
            return False
        return self.bot.settings.tts_backend != "none"

    @commands.Cog.listener()
    async def on_chat_answer(self, message: discord.Message, answer: str) -> None:
        """Every answer (to text or voice) is spoken while the bot sits in the author's voice channel."""
        guild = message.guild
        if guild is None or not self.hears(guild, message.author):
            return
        # Exemption is worked out now (the member is at hand); the call is charged when it is spoken.
        exempt = not self.bot.model.paid("speech") or await budget_exempt(self.bot, guild, message.author)
        speaker = self.speakers.get(guild.id)
        if speaker is None or speaker.task.done():
            speaker = self.speakers[guild.id] = Speaker(self, guild.id)
        speaker.say(Spoken(answer, message.author.id, exempt))

    # ----------------------------------------------------------------- channels
    @commands.hybrid_command()  # type: ignore[arg-type]  # TrainerContext: see _shared
    @commands.guild_only()
    @app_commands.guild_only()
    @commands.cooldown(3, 30.0, commands.BucketType.guild)
    async def join(self, ctx: TrainerContext) -> None:
        """Join your voice channel and speak my answers there."""
        assert ctx.guild is not None  # @guild_only
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
        if isinstance(vc, discord.VoiceClient) and vc.is_connected():
            if vc.channel.id == channel.id:
                await ctx.send(f"I'm already in {channel.mention}.")
            else:
                await ctx.send(f"I'm already in {vc.channel.mention} on this server; "
                               f"`{ctx.clean_prefix}leave` first.")
            return
        await ctx.defer()  # connecting may take seconds
        try:
            await channel.connect(timeout=CONNECT_TIMEOUT, reconnect=True, self_deaf=True)
        except (asyncio.TimeoutError, OSError, aiohttp.ClientError, discord.ClientException,
                discord.ConnectionClosed, RuntimeError) as exc:  # OSError: the voice endpoint is unreachable
            log.warning("could not join voice channel %s: %r", channel.id, exc)
            if ctx.guild.voice_client is not None:
                await ctx.guild.voice_client.disconnect(force=True)
            await ctx.send(f"I couldn't connect to {channel.mention} right now; try again later.")
            return
        await ctx.send(f"Joined {channel.mention}. I'll speak my answers to you there.")
        self._check_idle(ctx.guild)

    @commands.hybrid_command()  # type: ignore[arg-type]  # TrainerContext: see _shared
    @commands.guild_only()
    @app_commands.guild_only()
    async def leave(self, ctx: TrainerContext) -> None:
        """Leave the voice channel."""
        assert ctx.guild is not None  # @guild_only
        vc = ctx.guild.voice_client
        if not isinstance(vc, discord.VoiceClient):  # None, or never: the bot connects with VoiceClient
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
        if not isinstance(vc, discord.VoiceClient) or vc.channel is None:  # the bot connects with VoiceClient
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


async def setup(bot: TrainerBot) -> None:
    await bot.add_cog(Voice(bot))
