"""Audio attachments in: recognise them, probe them, convert them to 16 kHz mono WAV.

Everything here is synchronous and CPU/subprocess bound: callers run it off the event loop
(``speech.Transcriber`` runs it in its worker pool). Every bad file ends in one project
exception whose message is one line a user can read; no temp file outlives a call.

Why ffmpeg/ffprobe through ``subprocess`` and not ``pydub.AudioSegment.from_file``: pydub
runs ffmpeg with no timeout, cannot pass *input* options (so no ``-t`` cap on how much is
decoded), decodes Opus to 32-bit 48 kHz (a 10-minute voice message peaks at ~360 MB), and
reports an image or a video-only webm as a bare ``IndexError``. Calling ffmpeg ourselves gives a
timeout, an input-side duration cap, a small 16 kHz s16le output and clear errors. Silence is
measured with numpy (pydub's ``rms`` goes through ``audioop``, deprecated in 3.11).
"""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from errors import BackendError, InvalidInput, TooLarge

log = logging.getLogger(__name__)

# Binary names; tests monkeypatch these (or PATH) to simulate a machine without ffmpeg.
FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"

SAMPLE_RATE = 16000  # what the pocketsphinx models (and most recognisers) expect
AUDIO_EXTENSIONS = frozenset({"ogg", "oga", "opus", "mp3", "wav", "m4a", "webm", "flac", "aac"})

# Silence: if even the loudest 100 ms window is below this RMS level, there is no speech.
# Measured: espeak speech through Opus peaks at -12 dBFS, the same speech turned down 30 dB at
# -42 dBFS (still accepted), faint white noise (amplitude 0.003) at -60 dBFS and Opus-encoded
# digital silence at -inf (both refused).
SILENCE_DBFS = -50.0
_WINDOW = SAMPLE_RATE // 10

# ffmpeg log lines that mean the input stops before its own headers say it should.
_TRUNCATION_MARKERS = (
    "ended prematurely",
    "truncated",
    "invalid pcm packet",
    "moov atom not found",
    "decode_frame() failed",
    "packet corrupt",
)


@dataclass(frozen=True)
class ConvertedAudio:
    """16 kHz mono signed 16-bit WAV bytes and their duration in seconds."""

    wav: bytes
    duration: float

    @property
    def pcm(self) -> bytes:
        """The raw s16le samples without the WAV header."""
        with wave.open(io.BytesIO(self.wav), "rb") as w:
            return w.readframes(w.getnframes())


def is_audio(content_type: str | None, filename: str) -> bool:
    """True for an ``audio/*`` content type or a known audio file extension."""
    if content_type and content_type.split(";", 1)[0].strip().lower().startswith("audio/"):
        return True
    suffix = Path(filename or "").suffix.lower().lstrip(".")
    return suffix in AUDIO_EXTENSIONS


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackendError(f"{name} is not installed: apt-get install ffmpeg")
    return path


