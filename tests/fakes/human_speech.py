"""Real human read speech (not synthetic), with its transcripts, from a pinned package: the source
distribution of pocketsphinx 5.1.1 (the release the sphinx backend installs), whose ``test/data`` holds

- ``librivox/``: five sentences of Jane Austen's *Sense and Sensibility* read by a LibriVox volunteer
  (public domain; 3-7 s each, 24.7 s in all) with their transcripts;
- ``cards/``: five short recordings of playing-card names ("eight of spades four of clubs ...").

``make dev-deps`` fetches that file with ``pip download --no-binary :all: --require-hashes`` (pinned in
requirements-samples.txt) into ``.venv/share/speech-samples``; it is read here straight from the archive
(its SHA-256 checked first), never unpacked. Nothing is downloaded at run time.

The split that keeps the figures honest: the ``cards`` recordings are the TUNING set (decoding options,
pause detection, piece lengths were chosen on them); the ``librivox`` ones are HELD OUT and only measured.
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
import tarfile
import wave
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from speech.audio import pcm_to_wav

SDIST_NAME = "pocketsphinx-5.1.1.tar.gz"
SDIST_SHA256 = "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"
SAMPLE_RATE = 16000


def sdist_path() -> Path:
    """Where ``make dev-deps`` puts the archive: beside this interpreter's virtualenv."""
    return Path(sys.prefix) / "share" / "speech-samples" / SDIST_NAME


@dataclass(frozen=True)
class Recording:
    name: str
    pcm: bytes  # 16 kHz mono s16le
    text: str  # the reference transcript, lower case, no punctuation

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / SAMPLE_RATE

    def wav(self) -> bytes:
        return to_wav(self.pcm)


to_wav = pcm_to_wav  # the recogniser's own WAV writer


@cache
def _archive() -> dict[str, bytes]:
    path = sdist_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: `make dev-deps` fetches it (requirements-samples.txt)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != SDIST_SHA256:
        raise ValueError(f"{path} does not have the pinned SHA-256")
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and "/test/data/" in member.name and \
                    ("/librivox/" in member.name or "/cards/" in member.name):
                fh = tar.extractfile(member)
                assert fh is not None
                out[member.name.split("/test/data/", 1)[1]] = fh.read()
    return out


def _pcm(wav_bytes: bytes) -> bytes:
    with wave.open(io.BytesIO(wav_bytes), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE, 1, 2)
        return w.readframes(w.getnframes())


def _transcripts(name: str) -> dict[str, str]:
    # Lines like "<s> he was not an ill disposed young man </s> (sense_and_..._0880)".
    out = {}
    for line in _archive()[name].decode().splitlines():
        m = re.match(r"\s*<s>(.*)</s>\s*\((.+)\)\s*$", line)
        if m:
            out[m.group(2).strip()] = " ".join(m.group(1).split())
    return out


@cache
def held_out() -> tuple[Recording, ...]:
    """The five LibriVox sentences: measured, never tuned on."""
    refs = _transcripts("librivox/transcription")
    return tuple(Recording(k, _pcm(_archive()[f"librivox/{k}.wav"]), v) for k, v in sorted(refs.items()))


@cache
def tuning() -> tuple[Recording, ...]:
    """The five card-name recordings: what the options were tuned on."""
    refs = _transcripts("cards/cards.transcription")
    return tuple(Recording(k, _pcm(_archive()[f"cards/{k}.wav"]), v) for k, v in sorted(refs.items()))


def long_message(recordings: tuple[Recording, ...], seconds: float, pauses: tuple[float, ...] = (0.6, 1.1, 0.8, 1.6)
                 ) -> Recording:
    """The recordings one after another (repeated until ``seconds``), with pauses between them, as one
    long voice message would be: read speech with the breaths and hesitations between sentences."""
    parts, words, total, i = [], [], 0.0, 0
    while total < seconds:
        rec = recordings[i % len(recordings)]
        gap = np.zeros(int(pauses[i % len(pauses)] * SAMPLE_RATE), dtype="<i2").tobytes()
        parts += [rec.pcm, gap]
        words.append(rec.text)
        total += rec.seconds + len(gap) / 2 / SAMPLE_RATE
        i += 1
    return Recording(f"{len(words)} recordings", b"".join(parts), " ".join(words))


# ---- scoring -------------------------------------------------------------------------------------

_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " \
         "sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number(n: int) -> str:
    if n < 20:
        return _UNITS[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _UNITS[n % 10])
    return str(n)


def normalize(text: str) -> list[str]:
    """Lower case words without punctuation; digits spelled out, hyphenated words split, Mr. -> mister."""
    text = text.lower().replace("mr.", "mister").replace("mrs.", "missus")
    text = re.sub(r"\d+", lambda m: f" {_number(int(m.group()))} ", text)
    return re.sub(r"[^a-z' ]+", " ", text.replace("-", " ")).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(ref: str, hyp: str) -> float:
    r = normalize(ref)
    return edit_distance(r, normalize(hyp)) / max(1, len(r))


def recall(ref: str, hyp: str, min_len: int = 4) -> float:
    """Share of the reference's words of ``min_len``+ letters that the hypothesis has (counted with repeats)."""
    wanted = [w for w in normalize(ref) if len(w) >= min_len]
    if not wanted:
        return 1.0
    have: dict[str, int] = {}
    for w in normalize(hyp):
        have[w] = have.get(w, 0) + 1
    found = 0
    for w in wanted:
        if have.get(w, 0) > 0:
            have[w] -= 1
            found += 1
    return found / len(wanted)
