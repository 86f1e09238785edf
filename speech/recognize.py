"""Speech recognition: recognisers and the bounded pool that runs audio jobs off the event loop.

``WhisperRecognizer`` (offline, faster-whisper; ``speech/whisper.py``, the default) and
``SphinxRecognizer`` (offline, pocketsphinx through SpeechRecognition's bundled model) are sync;
``OpenAIRecognizer`` is async. Cogs use only :class:`Transcriber`::

    pipeline = Transcriber(settings)               # at bot start; raises ConfigError/BackendError
    await pipeline.warm_up()                         # optional: spawn workers, load models (~1 s)
    t = await pipeline.transcribe(data, filename, on_progress=show)  # Transcript(text, duration, ...)
    await pipeline.close()                           # at bot shutdown

Long audio is cut at its pauses (``speech/chunks.py``) and the pieces are recognised in parallel in the
pool; ``on_progress`` sees the transcript grow, piece by piece and in order.

Why processes and not threads: pocketsphinx's ``process_raw`` holds the GIL for the whole
utterance (measured: an 11 s clip blocked a 5 ms ticker thread for 2.2 s, and two threads took
2.4x one), so a thread pool would freeze the event loop. Each worker process keeps its decoder
loaded (``recognize_sphinx`` rebuilds it on every call: ~0.3-0.5 s and ~95 MB each time).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
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
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from errors import BackendError, Busy, ConfigError, InvalidInput, TrainerError
from speech import chunks as chunking
from speech import whisper
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
        return self.transcribe_pcm(audio_data.get_raw_data(convert_rate=16000, convert_width=2))

    def transcribe_pcm(self, raw: bytes) -> str:
        """Text spoken in 16 kHz mono s16le samples; InvalidInput if no words were recognised."""
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
RECOGNIZERS: dict[str, type[SphinxRecognizer] | type[OpenAIRecognizer] | type[whisper.WhisperRecognizer]] = {
    "whisper": whisper.WhisperRecognizer,
    "sphinx": SphinxRecognizer,
    "openai": OpenAIRecognizer,
}


def recognizer_paid(settings: Settings) -> bool:
    """Whether transcribing with SPEECH_BACKEND is a paid call."""
    return RECOGNIZERS[settings.speech_backend].paid


class LocalRecognizer(Protocol):
    """What a worker process runs: built once per process by a picklable factory."""

    def warm_up(self) -> None: ...

    def transcribe_pcm(self, pcm: bytes) -> str: ...


# ---- worker-process side ---------------------------------------------------------------------

# This worker process's recogniser, built by the pool's initializer (one per process, never shared).
_worker_state: dict[str, LocalRecognizer] = {}


def _exit_with_parent(parent: int) -> None:
    # A pool worker outlives a bot killed with SIGKILL (it waits on its queue forever): leave with it.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _worker_init(factory: Callable[[], LocalRecognizer] | None) -> None:
    """Runs once in each worker process: build the recogniser and load its model before the first job."""
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()
    if factory is not None:
        rec = _worker_state["recognizer"] = factory()
        try:
            rec.warm_up()
        except TrainerError as exc:  # said again, as one clear line, by each job that needs the model
            log.error("speech worker could not load its model: %s", exc)


def _worker_recognizer() -> LocalRecognizer:
    rec = _worker_state["recognizer"]
    rec.warm_up()  # a no-op once loaded; raises the load error (e.g. a failed checksum) for this job
    return rec


def _worker_pid() -> int:
    """A no-op job: makes the pool start a worker (which loads its model) and says which one."""
    return os.getpid()


def _worker_job(data: bytes, filename: str, max_seconds: float, recognise: bool
                ) -> tuple[str | list[chunking.Chunk], float]:
    """Convert one file; short audio is recognised here at once, long audio comes back in pieces.

    Returns (text, duration) or (pieces, duration); text is "" when there is no local recogniser.
    """
    converted = convert_to_wav(data, max_seconds=max_seconds, filename_hint=filename)
    if not recognise:
        return "", converted.duration
    pieces = chunking.split(converted.pcm)
    if len(pieces) > 1:
        return pieces, converted.duration
    return _worker_recognizer().transcribe_pcm(pieces[0].pcm), converted.duration


def _worker_piece(pcm: bytes) -> str:
    """Recognise one piece of a long message; "" when it holds no words (a pause, a cough)."""
    try:
        return _worker_recognizer().transcribe_pcm(pcm)
    except InvalidInput as exc:
        if str(exc) == NO_WORDS:
            return ""
        raise


# ---- event-loop side ---------------------------------------------------------------------------


def _call_soon(loop: asyncio.AbstractEventLoop, func: Any, arg: object) -> None:
    try:
        loop.call_soon_threadsafe(func, arg)
    except RuntimeError:  # the loop is already closed: nobody is counting any more
        pass


def clock(seconds: float) -> str:
    """m:ss"""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


@dataclass(frozen=True)
class Transcript:
    """What was said, how long the audio was, and how long the whole job took (seconds).

    ``missing`` lists the (start, end) seconds of pieces that could not be recognised (their worker
    crashed); ``shown`` is the text for people, with those gaps marked; ``text`` goes to the model.
    """

    text: str
    duration: float
    seconds_taken: float
    pieces: int = 1
    missing: tuple[tuple[float, float], ...] = ()

    @property
    def shown(self) -> str:
        if not self.missing:
            return self.text
        gaps = ", ".join(f"{clock(a)}–{clock(b)}" for a, b in self.missing)
        return f"{self.text} [I couldn't transcribe {gaps}]".strip()


# ``on_progress(text so far, pieces done in order, pieces in all)``: the transcript as it grows.
Progress = Callable[[str, int, int], Awaitable[None]]


def _local_factory(settings: Settings) -> Callable[[], LocalRecognizer] | None:
    """A picklable recogniser factory for the worker processes, checked here (cheaply) at start-up."""
    if settings.speech_backend == "sphinx":
        sphinx_model_paths(settings.speech_language)  # BackendError naming SPEECH_LANGUAGE
        return functools.partial(SphinxRecognizer, settings.speech_language)
    if settings.speech_backend == "whisper":
        source = whisper.resolve(settings.whisper_model)
        # Checks the language against the model now; the model itself loads in the workers.
        whisper.WhisperRecognizer(source, settings.speech_language)
        return functools.partial(whisper.WhisperRecognizer, source, settings.speech_language, 1)
    return None


class Transcriber:
    """Bounded pool of worker processes + bounded queue; all methods are called on the event loop.

    ``recognizer_factory`` replaces the recogniser the settings name (tests inject one at the worker
    boundary); it must be picklable (a top-level callable or a functools.partial of one).
    """

    def __init__(self, settings: Settings, *, openai_client: openai.AsyncOpenAI | None = None,
                 recognizer_factory: Callable[[], LocalRecognizer] | None = None) -> None:
        self.settings = settings
        self.workers = settings.audio_workers
        # Messages being transcribed plus messages waiting: beyond this, refuse at once instead of piling up.
        self.capacity = settings.audio_workers + settings.audio_queue
        self._active = 0
        self._openai: OpenAIRecognizer | None = None
        self._factory: Callable[[], LocalRecognizer] | None = None
        if recognizer_factory is not None:
            self._factory = recognizer_factory
        elif settings.speech_backend == "openai":
            if openai_client is None:  # the bot builds the one client when OPENAI_API_KEY is set
                raise ConfigError("SPEECH_BACKEND=openai needs OPENAI_API_KEY")
            self._openai = OpenAIRecognizer(openai_client, settings.openai_transcribe_model)
        else:
            self._factory = _local_factory(settings)
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._closed = False

    @property
    def active(self) -> int:
        """Messages accepted and not finished (running or waiting for a worker)."""
        return self._active

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            # "spawn": forking a process that runs an event loop and aiohttp threads is unsafe.
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(self._factory,),
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

    def _submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        executor = self._pool()
        try:
            return executor.submit(fn, *args)
        except BrokenProcessPool:
            self._reset_pool(executor)
            return self._pool().submit(fn, *args)

    async def transcribe(self, data: bytes, filename: str, *,
                         before_paid: Callable[[], Awaitable[None]] | None = None,
                         on_progress: Progress | None = None) -> Transcript:
        """Convert and recognise one audio file off the loop; Busy at once if the queue is full.

        Long audio is recognised in pieces in parallel; ``on_progress`` is awaited with the text so far
        each time the next piece in order is done (first with nothing done, once the pieces are known).
        ``before_paid`` is awaited just before a paid API call (after the audio was checked here), so a
        budget is charged only for calls really made; whatever it raises (``OverBudget``) stops the call.
        """
        if self._closed:
            raise BackendError("The speech service is shutting down.")
        if self._active >= self.capacity:
            raise Busy(BUSY)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            cfut = self._submit(_worker_job, data, filename, self.settings.audio_max_seconds,
                                self._factory is not None)
        except BrokenProcessPool:
            raise BackendError("The speech worker crashed; please try again.") from None
        self._active += 1
        # The slot is freed when the work really ends, even if this coroutine is cancelled first.
        released = False

        def release(_f: object = None) -> None:  # on the loop
            nonlocal released
            if not released:
                released = True
                self._release(None)

        try:
            result, duration = await self._await(cfut, filename)
        except BaseException:
            if cfut.done():
                release()
            else:  # cancelled while the worker still converts: free the slot when it is really done
                cfut.add_done_callback(lambda f: _call_soon(loop, release, f))
            raise
        missing: tuple[tuple[float, float], ...] = ()
        pieces = 1
        if isinstance(result, list):
            pieces = len(result)
            try:
                text, missing = await self._pieces(result, filename, on_progress)
            except BaseException:
                release(None)
                raise
        else:
            text = result
        release(None)
        if self._openai is not None:
            if before_paid is not None:
                await before_paid()
            self._active += 1  # hold the slot during the API call too
            try:
                text = await self._openai.transcribe(data, filename)
            finally:
                self._active -= 1
        return Transcript(text=text, duration=duration, seconds_taken=time.perf_counter() - started,
                          pieces=pieces, missing=missing)

    async def _await(self, cfut: concurrent.futures.Future[Any], filename: str) -> Any:
        try:
            return await asyncio.wrap_future(cfut)
        except TrainerError:
            raise
        except BrokenProcessPool:
            log.error("an audio worker process died while handling %s", filename)
            if self._executor is not None:
                self._reset_pool(self._executor)
            raise BackendError("The speech worker crashed; please try again.") from None
        except Exception:
            log.exception("audio job for %s failed", filename)
            raise BackendError("Speech recognition failed unexpectedly; the error is in the bot's log.") \
                from None

    async def _pieces(self, pieces: list[chunking.Chunk], filename: str, on_progress: Progress | None
                      ) -> tuple[str, tuple[tuple[float, float], ...]]:
        """Recognise the pieces in parallel; report the text in order as it grows; join it at the end."""
        total = len(pieces)
        texts: list[str | None] = [None] * total
        lost: set[int] = set()
        crashed: list[int] = []
        shown = 0

        def so_far(upto: int) -> str:
            parts = [("" if texts[i] is None else texts[i]) for i in range(upto)]
            joined = chunking.join([p or "" for p in parts], [pieces[i].overlaps_previous for i in range(upto)])
            gaps = [i for i in range(upto) if i in lost]
            if gaps:
                marks = ", ".join(f"{clock(pieces[i].start)}–{clock(pieces[i].end)}" for i in gaps)
                joined = f"{joined} [I couldn't transcribe {marks}]".strip()
            return joined

        async def report() -> None:
            nonlocal shown
            advanced = False
            while shown < total and (texts[shown] is not None or shown in lost):
                shown += 1
                advanced = True
            if advanced and on_progress is not None and shown < total:
                await self._tell(on_progress, so_far(shown), shown, total)

        if on_progress is not None:
            await self._tell(on_progress, "", 0, total)
        futures = {asyncio.wrap_future(self._submit(_worker_piece, p.pcm)): p.index for p in pieces}
        pending = set(futures)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: futures[f]):
                    i = futures[fut]
                    exc = fut.exception()
                    if exc is None:
                        texts[i] = fut.result()
                    elif isinstance(exc, BrokenProcessPool):
                        crashed.append(i)
                    elif isinstance(exc, TrainerError) and not isinstance(exc, InvalidInput):
                        raise exc  # the model could not load: the same for every piece
                    else:
                        if not isinstance(exc, InvalidInput):
                            log.error("piece %d of %s failed", i + 1, filename, exc_info=exc)
                        lost.add(i)
                if not crashed:
                    await report()
            if crashed:
                # A worker died and took the pool with it: every piece it had queued failed too. Retry them
                # one at a time in a fresh pool, so a piece that kills its worker again is the one lost.
                log.error("an audio worker process died while handling %s; retrying %d piece(s) alone",
                          filename, len(crashed))
                if self._executor is not None:
                    self._reset_pool(self._executor)
                for i in sorted(crashed):
                    try:
                        texts[i] = await asyncio.wrap_future(self._submit(_worker_piece, pieces[i].pcm))
                    except BrokenProcessPool:
                        log.error("piece %d of %s (%s-%s) crashed its worker again; left out", i + 1, filename,
                                  clock(pieces[i].start), clock(pieces[i].end))
                        lost.add(i)
                        if self._executor is not None:
                            self._reset_pool(self._executor)
                    except InvalidInput:
                        lost.add(i)
                    await report()
        finally:
            for fut in pending:
                fut.cancel()
        text = chunking.join([t or "" for t in texts], [p.overlaps_previous for p in pieces])
        if not text and not lost:
            raise InvalidInput(NO_WORDS)
        if not text:
            raise BackendError("The speech worker crashed on every part of that audio; please try again.")
        missing = tuple((pieces[i].start, pieces[i].end) for i in sorted(lost))
        return text, missing

    async def _tell(self, on_progress: Progress, text: str, done: int, total: int) -> None:
        try:
            await on_progress(text, done, total)
        except Exception:  # showing progress is a courtesy: it never stops the transcription
            log.warning("could not show transcription progress", exc_info=True)

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
