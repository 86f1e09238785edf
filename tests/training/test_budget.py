"""training/budget.py: members' paid calls per server per UTC day, the limit, the reset line, the file."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from errors import OverBudget
from storage import GuildSpace
from training import budget

NOON = datetime(2025, 6, 1, 12, 0, tzinfo=UTC).timestamp()
MIDNIGHT = int(datetime(2025, 6, 2, tzinfo=UTC).timestamp())


def test_the_limit_counts_all_kinds_and_refusals_count_nothing(space: GuildSpace) -> None:
    assert budget.charge(space, 7, "chat", limit=3, now=NOON).total == 1
    assert budget.charge(space, 7, "transcription", limit=3, now=NOON).total == 2
    used = budget.charge(space, 7, "speech", limit=3, now=NOON)
    assert used.counts == {"chat": 1, "transcription": 1, "speech": 1}
    with pytest.raises(OverBudget) as refused:
        budget.charge(space, 7, "chat", limit=3, now=NOON + 60)
    assert str(refused.value) == (
        "You've used your 3 paid calls for today (OpenAI answers, transcriptions and spoken answers); "
        f"they reset <t:{MIDNIGHT}:R>.")
    assert "\n" not in str(refused.value)
    assert budget.usage(space, 7, now=NOON).total == 3, "a refused call is not counted"
    # Another member has their own allowance.
    assert budget.charge(space, 8, "chat", limit=3, now=NOON).total == 1


def test_a_new_utc_day_starts_from_zero_and_drops_the_old_day(space: GuildSpace) -> None:
    for _ in range(2):
        budget.charge(space, 7, "chat", limit=2, now=NOON)
    with pytest.raises(OverBudget):
        budget.charge(space, 7, "chat", limit=2, now=MIDNIGHT - 1)
    assert budget.charge(space, 7, "chat", limit=2, now=MIDNIGHT).total == 1
    stored = json.loads(space.budget_file.read_text())
    assert stored == {"day": "2025-06-02", "users": {"7": {"chat": 1}}}
    assert budget.next_reset(MIDNIGHT) == MIDNIGHT + 86400


def test_counts_are_per_server(tmp_path: Path) -> None:
    one = GuildSpace(11, tmp_path / "data", tmp_path / "corrections")
    two = GuildSpace(12, tmp_path / "data", tmp_path / "corrections")
    budget.charge(one, 7, "chat", limit=1, now=NOON)
    with pytest.raises(OverBudget):
        budget.charge(one, 7, "chat", limit=1, now=NOON)
    assert budget.charge(two, 7, "chat", limit=1, now=NOON).total == 1
    assert one.budget_file.parent != two.budget_file.parent


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


def test_a_damaged_file_starts_counting_again(space: GuildSpace, caplog: pytest.LogCaptureFixture) -> None:
    space.budget_file.write_text('{"day": "2025-06-01", "users": {"7": {"chat"')
    assert budget.charge(space, 7, "chat", limit=2, now=NOON).total == 1
    assert "damaged" in caplog.text
    assert json.loads(space.budget_file.read_text())["users"] == {"7": {"chat": 1}}


def test_bad_arguments_are_programming_errors(space: GuildSpace) -> None:
    with pytest.raises(ValueError):
        budget.charge(space, 7, "images", limit=2)
    with pytest.raises(ValueError):
        budget.charge(space, 7, "chat", limit=0)
    assert not space.budget_file.exists()
