"""Audio pipeline benchmark: real-time factor per format against raw pocketsphinx, peak memory, and
``!hi`` latency through the sandbox while the bot transcribes voice messages.

    /work/main/.venv/bin/python bench/audio.py [--seconds 30] [--runs 3] [--voice-messages 8] [--only-latency]

For each format a ~30 s espeak-ng recording goes through ``Transcriber`` (ffprobe + ffmpeg +
recognition in a worker process); the baseline is a kept-loaded pocketsphinx decoder on the
same 16 kHz WAV, in this process. RTF = processing time / audio duration; the ratio
pipeline/raw is the pipeline's overhead (goal <= 1.1x). Peak memory is ru_maxrss of this process
and of the worker processes. The old per-call path (``recognize_sphinx``) is shown for reference.

Latency: the real bot (prod mode: workers warmed up at start, default AUDIO_WORKERS) logs into the
sandbox; ``--voice-messages`` voice messages (~10 s of speech each) are posted at once, and
sequential ``!hi`` round trips run until the last one is answered (goal: p99 < 50 ms), next to the
same round trips with nothing else going on.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

# Project imports come after the sys.path line above; importlib keeps linters from objecting.
samples = importlib.import_module("tests.fakes.audio_samples")
audio = importlib.import_module("speech.audio")
Settings = importlib.import_module("config").Settings
_speech = importlib.import_module("speech.recognize")
Transcriber, SphinxRecognizer, _import_sr = _speech.Transcriber, _speech.SphinxRecognizer, _speech._import_sr
InvalidInput = importlib.import_module("errors").InvalidInput
roundtrip = importlib.import_module("bench.roundtrip")

log = logging.getLogger(__name__)


def raw_sphinx_seconds(rec: SphinxRecognizer, wav: bytes, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        try:
            rec.transcribe(wav)
        except InvalidInput:  # an empty transcript still costs the same time
            log.info("no words recognised")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def recognize_sphinx_seconds(wav: bytes) -> float:
    sr = _import_sr()
    with sr.AudioFile(__import__("io").BytesIO(wav)) as source:
        data = sr.Recognizer().record(source)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sr.Recognizer().recognize_sphinx(data)
        except sr.UnknownValueError:
            pass
    return time.perf_counter() - start


def peak_kib(pid: int) -> int:
    """A live process's peak resident memory (VmHWM) in KiB, 0 if unreadable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1])
    except (OSError, StopIteration, ValueError):
        return 0


