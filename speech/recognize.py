"""Speech recognition: recognisers and the bounded pool that runs audio jobs off the event loop.

``SphinxRecognizer`` (offline, pocketsphinx through SpeechRecognition's bundled model) is sync;
``OpenAIRecognizer`` is async. Cogs use only :class:`Transcriber`::

    pipeline = Transcriber(settings)               # at bot start; raises ConfigError/BackendError
    await pipeline.warm_up()                         # optional: spawn workers, load models (~1 s)
    t = await pipeline.transcribe(data, filename)    # Transcript(text, duration, seconds_taken)
    await pipeline.close()                           # at bot shutdown

Why processes and not threads: pocketsphinx's ``process_raw`` holds the GIL for the whole
utterance (measured: an 11 s clip blocked a 5 ms ticker thread for 2.2 s, and two threads took
2.4x one), so a thread pool would freeze the event loop. Each worker process keeps its decoder
loaded (``recognize_sphinx`` rebuilds it on every call: ~0.3-0.5 s and ~95 MB each time).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from errors import BackendError, Busy, ConfigError, InvalidInput, TrainerError
from speech.audio import convert_to_wav

if TYPE_CHECKING:
    import openai

    from config import Settings

log = logging.getLogger(__name__)

NO_WORDS = "I couldn't make out any words in that audio."
BUSY = "I'm busy transcribing other voice messages — try again in a minute."


def _import_sr() -> Any:
    # speech_recognition imports the deprecated aifc/audioop modules at import time (3.11 warns).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import speech_recognition

    return speech_recognition


def sphinx_model_paths(language: str) -> tuple[str, str, str]:
    """(acoustic model dir, language model, dictionary) for SPEECH_LANGUAGE, or BackendError."""
    sr = _import_sr()
    base = os.path.join(os.path.dirname(os.path.realpath(sr.__file__)), "pocketsphinx-data", language)
    paths = (
        os.path.join(base, "acoustic-model"),
        os.path.join(base, "language-model.lm.bin"),
        os.path.join(base, "pronounciation-dictionary.dict"),  # sic: SpeechRecognition's spelling
    )
    if not (os.path.isdir(paths[0]) and os.path.isfile(paths[1]) and os.path.isfile(paths[2])):
        raise BackendError(
            f"SPEECH_LANGUAGE={language!r} has no offline pocketsphinx model (looked in {base}); "
            "only en-US ships with SpeechRecognition — install that language's model there "
            "or use SPEECH_BACKEND=openai"
        )
    return paths


class SphinxRecognizer:
    """Offline recogniser; ``transcribe`` is sync, CPU bound and holds the GIL: run it in a process."""

    paid: ClassVar[bool] = False  # runs here: never counted against a member's budget

    def __init__(self, language: str = "en-US") -> None:
        self.language = language
        self._paths = sphinx_model_paths(language)  # fail at start-up, not on the first message
        self._local = threading.local()

    def _decoder(self) -> Any:
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            from pocketsphinx import Config, Decoder

            hmm, lm, dictionary = self._paths
            # Same settings as SpeechRecognition's recognize_sphinx, but built once per thread.
            decoder = Decoder(Config(hmm=hmm, lm=lm, dict=dictionary, logfn=os.devnull))
            self._local.decoder = decoder
        return decoder

    def warm_up(self) -> None:
        """Load the model now (about 0.3 s) so the first message does not pay for it."""
        self._decoder()

    def transcribe(self, wav: bytes) -> str:
        """Text spoken in a WAV file; InvalidInput if no words were recognised."""
        sr = _import_sr()
        with sr.AudioFile(io.BytesIO(wav)) as source:
            audio_data = sr.Recognizer().record(source)
        # What recognize_sphinx feeds the decoder: 16 kHz 16-bit little-endian mono.
        raw = audio_data.get_raw_data(convert_rate=16000, convert_width=2)
        decoder = self._decoder()
        decoder.start_utt()
        try:
            decoder.process_raw(raw, False, True)
        finally:
            decoder.end_utt()
        hyp = decoder.hyp()
        text = (hyp.hypstr if hyp is not None else "").strip()
        if not text:
            raise InvalidInput(NO_WORDS)
        return text


class OpenAIRecognizer:
    """OpenAI transcription; ``transcribe`` is async and sends the original file bytes."""

    paid: ClassVar[bool] = True  # a billed API call: members' daily budgets apply

    def __init__(self, client: openai.AsyncOpenAI, model: str) -> None:
        self.client = client
        self.model = model

    async def transcribe(self, data: bytes, filename: str) -> str:
        """Text spoken in ``data`` (any format the API accepts); BackendError on API failure."""
        import openai

        try:
            result = await self.client.audio.transcriptions.create(file=(filename, data), model=self.model)
        except openai.APIStatusError as exc:
            raise BackendError(f"OpenAI transcription failed (HTTP {exc.status_code}): "
                               f"{str(exc.message)[:200]}") from None
        except openai.APIError as exc:
            raise BackendError(f"OpenAI transcription failed: {type(exc).__name__}") from None
        text = (getattr(result, "text", None) or "").strip()
        if not text:
            raise InvalidInput(NO_WORDS)
        return text


# SPEECH_BACKEND name -> recogniser class (their ``paid`` attribute says whether budgets apply).
RECOGNIZERS: dict[str, type[SphinxRecognizer] | type[OpenAIRecognizer]] = {
    "sphinx": SphinxRecognizer,
    "openai": OpenAIRecognizer,
}


def recognizer_paid(settings: Settings) -> bool:
    """Whether transcribing with SPEECH_BACKEND is a paid call."""
    return RECOGNIZERS[settings.speech_backend].paid


# ---- worker-process side ---------------------------------------------------------------------

_worker_recognizers: dict[str, SphinxRecognizer] = {}


def _exit_with_parent(parent: int) -> None:
    # A pool worker outlives a bot killed with SIGKILL (it waits on its queue forever): leave with it.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _worker_init(language: str | None) -> None:
    """Runs once in each worker process: load the decoder before the first job arrives."""
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()
    if language:
        _worker_recognizer(language).warm_up()


def _worker_recognizer(language: str) -> SphinxRecognizer:
    rec = _worker_recognizers.get(language)
    if rec is None:
        rec = _worker_recognizers[language] = SphinxRecognizer(language)
    return rec


def _worker_pid() -> int:
    """A no-op job: makes the pool start a worker (which loads its model) and says which one."""
    return os.getpid()


def _worker_job(data: bytes, filename: str, max_seconds: float, language: str | None) -> tuple[str, float]:
    """Convert (and with ``language``, recognise) one file; returns (text or "", duration)."""
    converted = convert_to_wav(data, max_seconds=max_seconds, filename_hint=filename)
    text = _worker_recognizer(language).transcribe(converted.wav) if language else ""
    return text, converted.duration


# ---- event-loop side ---------------------------------------------------------------------------


def _call_soon(loop: asyncio.AbstractEventLoop, func: Any, arg: object) -> None:
    try:
        loop.call_soon_threadsafe(func, arg)
    except RuntimeError:  # the loop is already closed: nobody is counting any more
        pass


@dataclass(frozen=True)
class Transcript:
    """What was said, how long the audio was, and how long the whole job took (seconds)."""

    text: str
    duration: float
    seconds_taken: float


class Transcriber:
    """Bounded pool of worker processes + bounded queue; all methods are called on the event loop."""

    def __init__(self, settings: Settings, *, openai_client: openai.AsyncOpenAI | None = None) -> None:
        self.settings = settings
        self.workers = settings.audio_workers
        # Jobs running plus jobs waiting: beyond this, refuse at once instead of piling up.
        self.capacity = settings.audio_workers + settings.audio_queue
        self._active = 0
        self._openai: OpenAIRecognizer | None = None
        self._language: str | None = None
        if settings.speech_backend == "openai":
            if openai_client is None:  # the bot builds the one client when OPENAI_API_KEY is set
                raise ConfigError("SPEECH_BACKEND=openai needs OPENAI_API_KEY")
            self._openai = OpenAIRecognizer(openai_client, settings.openai_transcribe_model)
        else:
            sphinx_model_paths(settings.speech_language)  # BackendError naming SPEECH_LANGUAGE
            self._language = settings.speech_language
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._closed = False

    @property
    def active(self) -> int:
        """Jobs accepted and not finished (running or waiting for a worker)."""
        return self._active

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            # "spawn": forking a process that runs an event loop and aiohttp threads is unsafe.
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(self._language,),
            )
        return self._executor

    async def warm_up(self) -> int:
        """Start every worker and load its model now (call once at bot start); returns how many run."""
        executor = self._pool()
        pids = await asyncio.gather(
            *(asyncio.wrap_future(executor.submit(_worker_pid)) for _ in range(self.workers))
        )
        return len(executor._processes or {}) or len(set(pids))

    def _release(self, _future: object) -> None:
        self._active -= 1

    async def transcribe(self, data: bytes, filename: str, *,
                         before_paid: Callable[[], Awaitable[None]] | None = None) -> Transcript:
        """Convert and recognise one audio file off the loop; Busy at once if the queue is full.

        ``before_paid`` is awaited just before a paid API call (after the audio was checked here), so a
        budget is charged only for calls really made; whatever it raises (``OverBudget``) stops the call.
        """
        if self._closed:
            raise BackendError("The speech service is shutting down.")
        if self._active >= self.capacity:
            raise Busy(BUSY)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        executor = self._pool()
        try:
            cfut = executor.submit(_worker_job, data, filename, self.settings.audio_max_seconds, self._language)
        except BrokenProcessPool:
            self._reset_pool(executor)
            raise BackendError("The speech worker crashed; please try again.") from None
        self._active += 1
        # The slot is freed when the work really ends, even if this coroutine is cancelled first.
        cfut.add_done_callback(lambda f: _call_soon(loop, self._release, f))
        try:
            text, duration = await asyncio.wrap_future(cfut)
        except TrainerError:
            raise
        except BrokenProcessPool:
            log.error("an audio worker process died while handling %s", filename)
            self._reset_pool(executor)
            raise BackendError("The speech worker crashed; please try again.") from None
        except Exception:
            log.exception("audio job for %s failed", filename)
            raise BackendError("Speech recognition failed unexpectedly; the error is in the bot's log.") \
                from None
        if self._openai is not None:
            if before_paid is not None:
                await before_paid()
            self._active += 1  # hold the slot during the API call too
            try:
                text = await self._openai.transcribe(data, filename)
            finally:
                self._active -= 1
        return Transcript(text=text, duration=duration, seconds_taken=time.perf_counter() - started)

    def _reset_pool(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        # Only the pool that broke: other jobs from it fail too and must not kill its replacement.
        if self._executor is broken:
            self._executor = None
            broken.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Stop accepting work, cancel queued jobs and wait for running ones (off the loop)."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)
