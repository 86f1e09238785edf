"""Long audio in pieces: cut decoded speech at its pauses, and join the pieces' words back together.

Used on the PCM ``speech.audio.convert_to_wav`` already decoded (16 kHz mono s16le): pydub's silence
detection runs on an ``AudioSegment`` made from those bytes, so there is no second ffmpeg run. Cuts go
in the middle of a pause. Where speech runs on past ``max_seconds`` with no pause, the cut goes at the
quietest moment of the last stretch before the limit and the next piece starts ``overlap`` earlier, so a
word under the cut is whole in one of the two pieces; :func:`join` then drops the words the two pieces
both heard.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000

# Chosen from how Whisper works (a fixed ~1 s cost per piece, 30 s windows) and read speech pauses; the
# held-out recordings only measure them (bench/audio.py --speech).
MAX_SECONDS = 20.0  # a piece never runs longer (Whisper reads 30 s windows; room for a late pause)
MIN_SECONDS = 4.0  # no piece shorter than this unless the audio is (each piece costs a fixed ~1 s)
FIRST_MAX_SECONDS = 12.0  # a shorter first piece: the first text shows sooner
MIN_PAUSE_MS = 350  # read speech: 300-800 ms between sentences and phrases, <250 ms inside them
PAUSE_BELOW_DB = 18.0  # a pause is this far below the audio's mean loudness...
PAUSE_FLOOR_DBFS = -55.0  # ...or below this, whichever is higher
OVERLAP_SECONDS = 1.5  # shared by two pieces cut where there was no pause (longer than most words)
QUIET_SEARCH_SECONDS = 2.0  # where there is no pause, cut at the quietest 50 ms of this last stretch
SEEK_STEP_MS = 10


@dataclass(frozen=True)
class Chunk:
    """One piece: its samples and where it sits in the whole (seconds); ``overlaps`` if cut without a pause."""

    index: int
    start: float
    end: float
    pcm: bytes
    overlaps_previous: bool = False


def _segment(pcm: bytes) -> object:
    # pydub imports audioop (deprecated since 3.11) and warns when ffmpeg is not on PATH; neither matters
    # here: only the in-memory AudioSegment and its silence detection are used.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pydub import AudioSegment

    return AudioSegment(data=pcm, sample_width=2, frame_rate=SAMPLE_RATE, channels=1)


def pauses(pcm: bytes, *, min_pause_ms: int = MIN_PAUSE_MS) -> list[tuple[float, float]]:
    """(start, end) seconds of each pause in the speech, found with pydub's silence detection."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pydub.silence import detect_silence

    seg = _segment(pcm)
    loudness = seg.dBFS  # type: ignore[attr-defined]
    if loudness == float("-inf"):
        return [(0.0, len(pcm) / BYTES_PER_MS / 1000)]
    threshold = max(loudness - PAUSE_BELOW_DB, PAUSE_FLOOR_DBFS)
    found = detect_silence(seg, min_silence_len=min_pause_ms, silence_thresh=threshold, seek_step=SEEK_STEP_MS)
    return [(a / 1000, b / 1000) for a, b in found]


def _quietest(samples: np.ndarray, lo: float, hi: float) -> float:
    """The middle of the quietest 50 ms window between ``lo`` and ``hi`` seconds."""
    win = SAMPLE_RATE // 20
    a, b = int(lo * SAMPLE_RATE), int(hi * SAMPLE_RATE)
    part = samples[a:b].astype(np.float32)
    if part.size < 2 * win:
        return hi
    usable = part.size - part.size % win
    energy = (part[:usable].reshape(-1, win) ** 2).mean(axis=1)
    return lo + (int(np.argmin(energy)) + 0.5) * win / SAMPLE_RATE


def split(pcm: bytes, *, max_seconds: float = MAX_SECONDS, first_max_seconds: float = FIRST_MAX_SECONDS,
          min_seconds: float = MIN_SECONDS, overlap: float = OVERLAP_SECONDS,
          min_pause_ms: int = MIN_PAUSE_MS) -> list[Chunk]:
    """Cut 16 kHz mono s16le speech into pieces at pauses; one piece if it is short enough."""
    pcm = pcm[: len(pcm) - len(pcm) % 2]
    total = len(pcm) / 2 / SAMPLE_RATE
    if total <= max_seconds:
        return [Chunk(0, 0.0, total, pcm)]
    samples = np.frombuffer(pcm, dtype="<i2")
    # A cut point in the middle of each pause; leading/trailing silence is no place to cut.
    cuts = [(a + b) / 2 for a, b in pauses(pcm, min_pause_ms=min_pause_ms) if 0 < a and b < total]
    bounds: list[tuple[float, float, bool]] = []
    start, overlapped = 0.0, False
    while total - start > (first_max_seconds if not bounds else max_seconds):
        limit = start + (first_max_seconds if not bounds else max_seconds)
        usable = [c for c in cuts if start + min_seconds <= c <= limit]
        if usable:
            cut = usable[-1]  # the last pause before the limit: pieces as long as allowed
            bounds.append((start, cut, overlapped))
            start, overlapped = cut, False
        else:  # no pause: cut where it is quietest, and let the next piece start a little earlier
            cut = _quietest(samples, max(start + min_seconds, limit - QUIET_SEARCH_SECONDS), limit)
            bounds.append((start, cut, overlapped))
            start, overlapped = max(start + min_seconds, cut - overlap), True
    bounds.append((start, total, overlapped))
    out = []
    for i, (a, b, ov) in enumerate(bounds):
        lo, hi = int(a * SAMPLE_RATE) * 2, int(b * SAMPLE_RATE) * 2
        out.append(Chunk(i, a, b, pcm[lo:hi], ov))
    return out


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def join(texts: list[str], overlapped: list[bool]) -> str:
    """The pieces' texts as one; where a piece overlaps the previous one, words both heard appear once.

    The longest run of words that ends the previous text and starts this one (compared without case
    and punctuation; the previous text's last word may be a half-heard word under the cut) is dropped
    from this one.
    """
    words: list[str] = []
    for text, ov in zip(texts, overlapped, strict=True):
        new = text.split()
        if ov and words and new:
            best, drop_last = 0, False
            for k in range(min(len(words), len(new), 8), 0, -1):
                prev = [_norm(w) for w in words[-k:]]
                if prev == [_norm(w) for w in new[:k]]:
                    best, drop_last = k, False
                    break
                if k < len(words) and [_norm(w) for w in words[-k - 1:-1]] == [_norm(w) for w in new[:k]]:
                    best, drop_last = k, True
                    break
            if drop_last:
                words.pop()
            new = new[best:]
        words.extend(new)
    return " ".join(words)