def _fmt_seconds(seconds: float) -> str:
    seconds = math.ceil(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def _ogg_is_truncated(data: bytes) -> bool:
    """Walk Ogg pages: truncated if a page runs past the end or the last page lacks end-of-stream.

    ffmpeg decodes half an Ogg file silently to a shorter clip (its duration comes from the last
    granule it finds), so this structural check is the only reliable sign for Discord voice messages.
    """
    pos, last_flags, n = 0, None, len(data)
    while pos < n:
        if data[pos:pos + 4] != b"OggS" or pos + 27 > n:
            return True
        segments = data[pos + 26]
        if pos + 27 + segments > n:
            return True
        body = sum(data[pos + 27:pos + 27 + segments])
        end = pos + 27 + segments + body
        if end > n:
            return True
        last_flags = data[pos + 5]
        pos = end
    return last_flags is None or not (last_flags & 0x04)


def _probe(path: Path, timeout: float) -> dict:
    """ffprobe's JSON for the file, or InvalidInput if ffprobe cannot read it."""
    cmd = [_tool(FFPROBE), "-v", "error", "-show_entries",
           "format=duration,format_name:stream=codec_type,codec_name,duration",
           "-of", "json", str(path)]
    try:
        res = subprocess.run(cmd, check=False, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise InvalidInput("That audio file took too long to read; it may be damaged.") from None
    if res.returncode != 0:
        log.info("ffprobe refused the file: %s", res.stderr.decode(errors="replace").strip()[:300])
        raise InvalidInput("That file is damaged or isn't audio; I couldn't read it.")
    try:
        return json.loads(res.stdout or b"{}")
    except ValueError:
        raise InvalidInput("That file is damaged or isn't audio; I couldn't read it.") from None


def _duration(info: dict) -> float | None:
    for raw in [info.get("format", {}).get("duration")] + [
        s.get("duration") for s in info.get("streams", []) if s.get("codec_type") == "audio"
    ]:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and value > 0:
            return value
    return None


def pcm_to_wav(pcm: bytes) -> bytes:
    """16 kHz mono s16le PCM (what :func:`convert_to_wav` decodes to) as a WAV file's bytes."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm)
    return buf.getvalue()


def convert_to_wav(data: bytes, *, max_seconds: float, filename_hint: str = "audio") -> ConvertedAudio:
    """Check and convert any audio file to 16 kHz mono WAV (sync; run it off the event loop).

    Raises InvalidInput (empty, damaged/truncated, not audio, silent), TooLarge (longer than
    ``max_seconds``) or BackendError (ffmpeg missing or failing).
    """
    if not data:
        raise InvalidInput("That audio file is empty.")
    ffmpeg = _tool(FFMPEG)
    _tool(FFPROBE)
    suffix = Path(filename_hint or "").suffix.lower()
    if suffix.lstrip(".") not in AUDIO_EXTENSIONS:
        suffix = ".bin"  # ffmpeg probes the content; the name is only a hint
    is_ogg = data[:4] == b"OggS"
    if is_ogg and _ogg_is_truncated(data):
        raise InvalidInput("That audio file is truncated or damaged; I couldn't decode it.")
    # A file on disk, not a pipe: mp4/m4a keep their index at the end and need seeking.
    # The TemporaryDirectory removes it whatever happens below.
    with tempfile.TemporaryDirectory(prefix="trainer-audio-") as tmp:
        src = Path(tmp) / f"input{suffix}"
        src.write_bytes(data)
        info = _probe(src, timeout=30)
        streams = info.get("streams", [])
        if not any(s.get("codec_type") == "audio" for s in streams):
            kind = "an image or a video without sound" if streams else "not audio"
            raise InvalidInput(f"That file has no audio in it (it looks like {kind}).")
        probed = _duration(info)
        if probed is not None and probed > max_seconds + 0.5:
            raise TooLarge(
                f"That audio is {_fmt_seconds(probed)} long; the limit is {_fmt_seconds(max_seconds)}."
            )
        # -t before -i caps what is decoded even when the container does not know its length
        # (browser-recorded webm), so a long file can never cost more than max_seconds of work.
        cmd = [ffmpeg, "-nostdin", "-hide_banner", "-v", "error", "-t", f"{max_seconds + 1:.3f}",
               "-i", str(src), "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE),
               "-c:a", "pcm_s16le", "-f", "s16le", "pipe:1"]
        try:
            res = subprocess.run(cmd, check=False, capture_output=True, timeout=30 + max_seconds / 4,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BackendError("Converting that audio took too long; please try a shorter file.") from None
    stderr = res.stderr.decode(errors="replace").strip()
    if res.returncode != 0 or not res.stdout:
        log.info("ffmpeg could not decode %s (rc=%s): %s", filename_hint, res.returncode, stderr[:300])
        raise InvalidInput("That audio file is truncated or damaged; I couldn't decode it.")
    pcm = res.stdout[: len(res.stdout) - len(res.stdout) % 2]
    duration = len(pcm) / 2 / SAMPLE_RATE
    if duration > max_seconds + 0.5:
        raise TooLarge(f"That audio is longer than the limit of {_fmt_seconds(max_seconds)}.")
    lowered = stderr.lower()
    cut_short = probed is not None and duration < probed * 0.9 - 0.25
    if cut_short or any(marker in lowered for marker in _TRUNCATION_MARKERS):
        log.info("truncated audio %s: probed %s s, decoded %.2f s; %s",
                 filename_hint, probed, duration, stderr[:300])
        raise InvalidInput("That audio file is truncated or damaged; I couldn't decode it.")
    if stderr:
        log.debug("ffmpeg warnings for %s: %s", filename_hint, stderr[:300])
    if loudest_dbfs(pcm) < SILENCE_DBFS:
        raise InvalidInput("That audio is silent; I couldn't hear any speech.")
    return ConvertedAudio(wav=pcm_to_wav(pcm), duration=duration)


def loudest_dbfs(pcm: bytes) -> float:
    """RMS level (dBFS) of the loudest 100 ms window of s16le mono samples; -inf for none."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    if samples.size == 0:
        return -math.inf
    usable = samples.size - samples.size % _WINDOW
    windows = samples[:usable].reshape(-1, _WINDOW) if usable else samples.reshape(1, -1)
    rms = float(np.sqrt(np.mean(windows * windows, axis=1)).max())
    return 20 * math.log10(rms / 32768) if rms > 0 else -math.inf
