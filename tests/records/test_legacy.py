"""A data folder written by main at c46fa9c (before the database) is imported once, and everything in it still
works. The folder in tests/fakes/legacy_c46fa9c was made by running that version through a team's session
(tests/fakes/make_legacy_folder.py, run in a checkout of c46fa9c): two trainings, an answer corrected by a
member (waiting for review), one rejected, feedback, 👍 and 👎 with the bot's ask, a !test with a mismatch."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from config import Settings
from dataset import corrections as records
from records.db import Database
from records.legacy import import_legacy
from sandbox.server import Sandbox
from storage import GuildSpace
from tests.harness import BotHarness, start_bot, stop_bot
from training import evaluation, jobs

LEGACY = Path(__file__).parent.parent / "fakes" / "legacy_c46fa9c"
GUILD = 777


def copy_legacy(data: Path, corrections: Path, guild_id: int) -> None:
    shutil.copytree(LEGACY / "data" / "guild", data / str(guild_id))
    shutil.copytree(LEGACY / "corrections" / "guild", corrections / str(guild_id))


def test_a_legacy_folder_is_imported_once_and_kept_hidden(db: Database, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    data, corr = tmp_path / "data", tmp_path / "corrections"
    copy_legacy(data, corr, GUILD)
    with caplog.at_level(logging.INFO, logger="records.legacy"):
        (done,) = import_legacy(db, data, corr)
    assert done.guild_id == GUILD
    assert done.rows == {"answers.jsonl": 3, "corrections.jsonl": 2, "reviews.jsonl": 1, "feedback.jsonl": 1,
                         "test_errors.jsonl": 1, "reactions.jsonl": 2, "asks.jsonl": 1, "eval_set.jsonl": 2,
                         "jobs.jsonl": 2, "state.json": 1}
    assert "imported the records of an older version" in caplog.text
    # The old files are kept, hidden (nothing reads them by mistake); the models and datasets stay files.
    assert not (corr / str(GUILD) / "answers.jsonl").exists()
    assert (corr / str(GUILD) / ".answers.jsonl.imported").is_file()
    assert (data / str(GUILD) / ".jobs.jsonl.imported").is_file()
    assert (data / str(GUILD) / "models" / "local-v2" / "meta.json").is_file()

    space = GuildSpace(GUILD, data, corr, db)
    (pending,) = records.pending_corrections(space)
    assert pending.correction == "Salaries are paid on the 28th from January." and pending.status == "pending"
    statuses = sorted(c.status for c in records.list_corrections(space))
    assert statuses == ["pending", "rejected"]
    (feedback,) = records.list_feedback(space)
    assert feedback.text == "The wifi answer helped, thanks"
    assert {m: (c.up, c.down) for m, c in records.reaction_counts(space).items()} == {"local-v2": (1, 1)}
    answer = records.latest_answer(space, pending.channel_id or 0, pending.author_id or 0)
    assert answer is not None and answer.prompt == "What is the wifi password?"
    assert len(evaluation.eval_set(space)) == 2 and len(records.list_test_errors(space)) == 1
    listed = jobs.list_jobs(space)
    assert [j.status for j in listed] == ["succeeded", "succeeded"]
    assert [j.model for j in listed] == ["local-v2", "local-v1"]
    assert jobs.current_model(space, "local") == "local-v2"
    assert jobs.model_history(space, "local") == ["local-v1"]

    # Idempotent: a second start imports nothing, and a crash between the commit and the renames (the files
    # still in place) imports nothing twice.
    assert import_legacy(db, data, corr) == []
    for hidden in list((corr / str(GUILD)).glob(".*.imported")):
        hidden.rename(hidden.with_name(hidden.name[1:].removesuffix(".imported")))
    assert import_legacy(db, data, corr) == []
    assert len(records.list_corrections(space)) == 2 and len(jobs.list_jobs(space)) == 2


async def test_everything_in_a_legacy_folder_still_works_in_the_bot(tmp_path: Path, error_log: object) -> None:
    data, corr = tmp_path / "data", tmp_path / "corrections"
    settings = Settings.from_env({"MODE": "dev", "DATA_DIR": str(data), "CORRECTIONS_DIR": str(corr),
                                  "JOB_POLL_SECONDS": "0.05"})
    sb = await Sandbox().start()
    copy_legacy(data, corr, sb.guild_id)
    bot = await start_bot(sb, settings)
    try:
        h = BotHarness(sb, bot)
        said = await h.ask("!jobs")
        assert "→ `local-v2`" in said and "→ `local-v1`" in said
        said = await h.ask("!review", user="admin")
        assert "1 correction(s) waiting for review" in said and "Salaries are paid on the 28th" in said
        assert await h.ask("When are salaries paid?") == "Salaries are paid on the 27th of each month."
        said = await h.ask("!model")
        assert "Current model: `local-v2`" in said and "`local-v2` 👍 1 👎 1" in said
        said = await h.ask("!model previous", user="admin")
        assert "local-v1" in said
        assert "Current model: `local-v1`" in await h.ask("!model")
    finally:
        await stop_bot(bot)
        await sb.close()


def test_an_old_versions_unfinished_forget_is_finished_before_the_import(db: Database, tmp_path: Path) -> None:
    data, corr = tmp_path / "data", tmp_path / "corrections"
    copy_legacy(data, corr, GUILD)
    folder = corr / str(GUILD)
    feedback = folder / "feedback.jsonl"
    staged = folder / ".feedback.jsonl.forget-0a1b2c3d"  # c46fa9c staged the new file beside the old one
    staged.write_text("")
    (folder / "forget-journal.json").write_text(json.dumps({"user_id": 1, "replace": [[str(staged), str(feedback)]],
                                                            "delete": [str(folder / "asks.jsonl")]}))
    (done,) = import_legacy(db, data, corr)
    assert "feedback.jsonl" in done.rows and done.rows["feedback.jsonl"] == 0  # the forget emptied it first
    assert "asks.jsonl" not in done.rows and not staged.exists()
    assert not (folder / "forget-journal.json").exists()
    assert records.list_feedback(GuildSpace(GUILD, data, corr, db)) == []
