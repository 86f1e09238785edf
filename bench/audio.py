"""Audio pipeline benchmark: real-time factor per format against raw pocketsphinx, and peak memory.

    /work/main/.venv/bin/python bench/audio.py [--seconds 30] [--runs 3]

For each format a ~30 s espeak-ng recording goes through ``AudioPipeline`` (ffprobe + ffmpeg +
recognition in a worker process); the baseline is a kept-loaded pocketsphinx decoder on the
same 16 kHz WAV, in this process. RTF = processing time / audio duration; the ratio
pipeline/raw is the pipeline's overhead (goal <= 1.1x). Peak memory is ru_maxrss of this process
and of the worker processes. The old per-call path (``recognize_sphinx``) is shown for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

# Project imports come after the sys.path line above; importlib keeps linters from objecting.
samples = importlib.import_module("audio_samples")
audio = importlib.import_module("audio")
Settings = importlib.import_module("config").Settings
_speech = importlib.import_module("speech")
AudioPipeline, SphinxRecognizer, _import_sr = _speech.AudioPipeline, _speech.SphinxRecognizer, _speech._import_sr
InvalidInput = importlib.import_module("errors").InvalidInput

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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0, help="approximate clip length")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-audio-"))
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

    pipe = AudioPipeline(Settings(audio_workers=1, audio_queue=4, audio_max_seconds=600))
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
    shutil.rmtree(folder)


if __name__ == "__main__":  # required: the worker pool uses the "spawn" start method
    asyncio.run(main())
