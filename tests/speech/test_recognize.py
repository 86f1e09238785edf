"""speech/recognize.py: real recognition of real (espeak-made) speech through the worker pool.

Word error rates are held to the bounds in ``tests/fakes/audio_samples.py`` (measured there): to keep
the file fast, OGG/Opus (what Discord voice messages are) runs all six sentences with a 35% bound and
the other formats run sentences 3-5 with a 30% bound. A broken conversion (wrong rate, channels,
clipping) or a broken decoder gives 80-100%. Also: bad audio, the bounded queue, killed workers, and
the OpenAI recogniser against a mock transport.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from config import Settings
from errors import BackendError, Busy, InvalidInput, OverBudget, TooLarge
from speech.recognize import (
    BUSY,
    NO_WORDS,
    OpenAIRecognizer,
    SphinxRecognizer,
    Transcriber,
    Transcript,
    recognizer_paid,
)
from tests.fakes import audio_samples as samples
from tests.fakes.audio_samples import OGG_WER_BOUND, SUBSET, SUBSET_WER_BOUND, corpus_wer


@pytest.fixture(scope="module")
def pipeline(worker_tmpdir: Path) -> Iterator[Transcriber]:
    pipe = Transcriber(Settings(speech_backend="sphinx", audio_workers=2, audio_queue=16, audio_max_seconds=20.0))
    yield pipe
    asyncio.run(pipe.close())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    folder = tmp_path_factory.mktemp("speech")
    return {
        fmt: [samples.speak(s, folder / fmt, fmt) for s in samples.SENTENCES[: None if fmt == "ogg" else 5]]
        for fmt in samples.FORMATS
    }


def leftovers(folder: Path) -> list[str]:
    """Files left in the workers' temp dir (sync helper: keeps blocking calls out of async tests)."""
    return sorted(os.listdir(folder))


@pytest.mark.asyncio
@pytest.mark.parametrize("fmt", list(samples.FORMATS))
async def test_recognises_speech_in_every_format(
    pipeline: Transcriber, corpus: dict[str, list[Path]], worker_tmpdir: Path, fmt: str
) -> None:
    files, refs, bound = corpus[fmt], samples.SENTENCES, OGG_WER_BOUND
    if fmt != "ogg":
        files, refs, bound = files[SUBSET], refs[SUBSET], SUBSET_WER_BOUND
    results = await asyncio.gather(*(pipeline.transcribe(f.read_bytes(), f.name) for f in files))
    assert all(isinstance(r, Transcript) for r in results)
    rate = corpus_wer(refs, [r.text for r in results])
    assert rate < bound, f"{fmt}: WER {rate:.0%}: {[r.text for r in results]}"
    assert all(1.0 < r.duration < 5.0 and r.seconds_taken > 0 for r in results)
    assert leftovers(worker_tmpdir) == []
    assert pipeline.active == 0


