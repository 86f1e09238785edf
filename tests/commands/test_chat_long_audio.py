"""Voice messages heard by Whisper, and long ones in pieces with a live transcript, end to end through
the sandbox.

- The real Whisper model (the default, base, from the pinned weights) on real human read speech (a
  LibriVox recording from pocketsphinx's source archive, ``tests/fakes/human_speech.py``): transcribed
  and answered by the model; and French speech, which it says it can't understand.
- The order of the pieces, a worker that crashes on one piece, and a long stretch with no pause, with a
  recogniser of tone words injected at the worker boundary (``tests/fakes/tone_words.py``), so the
  pool's timing is steered and every word is known.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import subprocess
from typing import Any, AsyncIterator

import pytest

from config import Settings
from sandbox.server import Message, Sandbox
from speech.recognize import Transcriber
from speech.whisper import NOT_UNDERSTOOD
from tests.fakes import human_speech as human
from tests.fakes import tone_words as tones
from tests.harness import BotHarness, start_bot, stop_bot

PROGRESS = re.compile(r"^> (.*)\n-# transcribing… (\d+) of (\d+) parts done$", re.S)


def ogg(pcm: bytes) -> bytes:
    """16 kHz mono s16le as a Discord voice message is: Opus in Ogg, 48 kHz mono."""
    res = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "s16le", "-ar", "16000", "-ac", "1", "-i", "pipe:0",
         "-c:a", "libopus", "-b:a", "32k", "-ar", "48000", "-ac", "1", "-f", "ogg", "pipe:1"],
        input=pcm, capture_output=True, check=True, timeout=60)
    return res.stdout


def spoken_french(text: str) -> bytes:
    """``text`` said by espeak-ng's French voice, as 16 kHz mono s16le."""
    wav = subprocess.run(["espeak-ng", "-v", "fr", "--stdout", text], capture_output=True, check=True,
                         timeout=30).stdout
    return subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", "pipe:0", "-ac", "1", "-ar", "16000",
                           "-f", "s16le", "pipe:1"], input=wav, capture_output=True, check=True, timeout=30).stdout


async def voice_message(sb: Sandbox, pcm: bytes) -> Message:
    data = await asyncio.to_thread(ogg, pcm)  # the sandbox and the bot share this event loop
    return await sb.post_message("member", "", attachments=[("voice-message.ogg", data, "audio/ogg")],
                                 voice_message=True, duration_secs=len(pcm) / 32000)


async def answer_to(sb: Sandbox, posted: Message, timeout: float = 60.0) -> Message:
    """The bot's one reply to ``posted``, once it is final (no longer a progress line)."""
    def done() -> Message | None:
        replies = [m for m in sb.bot_messages() if m.reference_id == posted.id]
        return replies[0] if replies and not PROGRESS.match(replies[0].content) else None

    reply = await sb.wait_for(done, timeout)
    await asyncio.sleep(0.2)
    assert len([m for m in sb.bot_messages() if m.reference_id == posted.id]) == 1
    return reply


def progress_of(reply: Message) -> list[tuple[str, int, int]]:
    """(text, done, total) of each progress line the reply showed before its final content."""
    out = []
    for content in reply.earlier:
        m = PROGRESS.match(content)
        assert m, f"not a progress line: {content!r}"
        text = "" if m.group(1) == "…" else m.group(1)
        out.append((text, int(m.group(2)), int(m.group(3))))
    return out


@pytest.fixture
async def long_bot(sandbox: Sandbox, settings: Settings, error_log) -> AsyncIterator[Any]:
    """``await long_bot(recognizer=None, **settings_changes)``: the bot, with Whisper or an injected recogniser."""
    bots = []

    async def start(recognizer: Any = None, **changes: Any) -> BotHarness:
        s = dataclasses.replace(settings, **changes)
        bot = await start_bot(sandbox, s)
        bots.append(bot)
        if recognizer is not None:  # at the worker boundary: the pool runs it in its worker processes
            await bot.transcriber.close()
            bot.transcriber = Transcriber(s, recognizer_factory=recognizer)
        return BotHarness(sandbox, bot)

    yield start
    for bot in bots:
        await stop_bot(bot)


