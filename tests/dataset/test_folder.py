"""dataset/folder.py: storing uploads, ingesting into the current dataset (new files, duplicates skipped),
selecting a dataset and the state that names it."""

from __future__ import annotations

import pytest

from dataset import folder as dataset_folder
from dataset import formats
from errors import InvalidInput, PathRefused
from storage import GuildSpace
from tests.fakes.samples import write_upload


def test_ingest_writes_new_files_and_skips_duplicates(space: GuildSpace) -> None:
    assert dataset_folder.dataset_name(space) == "datasets/main"
    first = dataset_folder.ingest_text(space, "a => b\nhello\nhello", author="ann")
    assert first.added == 2 and first.duplicates == 1
    assert first.skipped == [(3, "line 3: already in the dataset")]
    files = sorted(dataset_folder.current_dataset(space).glob("ingested-*.jsonl"))
    assert len(files) == 1
    before = files[0].read_bytes()
    second = dataset_folder.ingest_text(space, "hello\nnew", author="bob")
    assert second.added == 1 and second.duplicates == 1
    files = sorted(dataset_folder.current_dataset(space).glob("ingested-*.jsonl"))
    assert len(files) == 2 and before in (files[0].read_bytes(), files[1].read_bytes())  # never rewritten
    # Same text with the other flag is a different example.
    assert dataset_folder.ingest_text(space, "hello", author="c", positive=False).added == 1
    # Nothing new: no empty file is created.
    assert dataset_folder.ingest_text(space, "hello", author="c").added == 0
    assert len(list(dataset_folder.current_dataset(space).glob("*.jsonl"))) == 3
    loaded = dataset_folder.load_dataset(space, dataset_folder.current_dataset(space))
    assert loaded.added == 4 and loaded.skipped == []
    record = next(e for e in loaded.examples if e.text == "new")
    assert record.added_by == "bob" and record.source == "inline"
    assert not any(p.name.startswith(".") for p in dataset_folder.current_dataset(space).iterdir())


def test_ingest_file_and_add_examples(space: GuildSpace) -> None:
    path = dataset_folder.store_upload(space, "../../evil name.jsonl", b'{"prompt": "p", "completion": "c"}\n')
    assert path.parent == space.uploads and ".." not in path.name and path.name.endswith("evil_name.jsonl")
    report = dataset_folder.ingest_file(space, path, author="ann", source="evil name.jsonl")
    assert report.added == 1
    parsed = formats.parse_text("x => y\np => c")
    assert (
        dataset_folder.add_examples(space, parsed.examples, source="inline", author="bob") == 1
    )  # p => c is known


def test_ingest_non_utf8_writes_nothing(space: GuildSpace) -> None:
    path = write_upload(space, "bad.txt", b"ok\n" * 100 + b"\xff\xfe\n")
    with pytest.raises(InvalidInput):
        dataset_folder.ingest_file(space, path, author="ann")
    assert not dataset_folder.current_dataset(space).exists() or not any(dataset_folder.current_dataset(space).iterdir())


def test_ingest_path_into_dataset(space: GuildSpace) -> None:
    (space.data / "raw").mkdir()
    (space.data / "raw" / "a.txt").write_text("x\ny\n")
    report = dataset_folder.ingest_path(space, "raw", author="ann")
    assert report.added == 2 and report.files == 1
    assert dataset_folder.ingest_path(space, "raw", author="ann").duplicates == 2
    (space.data / "nothing").mkdir()
    with pytest.raises(InvalidInput):
        dataset_folder.ingest_path(space, "nothing", author="ann")


def test_select_dataset(space: GuildSpace) -> None:
    folder = space.data / "datasets" / "reviews"
    folder.mkdir(parents=True)
    (folder / "good.txt").write_text("love it\ngreat\n")
    result = dataset_folder.select_dataset(space, "datasets/reviews", positive=False)
    assert result.name == "datasets/reviews" and result.examples == 2
    assert result.archive.path.is_file() and result.archive.files == 1
    state = space.read_state()
    assert state["dataset"] == "datasets/reviews" and state["dataset_positive"] is False
    assert dataset_folder.current_dataset(space) == folder.resolve()
    loaded = dataset_folder.load_dataset(space, dataset_folder.current_dataset(space))
    assert {e.label for e in loaded.examples} == {"negative"}
    (space.data / "datasets" / "empty").mkdir()
    with pytest.raises(InvalidInput):
        dataset_folder.select_dataset(space, "datasets/empty")
    with pytest.raises(PathRefused):
        dataset_folder.select_dataset(space, "../x")


def test_state_with_bad_dataset_path_falls_back(space: GuildSpace) -> None:
    dataset_folder.update_state(space, dataset="../../etc")
    assert dataset_folder.dataset_name(space) == "datasets/main"
    dataset_folder.update_state(space, dataset=None, system_prompt="hi")
    assert dataset_folder.read_state(space) == {"system_prompt": "hi"}


def test_suggest_paths_stays_in_the_space(space: GuildSpace, tmp_path) -> None:
    (space.data / "datasets" / "faq").mkdir(parents=True)
    (space.data / "datasets" / "fun.jsonl").write_text("{}\n")
    (space.data / "datasets" / ".secret").mkdir()
    (space.data / "datasets" / "out").symlink_to(tmp_path)  # leads out of the space
    assert dataset_folder.suggest_paths(space, "datasets/f") == ["datasets/faq", "datasets/fun.jsonl"]
    assert dataset_folder.suggest_paths(space, "datasets/", folders_only=True) == ["datasets/faq"]
    assert dataset_folder.suggest_paths(space, "dat") == ["datasets"]
    assert dataset_folder.suggest_paths(space, "../") == []  # refused paths suggest nothing
    assert dataset_folder.suggest_paths(space, "nowhere/x") == []
