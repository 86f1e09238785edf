"""Text-to-speech for voice channels: espeak-ng (offline default) or the OpenAI speech API.

``synthesize`` is async (a subprocess or an HTTP call; never blocks the loop) and returns audio
bytes (WAV for espeak, the API's format for openai) that ffmpeg can read from a pipe, so a cog
plays them without any temp file::

    audio = await tts.synthesize(text, settings, client)
    vc.play(discord.FFmpegPCMAudio(io.BytesIO(audio), pipe=True))

If a file is needed anyway, :func:`write_temp_audio` writes one and the caller deletes it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import struct
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from errors import BackendError, InvalidInput

if TYPE_CHECKING:
    import openai

    from config import Settings

log = logging.getLogger(__name__)

ESPEAK = "espeak-ng"  # binary name; tests monkeypatch it or PATH
MAX_CHARS = 600  # ~40 s of speech: a voice channel is no place to read an essay aloud
ESPEAK_SPEED = 160  # words per minute
# Voice variant added to the language's voice: "f2" is the clearest espeak-ng variant we measured
# (pocketsphinx word error rate 24% vs 83-98% for the plain en-us voice); "" for the plain voice.
ESPEAK_VARIANT = "f2"
TIMEOUT = 30.0


def speakable(text: str, limit: int = MAX_CHARS) -> str:
    """Text cleaned for speaking (no markdown, links or mentions) and cut at a word near ``limit``."""
    text = re.sub(r"```.*?```", " code block ", text, flags=re.DOTALL)
    text = re.sub(r"https?://\S+", " a link ", text)
    text = re.sub(r"<[@#][!&]?\d+>|<a?:\w+:\d+>", " ", text)  # mentions and custom emoji
    text = re.sub(r"[*_`~|>#]+", " ", text)
    text = " ".join(text.split())
    if len(text) > limit:
        cut = text[:limit]
        end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
        text = cut[: end + 1] if end > limit // 2 else cut.rsplit(" ", 1)[0] + "…"
    return text


def _fix_wav_header(data: bytes) -> bytes:
    """espeak-ng --stdout writes 'unknown length' sizes; put the real ones in a canonical header."""
    if len(data) >= 44 and data[:4] == b"RIFF" and data[8:12] == b"WAVE" and data[36:40] == b"data":
        return b"".join([data[:4], struct.pack("<I", len(data) - 8), data[8:40],
                         struct.pack("<I", len(data) - 44), data[44:]])
    return data


async def _espeak(text: str, language: str) -> bytes:
    binary = shutil.which(ESPEAK)
    if binary is None:
        raise BackendError("espeak-ng is not installed: apt-get install espeak-ng (or set TTS_BACKEND=openai)")
    voice = language.strip().lower() or "en-us"
    if ESPEAK_VARIANT:
        voice = f"{voice}+{ESPEAK_VARIANT}"
    # Text goes through stdin, never argv: a reply starting with "-" must not become an option.
    proc = await asyncio.create_subprocess_exec(
        binary, "-v", voice, "-s", str(ESPEAK_SPEED), "--stdout",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(text.encode("utf-8")), TIMEOUT)
    except BaseException as exc:  # timeout or cancellation: never leave the child running
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if isinstance(exc, asyncio.TimeoutError):
            raise BackendError("Text-to-speech took too long (espeak-ng).") from None
        raise
    message = err.decode(errors="replace").strip()
    if proc.returncode != 0 or len(out) <= 44:
        if "voice does not exist" in message:
            raise BackendError(f"espeak-ng has no voice for SPEECH_LANGUAGE={language!r}")
        log.warning("espeak-ng failed (rc=%s): %s", proc.returncode, message[:300])
        raise BackendError("Text-to-speech failed (espeak-ng); the details are in the bot's log.")
    return _fix_wav_header(out)


async def _openai(text: str, settings: Settings, client: openai.AsyncOpenAI | None) -> bytes:
    import openai

    if client is None:  # the bot builds the one client when OPENAI_API_KEY is set
        raise BackendError("TTS_BACKEND=openai needs OPENAI_API_KEY")
    try:
        response = await client.audio.speech.create(
            model=settings.openai_tts_model, voice=settings.openai_tts_voice, input=text,
            response_format="wav",
        )
    except openai.APIStatusError as exc:
        raise BackendError(f"OpenAI speech failed (HTTP {exc.status_code}): {str(exc.message)[:200]}") from None
    except openai.APIError as exc:
        raise BackendError(f"OpenAI speech failed: {type(exc).__name__}") from None
    data = response.content
    if not data:
        raise BackendError("OpenAI speech returned no audio.")
    return data


class Synthesizer(ABC):
    """A TTS_BACKEND: how answers are turned into speech. Synthesizers differ by class attributes."""

    paid: ClassVar[bool] = False  # whether each spoken answer is a billed API call (members' budgets apply)

    @staticmethod
    @abstractmethod
    async def speak(text: str, settings: Settings, client: openai.AsyncOpenAI | None) -> bytes:
        """Audio bytes of ``text`` (already cleaned by :func:`speakable`)."""


class EspeakSynthesizer(Synthesizer):
    """espeak-ng on this machine: free, never limited."""

    @staticmethod
    async def speak(text: str, settings: Settings, client: openai.AsyncOpenAI | None) -> bytes:
        return await _espeak(text, settings.speech_language)


class OpenAISynthesizer(Synthesizer):
    """The OpenAI speech API: billed per call."""

    paid = True

    @staticmethod
    async def speak(text: str, settings: Settings, client: openai.AsyncOpenAI | None) -> bytes:
        return await _openai(text, settings, client)


# TTS_BACKEND name -> synthesizer; "none" has none (nothing is spoken).
SYNTHESIZERS: dict[str, type[Synthesizer]] = {"espeak": EspeakSynthesizer, "openai": OpenAISynthesizer}


def synthesizer_paid(settings: Settings) -> bool:
    """Whether speaking an answer with TTS_BACKEND is a paid call (False when speech is off)."""
    synthesizer = SYNTHESIZERS.get(settings.tts_backend)
    return synthesizer is not None and synthesizer.paid


async def synthesize(text: str, settings: Settings, client: openai.AsyncOpenAI | None = None) -> bytes:
    """Speak ``text`` with TTS_BACKEND; returns audio bytes ffmpeg can read from a pipe (async)."""
    synthesizer = SYNTHESIZERS.get(settings.tts_backend)
    if synthesizer is None:
        raise BackendError("Text-to-speech is turned off (TTS_BACKEND=none).")
    spoken = speakable(text)
    if not spoken:
        raise InvalidInput("There is nothing to say.")
    return await synthesizer.speak(spoken, settings, client)
