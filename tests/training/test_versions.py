"""training/versions.py: numbered version folders, shared by the local and hf backends."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from errors import NotFound
from training.versions import Versions, new_tmp_dir, remove_stale_tmp

V = Versions("x-v", "an x model name", files=("weights.bin",))


def build(models: Path) -> Path:
    tmp = new_tmp_dir(models)
    (tmp / "weights.bin").write_bytes(b"w")
    return tmp


def test_claim_numbers_renames_and_lists(tmp_path: Path) -> None:
    models = tmp_path / "models"
    assert V.numbers(models) == [] and V.names(models) == []
    first = V.claim(models, build(models), {"job_id": "j1"})
    second = V.claim(models, build(models), {"job_id": "j2"})
    assert (first, second) == ("x-v1", "x-v2")
    assert V.names(models) == ["x-v1", "x-v2"] and V.numbers(models) == [1, 2]
    assert V.read_meta(models, "x-v2") == {"job_id": "j2", "name": "x-v2", "version": 2}
    assert V.of_job(models, "j1") == "x-v1" and V.of_job(models, "j9") is None
    assert not [p for p in models.iterdir() if p.name.startswith(".tmp-")]


def test_names_that_are_not_versions_or_not_there(tmp_path: Path) -> None:
    models = tmp_path / "models"
    name = V.claim(models, build(models), {})
    with pytest.raises(NotFound, match=r"`y-v1` is not an x model name \(they look like `x-v3`\)"):
        V.read_meta(models, "y-v1")
    with pytest.raises(NotFound, match="There is no model `x-v7` on this server"):
        V.read_meta(models, "x-v7")
    assert V.number("x-v12") == 12 and V.number("x-v12\n") is None and V.number("x-v") is None
    assert V.exists(models, name)
    (models / name / "weights.bin").unlink()  # a required file gone: not a version to switch to
    assert not V.exists(models, name)
    (models / "x-v5").mkdir()  # no meta.json: not listed, but its number is never reused
    (models / "x-v5" / "weights.bin").write_bytes(b"")
    assert V.numbers(models) == [1]
    assert V.claim(models, build(models), {}) == "x-v2"
    (models / "x-v2" / "meta.json").write_text("{damaged")
    assert not V.exists(models, "x-v2")


def test_threads_claiming_together_get_different_numbers(tmp_path: Path) -> None:
    models = tmp_path / "models"
    tmps = [build(models) for _ in range(8)]
    names: list[str] = []
    threads = [threading.Thread(target=lambda t=t: names.append(V.claim(models, t, {}))) for t in tmps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(names, key=lambda n: int(n[3:])) == [f"x-v{i}" for i in range(1, 9)]


def test_stale_temp_folders_are_removed(tmp_path: Path) -> None:
    models = tmp_path / "models"
    old, fresh = build(models), build(models)
    past = time.time() - 7 * 3600
    os.utime(old, (past, past))
    assert remove_stale_tmp(models) == 1
    assert not old.exists() and fresh.exists()
    assert remove_stale_tmp(tmp_path / "nowhere") == 0
