"""training/budget.py on both engines: members' paid calls per server per UTC day, the limit, the reset line,
the rows kept."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from errors import OverBudget
from records.db import Database
from records.legacy import import_legacy
from storage import GuildSpace
from training import budget

NOON = datetime(2025, 6, 1, 12, 0, tzinfo=UTC).timestamp()
MIDNIGHT = int(datetime(2025, 6, 2, tzinfo=UTC).timestamp())


def stored(space: GuildSpace) -> list[tuple[object, ...]]:
    """The server's budget rows: (day, user, chat, transcription, speech)."""
    with space.db.tx(write=False) as tx:
        return tx.all("SELECT day, user_id, chat, transcription, speech FROM budget WHERE guild_id = ? "
                      "ORDER BY day, user_id", (space.guild_id,))


def test_the_limit_counts_all_kinds_and_refusals_count_nothing(space: GuildSpace) -> None:
    assert budget.charge(space, 7, "chat", limit=3, now=NOON).total == 1
    assert budget.charge(space, 7, "transcription", limit=3, now=NOON).total == 2
    used = budget.charge(space, 7, "speech", limit=3, now=NOON)
    assert used.counts == {"chat": 1, "transcription": 1, "speech": 1}
    with pytest.raises(OverBudget) as refused:
        budget.charge(space, 7, "chat", limit=3, now=NOON + 60)
    # Data, not Discord text: the cog shows the reset as a timestamp in each reader's time zone.
    assert (refused.value.limit, refused.value.resets_at) == (3, MIDNIGHT)
    assert str(refused.value) == (
        "You've used your 3 paid calls for today (OpenAI answers, transcriptions and spoken answers); "
        "they reset at midnight UTC.")
    assert budget.usage(space, 7, now=NOON).total == 3, "a refused call is not counted"
    # Another member has their own allowance.
    assert budget.charge(space, 8, "chat", limit=3, now=NOON).total == 1


def test_a_new_utc_day_starts_from_zero_and_drops_the_old_day(space: GuildSpace) -> None:
    for _ in range(2):
        budget.charge(space, 7, "chat", limit=2, now=NOON)
    with pytest.raises(OverBudget):
        budget.charge(space, 7, "chat", limit=2, now=MIDNIGHT - 1)
    assert budget.charge(space, 7, "chat", limit=2, now=MIDNIGHT).total == 1
    assert stored(space) == [("2025-06-02", 7, 1, 0, 0)]  # the day before is dropped
    assert budget.usage(space, 7, now=MIDNIGHT).counts == {"chat": 1}
    assert budget.usage(space, 7, now=NOON).counts == {}
    assert budget.next_reset(MIDNIGHT) == MIDNIGHT + 86400


def test_counts_are_per_server(db: Database, tmp_path: Path) -> None:
    one = GuildSpace(11, tmp_path / "data", tmp_path / "corrections", db)
    two = GuildSpace(12, tmp_path / "data", tmp_path / "corrections", db)
    budget.charge(one, 7, "chat", limit=1, now=NOON)
    with pytest.raises(OverBudget):
        budget.charge(one, 7, "chat", limit=1, now=NOON)
    assert budget.charge(two, 7, "chat", limit=1, now=NOON).total == 1
    assert budget.usage(one, 7, now=NOON).counts == {"chat": 1} and budget.usage(two, 7, now=NOON).total == 1
    # A new day in one server does not drop another server's counts.
    budget.charge(one, 7, "chat", limit=1, now=MIDNIGHT)
    assert stored(two) == [("2025-06-01", 7, 1, 0, 0)]


def test_concurrent_charges_never_pass_the_limit(space: GuildSpace) -> None:
    allowed: list[int] = []
    refused: list[int] = []

    def worker(n: int) -> None:
        try:
            budget.charge(space, 7, "chat", limit=5, now=NOON)
            allowed.append(n)
        except OverBudget:
            refused.append(n)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(allowed), len(refused)) == (5, 7)
    assert budget.usage(space, 7, now=NOON).total == 5


def test_an_older_versions_counts_carry_over_and_a_damaged_file_starts_counting_again(
        space: GuildSpace, tmp_path: Path) -> None:
    """The budget.json of a version before the database: today's counts are imported; a damaged one is not (the
    count starts again: a few uncounted calls cost less than a bot that refuses to start)."""
    other = GuildSpace(12, tmp_path / "data", tmp_path / "corrections", space.db).ensure()
    (space.data / "budget.json").write_text('{"day": "2025-06-01", "users": {"7": {"chat": 1, "speech": 1}}}')
    (other.data / "budget.json").write_text('{"day": "2025-06-01", "users": {"7": {"chat"')
    import_legacy(space.db, tmp_path / "data", tmp_path / "corrections")
    assert budget.usage(space, 7, now=NOON).counts == {"chat": 1, "speech": 1}
    with pytest.raises(OverBudget):
        budget.charge(space, 7, "chat", limit=2, now=NOON)
    assert budget.usage(other, 7, now=NOON).total == 0
    assert budget.charge(other, 7, "chat", limit=2, now=NOON).total == 1
    assert stored(other) == [("2025-06-01", 7, 1, 0, 0)]


def test_bad_arguments_are_programming_errors(space: GuildSpace) -> None:
    with pytest.raises(ValueError):
        budget.charge(space, 7, "images", limit=2)
    with pytest.raises(ValueError):
        budget.charge(space, 7, "chat", limit=0)
    assert stored(space) == []