@pytest.mark.asyncio
async def test_bad_audio_through_the_pool_gives_one_clear_error_each(
    pipeline: Transcriber, corpus: dict[str, list[Path]], worker_tmpdir: Path, tmp_path: Path
) -> None:
    ogg = corpus["ogg"][0].read_bytes()
    long_clip = samples.speak(" ".join(samples.SENTENCES * 2), tmp_path, "ogg", name="long")
    cases = {
        "empty": (b"", "voice-message.ogg", InvalidInput, "That audio file is empty."),
        "half": (ogg[: len(ogg) // 2], "voice-message.ogg", InvalidInput, "truncated"),
        "png": (samples.png(tmp_path).read_bytes(), "a.png", InvalidInput, "no audio in it"),
        "video": (samples.video_only_webm(tmp_path).read_bytes(), "v.webm", InvalidInput, "no audio in it"),
        "silent": (samples.silence(tmp_path).read_bytes(), "s.ogg", InvalidInput, "silent"),
        "long": (long_clip.read_bytes(), "long.ogg", TooLarge, "the limit is 20 s"),
    }
    for name, (data, filename, exc_type, text) in cases.items():
        with pytest.raises(exc_type) as info:
            await pipeline.transcribe(data, filename)
        assert text in str(info.value), name
        assert "\n" not in str(info.value)
    assert leftovers(worker_tmpdir) == []
    # the pool is still healthy afterwards
    ok = await pipeline.transcribe(ogg, "voice-message.ogg")
    assert samples.wer(samples.SENTENCES[0], ok.text) < 0.8


@pytest.mark.asyncio
async def test_loop_is_not_blocked_while_recognising(pipeline: Transcriber, tmp_path: Path) -> None:
    clip = samples.speak(" ".join(samples.SENTENCES[SUBSET]), tmp_path, "ogg", name="three")
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - start - 0.01)

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    result = await pipeline.transcribe(clip.read_bytes(), clip.name)
    busy_for = time.perf_counter() - started
    done.set()
    await tick
    assert result.duration > 6 and busy_for > 0.5  # the job really took a while...
    assert max(lags) < 0.2, f"event loop blocked for {max(lags):.3f} s"  # ...and the loop kept running


@pytest.mark.asyncio
async def test_full_queue_says_busy_at_once(worker_tmpdir: Path, corpus: dict[str, list[Path]]) -> None:
    pipe = Transcriber(Settings(speech_backend="sphinx", audio_workers=1, audio_queue=1))
    data = corpus["ogg"][0].read_bytes()
    try:
        assert await pipe.warm_up() == 1
        started = time.perf_counter()
        results = await asyncio.gather(
            *(pipe.transcribe(data, "v.ogg") for _ in range(4)), return_exceptions=True
        )
        busy = [r for r in results if isinstance(r, Busy)]
        done = [r for r in results if isinstance(r, Transcript)]
        assert len(busy) == 2 and len(done) == 2, results
        assert str(busy[0]) == BUSY
        assert pipe.active == 0
        # once the queue drains, new work is accepted again
        assert isinstance(await pipe.transcribe(data, "v.ogg"), Transcript)
        assert time.perf_counter() - started < 30
    finally:
        await pipe.close()
    with pytest.raises(BackendError, match="shutting down"):
        await pipe.transcribe(data, "v.ogg")


@pytest.mark.asyncio
async def test_slot_is_freed_when_the_caller_gives_up(worker_tmpdir: Path, corpus: dict[str, list[Path]]) -> None:
    pipe = Transcriber(Settings(speech_backend="sphinx", audio_workers=1, audio_queue=1))
    data = corpus["ogg"][0].read_bytes()
    try:
        task = asyncio.create_task(pipe.transcribe(data, "v.ogg"))
        await asyncio.sleep(0.05)
        assert pipe.active == 1
        task.cancel()
        for _ in range(600):  # the work itself still finishes in the worker; then the slot frees
            if pipe.active == 0:
                break
            await asyncio.sleep(0.05)
        assert pipe.active == 0
    finally:
        await pipe.close()


def test_unknown_language_names_the_setting() -> None:
    with pytest.raises(BackendError, match="SPEECH_LANGUAGE='fr-FR'"):
        Transcriber(Settings(speech_backend="sphinx", speech_language="fr-FR"))
    with pytest.raises(BackendError, match="SPEECH_LANGUAGE"):
        SphinxRecognizer("xx")


def test_sphinx_keeps_one_decoder_per_thread(corpus: dict[str, list[Path]]) -> None:
    from speech import audio

    rec = SphinxRecognizer("en-US")
    wav = audio.convert_to_wav(corpus["wav"][2].read_bytes(), max_seconds=30).wav
    first = rec.transcribe(wav)
    decoder = rec._decoder()
    assert rec.transcribe(wav) == first  # same decoder, same answer
    assert rec._decoder() is decoder
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(rec._decoder()))
    thread.start()
    thread.join()
    assert other[0] is not decoder
    assert samples.wer(samples.SENTENCES[2], first) < 0.5


def test_sphinx_no_words_is_a_clear_error() -> None:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * 1600)
    with pytest.raises(InvalidInput) as info:
        SphinxRecognizer().transcribe(buf.getvalue())
    assert str(info.value) == NO_WORDS


# ---- OpenAI backend, against a mock transport (no network) -------------------------------------


def openai_client(handler) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="test-key", base_url="http://openai.test/v1",
                              http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
                              max_retries=0)


@pytest.mark.asyncio
async def test_openai_recognizer_sends_the_original_file() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json={"text": " hello there "},
                               headers={"content-type": "application/json"})

    rec = OpenAIRecognizer(openai_client(handler), "gpt-4o-mini-transcribe")
    assert await rec.transcribe(b"OggS-original-bytes", "voice-message.ogg") == "hello there"
    body = seen[0].read()
    assert seen[0].url.path == "/v1/audio/transcriptions"
    assert b'filename="voice-message.ogg"' in body and b"OggS-original-bytes" in body
    assert b"gpt-4o-mini-transcribe" in body


