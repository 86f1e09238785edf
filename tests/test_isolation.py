"""Nothing of one server is visible to another: storage, records, datasets, archives, and the bot.

The sandbox holds a single guild, so a second guild is a :class:`GuildSpace` with another id under
the same DATA_DIR / CORRECTIONS_DIR, written and read with the same domain functions the cogs use.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset import archive as archiver
from dataset import corrections as records
from dataset import folder as dataset_folder
from errors import NotFound, PathRefused
from storage import GuildSpace
from tests.harness import BotHarness

A_ID, B_ID = 111111111111111111, 222222222222222222


@pytest.fixture
def spaces(tmp_path: Path) -> tuple[GuildSpace, GuildSpace]:
    data, corrections = tmp_path / "data", tmp_path / "corrections"
    return GuildSpace(A_ID, data, corrections).ensure(), GuildSpace(B_ID, data, corrections).ensure()


def files_under(*roots: Path) -> set[Path]:
    return {p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


def test_records_stay_in_their_guild(spaces: tuple[GuildSpace, GuildSpace]) -> None:
    a, b = spaces
    records.record_answer(a, message_id=1001, channel_id=5, prompt="q", answer="a", prompt_message_id=1000,
                          author_id=7, model=None)
    correction = records.add_correction(a, message_id=1001, prompt="q", answer="a", correction="better",
                                        author_id=7, author_name="m", channel_id=5)
    feedback = records.add_feedback(a, text="nice", author_id=7, author_name="m", channel_id=5, reply_to=None)
    records.add_test_errors(a, [{"input": "i", "expected": "e", "got": "g"}])

    assert records.find_answer(a, 1001)["answer"] == "a"
    assert records.find_answer(b, 1001) is None
    assert records.list_corrections(a) == [correction] and records.list_feedback(a) == [feedback]
    assert records.list_corrections(b) == [] and records.list_feedback(b) == []
    assert records.list_test_errors(b) == []
    # Every file written lives under A's two folders, none under B's.
    assert files_under(b.data, b.corrections) == set()
    assert {p.parent for p in files_under(a.corrections)} == {a.corrections}
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


def test_a_guilds_folder_is_named_by_its_id_only(tmp_path: Path) -> None:
    for bad in (0, -1, "123", 1.5, None):
        with pytest.raises(ValueError):
            GuildSpace(bad, tmp_path / "d", tmp_path / "c")  # type: ignore[arg-type]


async def test_bot_writes_only_into_its_own_guild(harness: BotHarness) -> None:
    settings = harness.bot.settings
    ours = GuildSpace(harness.guild_id, settings.data_dir, settings.corrections_dir)
    other = GuildSpace(harness.guild_id + 7, settings.data_dir, settings.corrections_dir).ensure()
    records.add_feedback(other, text="theirs", author_id=1, author_name="x", channel_id=1, reply_to=None)
    records.record_answer(other, message_id=42, channel_id=1, prompt="their q", answer="their a",
                          prompt_message_id=None, author_id=None, model=None)
    before = {p: p.read_bytes() for p in files_under(other.data, other.corrections)}

    msgs = await harness.send("What is two plus two?")
    answer = msgs[0]
    assert (await harness.ask(f"!correct {answer.id} Four.")).startswith("Thanks — correction `C-")
    assert (await harness.ask("!feedback Good bot.")).startswith("Thanks for the feedback!")
    said = await harness.ask("!train ours q => ours a", user="admin")
    assert said.startswith("Added **1** example.")
    await harness.sandbox.wait_for(
        lambda: any("succeeded" in m.content for m in harness.sandbox.bot_messages()), timeout=20)

    # Guild B is untouched, byte for byte; everything landed in the sandbox guild's folders.
    assert {p: p.read_bytes() for p in files_under(other.data, other.corrections)} == before
    assert [c["correction"] for c in records.list_corrections(ours)] == ["Four."]
    assert [f["text"] for f in records.list_feedback(ours)] == ["Good bot."]
    assert [f["text"] for f in records.list_feedback(other)] == ["theirs"]
    assert records.list_corrections(other) == []
    assert records.find_answer(ours, answer.id) is not None and records.find_answer(other, answer.id) is None
