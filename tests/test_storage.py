"""storage.py: path refusals, atomic writes, torn-line tolerance (the legacy logs), the server's settings, and a
SIGKILL crash test of the records on both engines."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import storage
from dataset import corrections as records
from errors import NotFound, PathRefused
from records.db import Database
from storage import GuildSpace
from tests.harness import ROOT


@pytest.fixture
def space(tmp_path: Path) -> GuildSpace:
    return GuildSpace(42, tmp_path / "data", tmp_path / "corrections").ensure()


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "/etc/passwd",
        "%2e%2e/x",
        "..%2fx",
        ".env",
        "sub/.env",
        "a/../../x",
        "~/x",
        "C:\\x",
        "sub/%2eenv",
        "..\\x",
        "x\x00y",
    ],
)
def test_resolve_refuses(space: GuildSpace, bad: str) -> None:
    with pytest.raises(PathRefused) as info:
        space.resolve(bad)
    assert str(info.value)  # a message the user can read


def test_resolve_refuses_symlink_out(space: GuildSpace, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key.txt").write_text("top secret")
    (space.data / "link").symlink_to(outside)
    with pytest.raises(PathRefused):
        space.resolve("link/key.txt")
    with pytest.raises(PathRefused):
        space.resolve("link")


def test_resolve_refuses_symlink_to_hidden_file_inside(space: GuildSpace) -> None:
    (space.data / ".env").write_text("TOKEN=x")
    (space.data / "innocent.txt").symlink_to(space.data / ".env")
    with pytest.raises(PathRefused):
        space.resolve("innocent.txt")


def test_resolve_accepts_symlink_inside_and_unicode(space: GuildSpace) -> None:
    target = space.data / "datasets" / "наборы данных"
    target.mkdir(parents=True)
    (target / "例子.txt").write_text("hi", encoding="utf-8")
    (space.data / "shortcut").symlink_to(target)
    assert space.resolve("shortcut/例子.txt") == (target / "例子.txt").resolve()
    assert space.resolve("datasets/наборы данных/例子.txt", must_exist=True).read_text() == "hi"
    assert space.resolve("./datasets//x.txt") == (space.data / "datasets" / "x.txt").resolve()
    assert space.resolve("") == space.data.resolve()


def test_resolve_must_exist(space: GuildSpace) -> None:
    with pytest.raises(NotFound):
        space.resolve("nope.txt", must_exist=True)


def test_spaces_are_separate(tmp_path: Path) -> None:
    a = GuildSpace(1, tmp_path / "d", tmp_path / "c")
    b = GuildSpace(2, tmp_path / "d", tmp_path / "c")
    assert a.data != b.data and a.corrections != b.corrections
    with pytest.raises(PathRefused):
        a.resolve("../2/state.json")


def test_server_settings_are_per_server_and_written_whole_or_not_at_all(db: Database, tmp_path: Path) -> None:
    a = GuildSpace(1, tmp_path / "d", tmp_path / "c", db)
    b = GuildSpace(2, tmp_path / "d", tmp_path / "c", db)
    assert a.read_state() == {}
    with a.edit_state() as state:
        state.update({"dataset": "datasets/main", "system_prompt": "Be brief.", "nested": {"x": [1, "é"]}})
    with b.edit_state() as state:
        state["dataset"] = "datasets/theirs"
    assert a.read_state() == {"dataset": "datasets/main", "system_prompt": "Be brief.", "nested": {"x": [1, "é"]}}
    assert b.read_state() == {"dataset": "datasets/theirs"}
    with pytest.raises(RuntimeError), a.edit_state() as state:  # a block that raises writes nothing
        state["dataset"] = "datasets/half"
        del state["system_prompt"]
        raise RuntimeError("stop")
    assert a.read_state()["dataset"] == "datasets/main" and "system_prompt" in a.read_state()
    with a.edit_state() as state:  # changed and removed keys are written, the rest kept
        state["dataset"] = "datasets/new"
        del state["system_prompt"]
    assert a.read_state() == {"dataset": "datasets/new", "nested": {"x": [1, "é"]}}
    assert b.read_state() == {"dataset": "datasets/theirs"}


def test_a_space_without_a_database_opens_sqlite_under_data_dir(tmp_path: Path) -> None:
    space = GuildSpace(3, tmp_path / "d", tmp_path / "c")
    with space.edit_state() as state:
        state["k"] = 1
    assert (tmp_path / "d" / "trainer.db").is_file()
    assert space.db.engine == "sqlite" and space.db.sqlite_path == tmp_path / "d" / "trainer.db"
    again = GuildSpace(3, tmp_path / "d", tmp_path / "c")
    assert again.read_state() == {"k": 1}
    space.db.close()
    again.db.close()


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.json"
    storage.atomic_write_json(path, {"a": 1})
    storage.atomic_write_json(path, {"b": "é"})
    assert storage.read_json(path) == {"b": "é"}
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]  # no temp file left behind
    assert storage.read_json(tmp_path / "missing.json", {"d": 1}) == {"d": 1}


def test_atomic_open_failure_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    storage.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), storage.atomic_open(path) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("crash in the middle")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_read_records_skips_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    storage.append_record(path, {"n": 1})
    storage.append_record(path, {"n": 2})
    with open(path, "ab") as fh:
        fh.write(b'{"n": 3, "text": "half a rec')  # a crash in the middle of a write
    result = storage.read_records(path)
    assert [r["n"] for r in result.records] == [1, 2]
    assert result.damaged == [3]
    # The next append must not be glued to the torn line.
    storage.append_record(path, {"n": 4})
    result = storage.read_records(path)
    assert [r["n"] for r in result.records] == [1, 2, 4]
    assert result.damaged == [3]


def test_read_records_missing_file(tmp_path: Path) -> None:
    result = storage.read_records(tmp_path / "none.jsonl")
    assert result.records == [] and result.damaged == []


def test_crash_never_loses_acknowledged_records(db: Database, tmp_path: Path) -> None:
    """SIGKILL a writer at random moments; every id it acknowledged must be readable, and nothing half-written."""
    rng = random.Random(1234)
    data, corr = tmp_path / "data", tmp_path / "corrections"
    where = [db.url] if db.url else []  # SQLite: the writer opens DATA_DIR/trainer.db, as this test's db
    acknowledged: list[str] = []
    deadline = time.monotonic() + 20
    rounds = 0
    while rounds < 6 and time.monotonic() < deadline:
        rounds += 1
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fakes" / "crash_writer.py"), str(data), str(corr), *where],
            stdout=subprocess.PIPE,
            cwd=str(ROOT),
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # wait until it is writing
        assert first.startswith(b"C-"), first
        acknowledged.append(first.decode().strip())
        time.sleep(rng.uniform(0.01, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # Read through proc.stdout (not communicate(), which reads the pipe itself): readline may have buffered
        # more lines already.
        out = proc.stdout.read()
        proc.stdout.close()
        # Only complete lines were acknowledged; a partial last line was cut by the kill.
        for line in out.split(b"\n"):
            if line.startswith(b"C-") and len(line) == 8:
                acknowledged.append(line.decode())
        assert proc.returncode == -signal.SIGKILL
    if db.engine == "sqlite":
        with db.tx(write=False) as tx:
            assert tx.scalar("PRAGMA integrity_check") == "ok"
    space = GuildSpace(7, data, corr, db)
    stored = records.list_corrections(space)
    refs = {r.ref for r in stored}
    missing = [ref for ref in acknowledged if ref not in refs]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:3]}"
    assert len(acknowledged) > rounds  # the writer did real work between kills
    # Never a record with wrong or partial content: a killed write left nothing, not half a record.
    for record in stored:
        assert record.correction == f"fix {record.prompt}" and record.prompt.startswith("question ")
        assert record.status == "approved" and record.author_name == "tester"
    # Each kill lost at most the one record in flight (never acknowledged), nothing before it.
    assert len(stored) - len(acknowledged) <= rounds
    # After the kills the database takes writes as before.
    after = records.add_correction(space, message_id=1, prompt="after", answer="a", correction="b", author_id=1,
                                   author_name="x", channel_id=2)
    assert records.list_corrections(space)[-1] == after


def test_crash_writer_helper_exists() -> None:
    assert os.access(ROOT / "tests" / "fakes" / "crash_writer.py", os.R_OK)
