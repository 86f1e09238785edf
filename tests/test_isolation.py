"""Nothing of one server is visible to another: storage, records, datasets, archives, and the bot.

The sandbox holds a single guild, so a second guild is a :class:`GuildSpace` with another id under
the same DATA_DIR / CORRECTIONS_DIR and the same database, written and read with the same domain functions the
cogs use. The records of every server share one database (SQLite and PostgreSQL here): every row carries its
server's id, and no server's functions return another's rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset import archive as archiver
from dataset import corrections as records
from dataset import folder as dataset_folder
from dataset.corrections import TestError
from errors import InvalidInput, NotFound, PathRefused
from records.db import Database
from records.schema import V1
from storage import GuildSpace
from tests.harness import BotHarness, space_of
from training import budget, evaluation, jobs
from training.backend import Job

A_ID, B_ID = 111111111111111111, 222222222222222222


@pytest.fixture
def spaces(tmp_path: Path, db: Database) -> tuple[GuildSpace, GuildSpace]:
    data, corrections = tmp_path / "data", tmp_path / "corrections"
    return GuildSpace(A_ID, data, corrections, db).ensure(), GuildSpace(B_ID, data, corrections, db).ensure()


def files_under(*roots: Path) -> set[Path]:
    return {p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


TABLES = [stmt.split("(")[0].split()[-1] for stmt in V1 if stmt.startswith("CREATE TABLE")]


def rows_by_guild(db: Database) -> dict[str, dict[int, int]]:
    """table -> {guild id: rows} for every table of the records."""
    with db.tx(write=False) as tx:
        return {table: dict(tx.all(f"SELECT guild_id, COUNT(*) FROM {table} GROUP BY guild_id"))
                for table in TABLES}


def server_rows(db: Database, guild_id: int) -> dict[str, list[tuple[object, ...]]]:
    """Every row of one server, table by table (a snapshot to compare before and after)."""
    with db.tx(write=False) as tx:
        return {table: sorted(tx.all(f"SELECT * FROM {table} WHERE guild_id = ?", (guild_id,)), key=repr)
                for table in TABLES}


def test_records_stay_in_their_guild(spaces: tuple[GuildSpace, GuildSpace], db: Database) -> None:
    a, b = spaces
    records.record_answer(a, message_ids=[1001, 1002], channel_id=5, prompt="q", answer="a",
                          prompt_message_id=1000, author_id=7, model=None)
    correction = records.add_correction(a, message_id=1001, prompt="q", answer="a", correction="better",
                                        author_id=7, author_name="m", channel_id=5)
    pending = records.add_correction(a, message_id=1001, prompt="q", answer="a", correction="pending",
                                     author_id=7, author_name="m", channel_id=5, approved=False)
    feedback = records.add_feedback(a, text="nice", author_id=7, author_name="m", channel_id=5, reply_to=None)
    records.add_test_errors(a, [TestError("i", "e", "g")])
    records.add_reaction(a, message_id=1001, channel_id=5, kind="down", added=True, author_id=7, author_name="m",
                         model=None)
    records.add_ask(a, ask_message_id=1003, message_id=1001, channel_id=5, author_id=7, author_name="m")
    evaluation.add_to_eval_set(a, [evaluation.Case("i", "e")], author_id=7, author_name="m")
    jobs.save_job(a, Job(id="job-a", backend="local", status="running", created_at=1.0), [(1, 0.5)])
    jobs.set_current_model(a, "local", "local-v1")
    budget.charge(a, 7, "chat", limit=5)
    with a.edit_state() as state:
        state["system_prompt"] = "A's prompt"
    records.review(a, [pending.ref], approve=False, by_id=1, by_name="admin")

    found = records.find_answer(a, 1001)
    assert found is not None and found.answer == "a"
    assert [c.ref for c in records.list_corrections(a)] == [correction.ref, pending.ref]
    assert records.list_corrections(a)[0] == correction
    assert records.list_feedback(a) == [feedback]
    # Nothing of A through B's functions.
    assert records.find_answer(b, 1001) is None and records.find_answer(b, 1002) is None
    assert records.latest_answer(b, 5, 7) is None
    assert records.list_corrections(b) == [] and records.list_feedback(b) == []
    assert records.list_test_errors(b) == [] and records.reaction_counts(b) == {}
    assert records.find_ask(b, 1003) is None and not records.was_asked(b, 1001, 7)
    assert evaluation.eval_set(b) == [] and budget.usage(b, 7).total == 0
    assert jobs.list_jobs(b) == [] and jobs.job_losses(b, "job-a") == [] and jobs.current_model(b, "local") is None
    assert b.read_state() == {}
    with pytest.raises(NotFound):
        jobs.get_job(b, "job-a")
    with pytest.raises(InvalidInput, match="There is no correction"):
        records.review(b, [pending.ref], approve=True, by_id=1, by_name="admin")
    # In the database every row is A's, and every table of the records was written.
    counts = rows_by_guild(db)
    assert {gid for per in counts.values() for gid in per} == {A_ID}
    assert [t for t, per in counts.items() if not per and t not in ("forget_journal", "legacy_imports")] == []
    # No record went into a file: B's folders are empty, and A's hold no record logs.
    assert files_under(b.data, b.corrections) == set()
    assert files_under(a.corrections) == set()
    assert a.corrections.name == str(A_ID) and b.corrections.name == str(B_ID)


def test_datasets_and_archives_stay_in_their_guild(spaces: tuple[GuildSpace, GuildSpace]) -> None:
    a, b = spaces
    report = dataset_folder.ingest_text(a, "q1 => a1\nq2 => a2", author="x")
    assert report.added == 2
    assert dataset_folder.load_dataset(b, dataset_folder.current_dataset(b)).examples == []
    # The same examples are new for B: duplicates are per guild.
    assert dataset_folder.ingest_text(b, "q1 => a1", author="y").added == 1
    assert len(dataset_folder.load_dataset(a, dataset_folder.current_dataset(a)).examples) == 2

    result = archiver.archive_folder(a, "datasets")
    assert result.path.parent == a.archives.resolve()
    assert archiver.list_archives(b) == []
    with pytest.raises(NotFound):
        dataset_folder.select_dataset(b, "archives")  # B has no archives folder, and never sees A's


@pytest.mark.parametrize("path", [
    f"../{A_ID}/datasets", f"..%2f{A_ID}%2fdatasets", f"%2e%2e/{A_ID}", f"/../{A_ID}", "link_to_a",
    "link_to_a/datasets/main",
])
def test_a_guild_cannot_reach_another_guilds_folder(spaces: tuple[GuildSpace, GuildSpace], path: str) -> None:
    a, b = spaces
    dataset_folder.ingest_text(a, "secret q => secret a", author="x")
    (b.data / "link_to_a").symlink_to(a.data, target_is_directory=True)
    for call in (lambda: b.resolve(path), lambda: dataset_folder.ingest_path(b, path, author="y"),
                 lambda: archiver.archive_folder(b, path), lambda: dataset_folder.select_dataset(b, path)):
        with pytest.raises(PathRefused):
            call()
    assert dataset_folder.load_dataset(b, dataset_folder.current_dataset(b)).examples == []


@pytest.mark.parametrize("path", ["../trainer.db", "..%2ftrainer.db", "%2e%2e/trainer.db", "/trainer.db",
                                  "link_to_db", "link_to_root/trainer.db"])
def test_a_typed_path_never_reaches_the_database(spaces: tuple[GuildSpace, GuildSpace], path: str) -> None:
    """The SQLite file holds every server's records: it lies outside every server's data space."""
    a, b = spaces
    records.add_feedback(a, text="secret", author_id=1, author_name="x", channel_id=1, reply_to=None)
    database = b.data.parent / "trainer.db"
    if b.db.engine == "sqlite":
        assert database.is_file()
    (b.data / "link_to_db").symlink_to(database)
    (b.data / "link_to_root").symlink_to(b.data.parent, target_is_directory=True)
    for call in (lambda: b.resolve(path), lambda: dataset_folder.ingest_path(b, path, author="y"),
                 lambda: archiver.archive_folder(b, path), lambda: dataset_folder.select_dataset(b, path)):
        with pytest.raises(PathRefused):
            call()


def test_a_guilds_folder_is_named_by_its_id_only(tmp_path: Path) -> None:
    for bad in (0, -1, "123", 1.5, None):
        with pytest.raises(ValueError):
            GuildSpace(bad, tmp_path / "d", tmp_path / "c")  # type: ignore[arg-type]


async def test_bot_writes_only_into_its_own_guild(harness: BotHarness) -> None:
    settings = harness.bot.settings
    ours = space_of(harness)
    db = ours.db
    other = GuildSpace(harness.guild_id + 7, settings.data_dir, settings.corrections_dir, db).ensure()
    records.add_feedback(other, text="theirs", author_id=1, author_name="x", channel_id=1, reply_to=None)
    records.record_answer(other, message_ids=[42], channel_id=1, prompt="their q", answer="their a",
                          prompt_message_id=None, author_id=None, model=None)
    jobs.set_current_model(other, "local", "their-model")
    files_before = {p: p.read_bytes() for p in files_under(other.data, other.corrections)}
    rows_before = server_rows(db, other.guild_id)

    msgs = await harness.send("What is two plus two?")
    answer = msgs[0]
    assert (await harness.ask(f"!correct {answer.id} Four.")).startswith("Thanks — correction `C-")
    assert (await harness.ask("!feedback Good bot.")).startswith("Thanks for the feedback!")
    said = await harness.ask("!train ours q => ours a", user="admin")
    assert said.startswith("Added **1** example.")
    await harness.sandbox.wait_for(
        lambda: any("succeeded. I now answer" in m.content for m in harness.sandbox.bot_messages()), timeout=20)

    # Guild B is untouched, byte for byte and row for row; everything landed in the sandbox guild's records.
    assert {p: p.read_bytes() for p in files_under(other.data, other.corrections)} == files_before
    assert server_rows(db, other.guild_id) == rows_before
    assert set().union(*(per for per in rows_by_guild(db).values())) == {harness.guild_id, other.guild_id}
    assert [c.correction for c in records.list_corrections(ours)] == ["Four."]
    assert [f.text for f in records.list_feedback(ours)] == ["Good bot."]
    assert [f.text for f in records.list_feedback(other)] == ["theirs"]
    assert records.list_corrections(other) == [] and jobs.list_jobs(other) == []
    assert records.find_answer(ours, answer.id) is not None and records.find_answer(other, answer.id) is None
    assert jobs.current_model(ours, "local") == "local-v1" and jobs.current_model(other, "local") == "their-model"
