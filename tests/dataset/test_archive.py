"""dataset/archive.py: contents, entry names, symlinks, hidden files, empty/missing folders."""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import pytest

from dataset import archive as archiver
from errors import InvalidInput, NotFound, PathRefused
from storage import GuildSpace


@pytest.fixture
def space(tmp_path: Path) -> GuildSpace:
    return GuildSpace(3, tmp_path / "data", tmp_path / "corrections").ensure()


def _tree(space: GuildSpace, tmp_path: Path) -> Path:
    root = space.data / "datasets" / "main"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.jsonl").write_text('{"text": "a"}\n')
    (root / "sub" / "b.txt").write_text("b" * 5000)
    (root / "sub" / "deeper" / "ü-файл.txt").write_text("unicode", encoding="utf-8")
    (root / ".env").write_text("SECRET=1")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "c.txt").write_text("c")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (root / "out-link").symlink_to(outside)
    (root / "out-file").symlink_to(outside / "secret.txt")
    (root / "in-link.txt").symlink_to(root / "a.jsonl")
    return root


def test_archive_contents(space: GuildSpace, tmp_path: Path) -> None:
    _tree(space, tmp_path)
    result = archiver.archive_folder(space, "datasets/main")
    assert re.fullmatch(r"main-\d{8}T\d{6}Z\.zip", result.name)
    assert result.path.parent == space.archives.resolve() and result.path.is_file()
    assert result.bytes == result.path.stat().st_size
    assert result.files == 3
    assert result.source_bytes == len('{"text": "a"}\n') + 5000 + len(b"unicode")
    assert result.skipped_symlinks == 3 and result.skipped_hidden == 2
    with zipfile.ZipFile(result.path) as zf:
        names = sorted(zf.namelist())
        assert names == ["a.jsonl", "sub/b.txt", "sub/deeper/ü-файл.txt"]
        assert zf.read("sub/b.txt") == b"b" * 5000
        assert zf.testzip() is None
        for info in zf.infolist():
            assert not info.filename.startswith("/") and ".." not in info.filename.split("/")
            assert info.compress_type == zipfile.ZIP_DEFLATED
    # No temp file left behind in the archives folder.
    assert [p.name for p in space.archives.iterdir()] == [result.name]


def test_archive_twice_same_second_keeps_both(space: GuildSpace, tmp_path: Path) -> None:
    _tree(space, tmp_path)
    first = archiver.archive_folder(space, "datasets/main")
    second = archiver.archive_folder(space, "datasets/main")
    assert first.path != second.path and first.path.exists() and second.path.exists()
    assert next(p.name for p in archiver.list_archives(space)) in (first.name, second.name)


def test_archive_whole_space_skips_archives(space: GuildSpace, tmp_path: Path) -> None:
    _tree(space, tmp_path)
    archiver.archive_folder(space, "datasets")
    result = archiver.archive_folder(space, ".")
    with zipfile.ZipFile(result.path) as zf:
        names = zf.namelist()
    assert names and not any(n.startswith("archives/") for n in names)
    assert result.name.startswith("guild-3-")


def test_archive_refusals(space: GuildSpace, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        archiver.archive_folder(space, "nope")
    (space.data / "empty").mkdir()
    with pytest.raises(InvalidInput):
        archiver.archive_folder(space, "empty")
    (space.data / "only-hidden").mkdir()
    (space.data / "only-hidden" / ".env").write_text("x")
    with pytest.raises(InvalidInput):
        archiver.archive_folder(space, "only-hidden")
    (space.data / "file.txt").write_text("x")
    with pytest.raises(InvalidInput):
        archiver.archive_folder(space, "file.txt")
    for bad in ("../", "/etc", ".hidden"):
        with pytest.raises(PathRefused):
            archiver.archive_folder(space, bad)
    space.archives.mkdir(parents=True, exist_ok=True)
    (space.archives / "x.zip").write_bytes(b"zip")
    with pytest.raises(InvalidInput):
        archiver.archive_folder(space, "archives")
    assert not any(p.name.startswith(".") for p in space.archives.iterdir())


def test_archive_large_file_streams(space: GuildSpace) -> None:
    folder = space.data / "big"
    folder.mkdir()
    blob = os.urandom(3 * 1024 * 1024 + 17)  # several chunks, incompressible
    (folder / "blob.bin").write_bytes(blob)
    result = archiver.archive_folder(space, "big")
    with zipfile.ZipFile(result.path) as zf:
        assert zf.read("blob.bin") == blob
    assert result.source_bytes == len(blob)


def test_archive_file_older_than_1980(space: GuildSpace) -> None:
    folder = space.data / "old"
    folder.mkdir()
    (folder / "epoch.txt").write_text("from 1970")
    os.utime(folder / "epoch.txt", (0, 0))
    result = archiver.archive_folder(space, "old")
    with zipfile.ZipFile(result.path) as zf:
        assert zf.read("epoch.txt") == b"from 1970"
        assert zf.getinfo("epoch.txt").date_time[0] == 1980
