"""speech/audio.py: detection, conversion of real files in every format, and each kind of bad audio."""

from __future__ import annotations

import io
import subprocess
import tempfile
import wave
from pathlib import Path

import pytest

from errors import BackendError, InvalidInput, TooLarge
from speech import audio
from tests.fakes import audio_samples as samples

SENTENCE = samples.SENTENCES[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {fmt: samples.speak(SENTENCE, folder, fmt) for fmt in samples.FORMATS}


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point tempfile at an empty folder and check that it is still empty after each test."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    yield tmp
    assert list(tmp.iterdir()) == [], "a temp file was left behind"


def convert(data: bytes, name: str = "clip.ogg", max_seconds: float = 60.0) -> audio.ConvertedAudio:
    return audio.convert_to_wav(data, max_seconds=max_seconds, filename_hint=name)


@pytest.mark.parametrize(
    ("content_type", "filename", "expected"),
    [
        ("audio/ogg", "voice-message.ogg", True),
        ("audio/mpeg; charset=binary", "x", True),
        (None, "memo.M4A", True),
        (None, "a.opus", True),
        ("application/octet-stream", "talk.webm", True),
        ("image/png", "picture.png", False),
        (None, "notes.txt", False),
        (None, "", False),
    ],
)
def test_is_audio(content_type: str | None, filename: str, expected: bool) -> None:
    assert audio.is_audio(content_type, filename) is expected


@pytest.mark.parametrize("fmt", list(samples.FORMATS))
def test_every_format_converts_to_16k_mono_wav(clips: dict[str, Path], fmt: str) -> None:
    result = convert(clips[fmt].read_bytes(), clips[fmt].name)
    with wave.open(io.BytesIO(result.wav), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        frames = w.getnframes()
    # espeak says this sentence in about 2.4 s; encoders add at most a few tens of ms
    assert 1.5 < result.duration < 4.0
    assert abs(frames / 16000 - result.duration) < 0.01
    assert audio.loudest_dbfs(result.pcm) > -30


def test_empty_file() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        convert(b"")


@pytest.mark.parametrize("fmt", ["ogg", "mp3", "flac", "webm", "m4a"])
def test_truncated_file(clips: dict[str, Path], fmt: str) -> None:
    data = clips[fmt].read_bytes()
    with pytest.raises(InvalidInput, match="truncated or damaged|damaged or isn't audio"):
        convert(data[: len(data) // 2], clips[fmt].name)


def test_ogg_cut_exactly_at_a_page_boundary_is_still_truncated(clips: dict[str, Path]) -> None:
    data = clips["ogg"].read_bytes()
    cut = data.rfind(b"OggS")  # drop the whole last page (the one with end-of-stream)
    with pytest.raises(InvalidInput, match="truncated"):
        convert(data[:cut])


def test_image_is_not_audio(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no audio in it"):
        convert(samples.png(tmp_path).read_bytes(), "picture.png")


def test_video_only_webm_is_not_audio(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no audio in it"):
        convert(samples.video_only_webm(tmp_path).read_bytes(), "video.webm")


def test_garbage_is_refused() -> None:
    with pytest.raises(InvalidInput, match="damaged or isn't audio"):
        convert(b"this is a text file, not a recording\n" * 50, "notes.ogg")


@pytest.mark.parametrize("fmt", ["ogg", "wav"])
def test_silence(tmp_path: Path, fmt: str) -> None:
    with pytest.raises(InvalidInput, match="silent"):
        convert(samples.silence(tmp_path, 2.0, fmt).read_bytes(), f"s.{fmt}")


def test_too_long_is_refused_from_the_probe_without_decoding(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_run = subprocess.run

    def spy(cmd, *args, **kwargs):
        calls.append(Path(cmd[0]).name)
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(audio.subprocess, "run", spy)
    with pytest.raises(TooLarge, match=r"That audio is 3 s long; the limit is 1 s\."):
        convert(clips["ogg"].read_bytes(), max_seconds=1.0)
    assert calls == ["ffprobe"]  # refused before ffmpeg decoded anything


def test_too_long_without_a_known_duration_is_caught_while_decoding(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A live-recorded webm has no duration in its header; simulate that with an empty probe duration.
    monkeypatch.setattr(audio, "_duration", lambda info: None)
    with pytest.raises(TooLarge, match="longer than the limit of 1 s"):
        convert(clips["webm"].read_bytes(), "rec.webm", max_seconds=1.0)


def test_ffmpeg_missing(clips: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(BackendError) as info:
        convert(clips["ogg"].read_bytes())
    assert str(info.value) == "ffmpeg is not installed: apt-get install ffmpeg"


def test_ffprobe_missing(clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio, "FFPROBE", "ffprobe-not-installed-here")
    with pytest.raises(BackendError, match="is not installed: apt-get install ffmpeg"):
        convert(clips["ogg"].read_bytes())


def test_loudest_dbfs() -> None:
    assert audio.loudest_dbfs(b"") == float("-inf")
    assert audio.loudest_dbfs(b"\x00\x00" * 16000) == float("-inf")
    full = (b"\xff\x7f" + b"\x01\x80") * 8000  # full-scale square wave: 0 dBFS
    assert audio.loudest_dbfs(full) == pytest.approx(0.0, abs=0.01)