async def test_whisper_hears_real_speech_short_and_long_and_the_model_answers(long_bot) -> None:
    harness = await long_bot(speech_backend="whisper", audio_workers=1)
    sb = harness.sandbox
    recordings = human.held_out()
    short = recordings[4]  # "he might even have been made amiable himself" (3.3 s)
    trained = await sb.post_message("admin", f"!train {short.text} => Edward Ferrars, in chapter three.")
    await sb.wait_for(lambda: any("I now answer with" in m.content for m in sb.bot_messages(after=trained.id)), 30)

    one = await voice_message(sb, short.pcm)
    reply = await answer_to(sb, one)
    heard, _, answer = reply.content.partition("\n")
    assert human.recall(short.text, heard) >= 0.8 and human.wer(short.text, heard) <= 0.25, heard
    assert answer == "Edward Ferrars, in chapter three."
    assert reply.earlier == [], "a short message is one piece: no live transcript"

    # Speech in a language it doesn't know: one clear line, not invented English.
    pcm = await asyncio.to_thread(spoken_french, "Bonjour, je voudrais une table pour ce soir.")
    reply = await answer_to(sb, await voice_message(sb, pcm))
    assert reply.content == f"I couldn't use that audio: {NOT_UNDERSTOOD}"



def _sentences(count: int, words: int, seed: int) -> list[list[str]]:
    import random

    rng = random.Random(seed)
    plain = [w for w in tones.WORDS if w not in ("slow", "crash")]
    return [[rng.choice(plain) for _ in range(words)] for _ in range(count)]


async def test_long_message_pieces_show_in_order_survive_a_crash_and_a_stretch_without_pauses(
        long_bot, error_log) -> None:
    harness = await long_bot(recognizer=tones.ToneReader, audio_workers=2)
    sb = harness.sandbox

    # 1. The first and last pieces are slow: the middle ones finish first, but are shown only after the
    # first, in order; the last one then completes the transcript and the answer replaces it.
    sentences = _sentences(10, 8, seed=1)
    sentences[0][0] = sentences[-1][-1] = "slow"
    said = [w for s in sentences for w in s]
    posted = await voice_message(sb, tones.speak(sentences))
    reply = await answer_to(sb, posted)
    heard, _, answer = reply.content.partition("\n")
    assert heard == "> " + " ".join(said)
    assert answer  # the model's answer (or its honest "don't know") to the whole text
    shown = progress_of(reply)
    total = shown[0][2]
    assert total >= 3 and shown[0][:2] == ("", 0) and len(shown) >= 2, shown
    done = [d for _, d, _ in shown]
    assert done == sorted(set(done)) and done[-1] < total, shown
    for text, _, _ in shown[1:]:  # the words of the first pieces, in order, and nothing from the last one
        assert text.split() == said[:len(text.split())] and text.split()[0] == "slow", shown
        assert len(text.split()) < len(said) - 4

    # 2. A piece that kills its worker: the others finish, the transcript says which part is missing.
    sentences = _sentences(10, 8, seed=2)
    sentences[4][3] = "crash"
    posted = await voice_message(sb, tones.speak(sentences))
    reply = await answer_to(sb, posted)
    heard = reply.content.partition("\n")[0]
    gap = re.search(r"\[I couldn't transcribe (\d+:\d\d)–(\d+:\d\d)\]", heard)
    assert gap, heard
    words = heard[2:gap.start()].split()
    assert "crash" not in words
    assert words[:8] == sentences[0] and words[-8:] == sentences[-1], heard  # first and last pieces kept
    assert len(words) < 80
    assert error_log.take("an audio worker process died") and error_log.take("crashed its worker again")

    # 3. One 60-second stretch with no pause: cut with overlaps, and each word is heard once.
    stretch = _sentences(1, 110, seed=3)
    posted = await voice_message(sb, tones.speak(stretch))
    reply = await answer_to(sb, posted)
    assert reply.content.partition("\n")[0] == "> " + " ".join(stretch[0])
    assert len(progress_of(reply)) >= 3

    # The pool still serves, and a full queue still says busy.
    assert harness.bot.transcriber.active == 0