async def hi_latency(folder: Path, voice_messages: int) -> None:
    """``!hi`` p50/p99 through the sandbox, idle and while ``voice_messages`` are being transcribed."""
    from bot import start_bot, stop_bot
    from sandbox.server import Sandbox

    text = ". ".join(samples.SENTENCES[:4])  # ~10 s of speech
    clip = samples.speak(text, folder, "ogg", name="voice-message").read_bytes()
    settings = Settings.from_env({"DATA_DIR": str(folder / "d"), "CORRECTIONS_DIR": str(folder / "c"),
                                  "MODE": "prod", "DISCORD_TOKEN": "x"})
    sb = await Sandbox().start()
    settings = dataclasses.replace(settings, audio_queue=max(settings.audio_queue, voice_messages))
    bot = await start_bot(settings, api_base=sb.api_base, token=sb.bot_token)
    await bot.transcriber.warm_up()  # prod mode starts this at load; wait for it here
    try:
        await roundtrip.measure(sb, 20)  # warm-up
        _, idle = await roundtrip.measure(sb, 200)
        posted = [await sb.post_message("member", "", attachments=[("voice-message.ogg", clip, "audio/ogg")],
                                        voice_message=True, duration_secs=10.0)
                  for _ in range(voice_messages)]
        ids = {m.id for m in posted}

        def answered() -> int:
            return len({m.reference_id for m in sb.bot_messages() if m.reference_id in ids})

        loop = asyncio.get_running_loop()
        start = loop.time()
        busy: list[float] = []
        while answered() < len(posted):
            busy += (await roundtrip.measure(sb, 10))[1]
        elapsed = loop.time() - start
        refused = sum(1 for m in sb.bot_messages() if m.reference_id in ids and not m.content.startswith("> "))
    finally:
        await stop_bot(bot)
        await sb.close()
    print(f"\n!hi through the sandbox (prod mode, AUDIO_WORKERS={settings.audio_workers}, {os.cpu_count()} CPUs)")
    print(f"{'while':<34}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    print(f"{'idle':<34}{len(idle):>6}{roundtrip.pct(idle, 0.5):>9.2f}{roundtrip.pct(idle, 0.99):>9.2f}"
          f"{max(idle) * 1000:>9.2f}")
    label = f"{voice_messages} voice messages transcribing"
    print(f"{label:<34}{len(busy):>6}{roundtrip.pct(busy, 0.5):>9.2f}{roundtrip.pct(busy, 0.99):>9.2f}"
          f"{max(busy) * 1000:>9.2f}")
    print(f"the {voice_messages} voice messages (~10 s each) were answered in {elapsed:.1f} s "
          f"({refused} refused as busy); goal p99 < 50 ms")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0, help="approximate clip length")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--voice-messages", type=int, default=8)
    parser.add_argument("--only-latency", action="store_true", help="skip the RTF and memory figures")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    folder = Path(tempfile.mkdtemp(prefix="bench-audio-"))
    if args.only_latency:
        await hi_latency(folder, args.voice_messages)
        shutil.rmtree(folder)
        return
    # Repeat the sentences until the clip is about as long as asked (espeak: ~2.4 s per sentence).
    repeats = max(1, round(args.seconds / 2.4))
    text = ". ".join((samples.SENTENCES * (repeats // len(samples.SENTENCES) + 1))[:repeats])
    wav_file = samples.speak(text, folder, "wav", name="clip")
    wav16 = audio.convert_to_wav(wav_file.read_bytes(), max_seconds=600, filename_hint="clip.wav")
    print(f"clip: {wav16.duration:.1f} s of speech, {args.runs} runs each (median)")

    rec = SphinxRecognizer()
    rec.warm_up()
    raw = raw_sphinx_seconds(rec, wav16.wav, args.runs)
    print(f"raw pocketsphinx (kept decoder, in-process): {raw:.2f} s  RTF {raw / wav16.duration:.3f}")
    legacy = recognize_sphinx_seconds(wav16.wav)
    print(f"recognize_sphinx (decoder rebuilt per call):  {legacy:.2f} s  RTF {legacy / wav16.duration:.3f}")

    pipe = Transcriber(Settings(audio_workers=1, audio_queue=4, audio_max_seconds=600))
    await pipe.transcribe(wav16.wav, "warm.wav")  # spawn the worker and load its model first
    print("per format: raw = kept decoder on that format's own converted WAV (search effort depends")
    print("on the audio, so each format gets its own baseline); runs interleaved raw/pipeline")
    print(f"{'format':6} {'size':>9} {'convert':>8} {'raw':>7} {'pipeline':>9} {'RTF':>6} {'vs raw':>7}")
    for fmt in ("ogg", "mp3", "m4a", "wav"):
        path = samples.speak(text, folder, fmt, name=f"clip-{fmt}")
        data = path.read_bytes()
        conv, raws, total = [], [], []
        for _ in range(args.runs):
            start = time.perf_counter()
            converted = audio.convert_to_wav(data, max_seconds=600, filename_hint=path.name)
            conv.append(time.perf_counter() - start)
            raws.append(raw_sphinx_seconds(rec, converted.wav, 1))
            result = await pipe.transcribe(data, path.name)
            total.append(result.seconds_taken)
        c, r, t = statistics.median(conv), statistics.median(raws), statistics.median(total)
        print(f"{fmt:6} {len(data):>9} {c:>7.2f}s {r:>6.2f}s {t:>8.2f}s {t / result.duration:>6.3f} "
              f"{t / r:>6.2f}x")
    worker_peaks = [peak_kib(proc.pid) for proc in (pipe._executor._processes or {}).values()]
    await pipe.close()

    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: this process {me:.0f} MB (two in-process decoders: kept + recognize_sphinx), "
          f"worker process {max(worker_peaks, default=0) / 1024:.0f} MB")
    # (RUSAGE_CHILDREN is not shown: a forked child inherits the parent's peak, so it misleads.)
    await hi_latency(folder, args.voice_messages)
    shutil.rmtree(folder)


if __name__ == "__main__":  # required: the worker pool uses the "spawn" start method
    asyncio.run(main())
