"""speech/synthesize.py: espeak-ng output that ffmpeg (hence FFmpegPCMAudio) plays and pocketsphinx understands."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import wave
from pathlib import Path

import httpx2
import openai
import pytest

from config import Settings
from errors import BackendError, InvalidInput
from speech import audio
from speech import synthesize as tts
from speech.recognize import SphinxRecognizer
from tests.fakes import audio_samples as samples


def ffmpeg_pcm_audio_decode(data: bytes) -> bytes:
    """What discord.FFmpegPCMAudio(io.BytesIO(data), pipe=True) runs: 48 kHz stereo s16le from stdin."""
    res = subprocess.run(
        ["ffmpeg", "-i", "pipe:0", "-f", "s16le", "-ar", "48000", "-ac", "2", "-loglevel", "warning", "pipe:1"],
        input=data, capture_output=True, timeout=30, check=True,
    )
    return res.stdout


@pytest.mark.asyncio
async def test_espeak_output_is_a_valid_wav_ffmpeg_can_play_from_a_pipe() -> None:
    data = await tts.synthesize("Hello, I am the trainer bot.", Settings())
    with wave.open(io.BytesIO(data), "rb") as w:  # header sizes are real, not espeak's "unknown"
        frames, rate = w.getnframes(), w.getframerate()
    assert frames * 2 + 44 == len(data)
    assert 1.0 < frames / rate < 4.0
    pcm = ffmpeg_pcm_audio_decode(data)
    assert abs(len(pcm) / (48000 * 4) - frames / rate) < 0.1


@pytest.mark.asyncio
async def test_spoken_text_round_trips_through_recognition() -> None:
    text = samples.SENTENCES[4]  # "i would like a cup of coffee with milk"
    data = await tts.synthesize(text, Settings())
    wav = audio.convert_to_wav(data, max_seconds=30, filename_hint="tts.wav").wav
    heard = SphinxRecognizer().transcribe(wav)
    # measured: heard exactly (WER 0%) with the en-us+f2 voice at 160 wpm (the plain en-us voice
    # gives "what are the real", 100%); a broken WAV would give nonsense or an error.
    assert samples.wer(text, heard) < 0.3, heard


@pytest.mark.asyncio
async def test_text_is_fed_through_stdin_not_argv() -> None:
    # Passed as argv, "--help" would print espeak's usage instead of speaking.
    data = await tts.synthesize("--help", Settings())
    assert data[:4] == b"RIFF" and len(data) > 2000


def test_speakable_strips_markup_and_truncates() -> None:
    assert tts.speakable("**Hi** <@123> see https://x.y/z `now`") == "Hi see a link now"
    long = "word " * 1000
    cut = tts.speakable(long)
    assert len(cut) <= tts.MAX_CHARS + 1 and cut.endswith("…")
    sentences = "This is a sentence. " * 100
    assert tts.speakable(sentences).endswith("sentence.")


@pytest.mark.asyncio
async def test_long_text_is_cut_to_a_sane_length() -> None:
    data = await tts.synthesize("this is a long answer " * 300, Settings())
    with wave.open(io.BytesIO(data), "rb") as w:
        seconds = w.getnframes() / w.getframerate()
    assert seconds < 60  # 6600 characters would take over 7 minutes


@pytest.mark.asyncio
async def test_nothing_to_say_and_tts_off() -> None:
    with pytest.raises(InvalidInput, match="nothing to say"):
        await tts.synthesize("  ** ``` ", Settings())
    with pytest.raises(BackendError, match="TTS_BACKEND=none"):
        await tts.synthesize("hi", dataclasses.replace(Settings(), tts_backend="none"))


@pytest.mark.asyncio
async def test_espeak_missing_and_unknown_voice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendError, match="SPEECH_LANGUAGE='zz-ZZ'"):
        await tts.synthesize("hi", dataclasses.replace(Settings(), speech_language="zz-ZZ"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendError, match="espeak-ng is not installed: apt-get install espeak-ng"):
        await tts.synthesize("hi", Settings())


def client(handler) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="k", base_url="http://openai.test/v1", max_retries=0,
                              http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))


@pytest.mark.asyncio
async def test_openai_speech_request_and_bytes() -> None:
    seen: list[dict] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append({"path": request.url.path, **json.loads(request.read())})
        return httpx2.Response(200, content=b"RIFF-fake-wav", headers={"content-type": "audio/wav"})

    settings = dataclasses.replace(Settings(), tts_backend="openai", openai_tts_voice="verse")
    assert await tts.synthesize("Hello **there**", settings, client(handler)) == b"RIFF-fake-wav"
    assert seen == [{"path": "/v1/audio/speech", "model": settings.openai_tts_model, "voice": "verse",
                     "input": "Hello there", "response_format": "wav"}]


@pytest.mark.asyncio
async def test_openai_speech_errors() -> None:
    def failing(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(429, json={"error": {"message": "slow down", "type": "rate_limit"}},
                               headers={"content-type": "application/json"})

    settings = dataclasses.replace(Settings(), tts_backend="openai")
    with pytest.raises(BackendError, match=r"HTTP 429.*slow down"):
        await tts.synthesize("hi", settings, client(failing))
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        await tts.synthesize("hi", settings)


def test_which_synthesizers_are_paid() -> None:
    """Budgets apply to OpenAI speech only, as the synthesizers' class attributes say; TTS_BACKEND=none is free."""
    assert (tts.EspeakSynthesizer.paid, tts.OpenAISynthesizer.paid) == (False, True)
    assert [tts.synthesizer_paid(dataclasses.replace(Settings(), tts_backend=b))
            for b in ("espeak", "openai", "none")] == [False, True, False]