@pytest.mark.asyncio
async def test_openai_recognizer_errors() -> None:
    def empty(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={"text": ""}, headers={"content-type": "application/json"})

    def failing(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(500, json={"error": {"message": "server on fire", "type": "server_error"}},
                               headers={"content-type": "application/json"})

    with pytest.raises(InvalidInput, match="couldn't make out any words"):
        await OpenAIRecognizer(openai_client(empty), "m").transcribe(b"x", "a.ogg")
    with pytest.raises(BackendError, match=r"HTTP 500.*server on fire"):
        await OpenAIRecognizer(openai_client(failing), "m").transcribe(b"x", "a.ogg")


@pytest.mark.asyncio
async def test_openai_pipeline_validates_locally_before_calling_the_api(
    worker_tmpdir: Path, corpus: dict[str, list[Path]]
) -> None:
    calls: list[dict] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append({"path": request.url.path, "size": len(request.read())})
        return httpx2.Response(200, json={"text": "from the api"}, headers={"content-type": "application/json"})

    settings = dataclasses.replace(Settings(), speech_backend="openai", audio_workers=1, audio_queue=1)
    pipe = Transcriber(settings, openai_client=openai_client(handler))
    try:
        charged: list[str] = []

        async def before_paid() -> None:  # the budget hook: awaited only right before a paid call
            charged.append("charge")
            if len(charged) > 1:
                raise OverBudget(1, 0)

        with pytest.raises(InvalidInput, match="empty"):
            await pipe.transcribe(b"", "voice-message.ogg", before_paid=before_paid)
        assert calls == [] and charged == [], "audio refused here is neither sent nor charged"
        ogg = corpus["ogg"][0]
        result = await pipe.transcribe(ogg.read_bytes(), ogg.name, before_paid=before_paid)
        assert result.text == "from the api" and result.duration > 1
        assert len(calls) == 1 and calls[0]["size"] > ogg.stat().st_size
        with pytest.raises(OverBudget):
            await pipe.transcribe(ogg.read_bytes(), ogg.name, before_paid=before_paid)
        assert len(calls) == 1 and charged == ["charge", "charge"], "over budget: the API is not called"
        assert pipe.active == 0
    finally:
        await pipe.close()
    assert json.dumps(calls)  # plain data


def test_openai_backend_without_key_or_client_is_a_config_error() -> None:
    from errors import ConfigError

    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        Transcriber(dataclasses.replace(Settings(), speech_backend="openai"))


@pytest.mark.asyncio
async def test_a_killed_worker_is_one_clear_error_and_the_pool_recovers(
    worker_tmpdir: Path, corpus: dict[str, list[Path]], tmp_path: Path
) -> None:
    import signal

    pipe = Transcriber(Settings(speech_backend="sphinx", audio_workers=1, audio_queue=1))
    # ~28 s of speech: about 7 s of recognition, so the kill surely lands mid-job
    clip = samples.speak(" ".join(samples.SENTENCES * 2), tmp_path, "ogg", name="twelve")
    try:
        task = asyncio.create_task(pipe.transcribe(clip.read_bytes(), clip.name))
        await asyncio.sleep(1.5)  # spawned, model loaded, recognising
        assert not task.done()
        for proc in list(pipe._executor._processes.values()):  # type: ignore[union-attr]
            os.kill(proc.pid, signal.SIGKILL)
        with pytest.raises(BackendError, match="speech worker crashed"):
            await task
        result = await pipe.transcribe(corpus["ogg"][2].read_bytes(), "v.ogg")
        assert samples.wer(samples.SENTENCES[2], result.text) < 0.5
    finally:
        await pipe.close()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper does not count)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in fh)
    except FileNotFoundError:
        return False


def test_workers_leave_with_a_killed_bot(tmp_path: Path) -> None:
    """SIGKILL gives the bot no chance to stop its pool: the workers must notice and exit by themselves."""
    import signal
    import subprocess
    import sys

    from tests.harness import ROOT

    script = (
        "import asyncio, time\n"
        "from config import Settings\n"
        "from speech.recognize import Transcriber\n"
        "async def main():\n"
        "    p = Transcriber(Settings(speech_backend='sphinx'))\n"
        "    await p.warm_up()\n"
        "    print(' '.join(str(pid) for pid in p._executor._processes), flush=True)\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    (tmp_path / "pool_victim.py").write_text(script)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "pool_victim.py")], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "speech workers outlived the killed bot"


def test_which_recognizers_are_paid() -> None:
    """Budgets apply to the API recogniser only, as its class attribute says."""
    assert (SphinxRecognizer.paid, OpenAIRecognizer.paid) == (False, True)
    assert not recognizer_paid(Settings())
    assert recognizer_paid(dataclasses.replace(Settings(), speech_backend="openai"))
