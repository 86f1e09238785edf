"""speech/whisper.py: which weights WHISPER_MODEL names, and pinned weights that fail their checksum.

The real model on real speech runs end to end in tests/commands/test_chat_long_audio.py.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path

import pytest

from config import Settings
from errors import BackendError, ConfigError
from speech import whisper
from speech.recognize import Transcriber, recognizer_paid
from tests.fakes import human_speech as human


def test_default_and_named_models_are_the_pinned_carriers_files() -> None:
    base = whisper.resolve("")
    assert base == whisper.resolve("base") == whisper.resolve("Systran/faster-whisper-base")
    assert set(base.pinned) == {"config.json", "model.bin", "tokenizer.json", "vocabulary.txt"}
    assert len(base.pinned["model.bin"][0]) == 2  # two halves, joined in memory
    tiny = whisper.resolve("tiny.en")
    assert tiny.english_only and not base.english_only
    for source in (base, tiny):
        for paths, size, sha in source.pinned.values():
            assert sum(Path(p).stat().st_size for p in paths) == size and len(sha) == 64
    assert whisper.DEFAULT_MODEL == "base" and Settings().speech_backend == "whisper"
    assert not recognizer_paid(Settings())


def test_a_folder_or_a_model_id_is_taken_as_given(tmp_path: Path) -> None:
    (tmp_path / "mine.en").mkdir()
    (tmp_path / "mine.en" / "model.bin").write_bytes(b"x")
    own = whisper.resolve(str(tmp_path / "mine.en"))
    assert own.pinned == {} and own.english_only and own.model == str(tmp_path / "mine.en")
    assert whisper.resolve("small.en") == whisper.WhisperSource("small.en", {}, english_only=True)
    with pytest.raises(ConfigError, match="without a CTranslate2 model.bin"):
        whisper.resolve(str(tmp_path))
    with pytest.raises(ConfigError, match="no such folder"):
        whisper.resolve(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="English only"):
        Transcriber(dataclasses.replace(Settings(), whisper_model="tiny.en", speech_language="de-DE"))


async def test_weights_that_fail_their_checksum_are_not_loaded_and_say_so(tmp_path: Path, worker_tmpdir: Path) -> None:
    real = whisper.resolve("tiny.en")
    paths, size, sha = real.pinned["config.json"]
    tampered = tmp_path / "config.json"
    shutil.copyfile(paths[0], tampered)
    data = bytearray(tampered.read_bytes())
    data[10] ^= 1  # one bit: same size, so only the checksum can tell
    tampered.write_bytes(bytes(data))
    source = dataclasses.replace(real, pinned={**real.pinned, "config.json": ((str(tampered),), size, sha)})
    with pytest.raises(BackendError, match=r"failed their checksum \(config.json\)"):
        whisper.load_verified(source.pinned)

    settings = dataclasses.replace(Settings(), audio_workers=1, audio_queue=1)
    pipe = Transcriber(settings, recognizer_factory=functools.partial(whisper.WhisperRecognizer, source, "en-US", 1))
    try:
        clip = human.held_out()[1].wav()
        for _ in range(2):  # each message gets the same clear line; the worker keeps serving
            with pytest.raises(BackendError, match="failed their checksum"):
                await pipe.transcribe(clip, "clip.wav")
        assert pipe.active == 0
    finally:
        await pipe.close()
