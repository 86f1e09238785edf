"""Budgets on paid calls: how many paid API calls each member made today in one server, and the limit.

A paid call is an OpenAI chat answer, an OpenAI transcription of a voice message or an OpenAI spoken
answer (which kinds are paid is stated by the backends' ``paid`` class attributes; ``Model.paid``
reads them). Every member has one daily allowance for all three kinds (``PAID_CALLS_PER_USER_PER_DAY``);
the day is the UTC day, so the allowance resets at UTC midnight.

The counts live in ``DATA_DIR/<guild id>/budget.json`` (one server's file never counts another's
calls), written atomically under the file's lock: ``{"day": "2025-06-01", "users": {"<user id>":
{"chat": 3, "speech": 1}}}``. Only today is kept: the first charge of a new day drops the old day.
They hold no content (ids and numbers), so ``!forget`` leaves them alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from errors import OverBudget
from storage import GuildSpace, atomic_write_json, lock_for, read_json

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("chat", "transcription", "speech")
# How each kind is named to users (in the over-budget line and the logs).
KIND_NAMES = {"chat": "answers", "transcription": "voice message transcriptions", "speech": "spoken answers"}


def utc_day(now: float) -> str:
    """The UTC calendar day of a Unix time, e.g. ``2025-06-01``."""
    return datetime.fromtimestamp(now, UTC).date().isoformat()


def next_reset(now: float) -> int:
    """The Unix time of the next UTC midnight: when today's counts stop counting."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((day + timedelta(days=1)).timestamp())


def over_budget_line(limit: int, now: float) -> str:
    """The one line a member over the limit is told (a Discord timestamp shows the reset in their time)."""
    return (f"You've used your {limit} paid calls for today (OpenAI answers, transcriptions and spoken answers); "
            f"they reset <t:{next_reset(now)}:R>.")


@dataclass(frozen=True)
class Usage:
    """One member's paid calls today, by kind."""

    day: str
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _read(space: GuildSpace, day: str) -> dict[str, dict[str, int]]:
    """Today's counts per user id (as a string); empty for a new day, a missing or a damaged file."""
    try:
        stored = read_json(space.budget_file, {})
    except (ValueError, UnicodeDecodeError):
        # Counting starts again rather than refusing everyone: a few uncounted calls cost less than a mute bot.
        log.warning("%s is damaged; today's paid-call counts start again from zero", space.budget_file)
        return {}
    if not isinstance(stored, dict) or stored.get("day") != day or not isinstance(stored.get("users"), dict):
        return {}  # another day's counts (or none): they no longer count, and are dropped at the next write
    users: dict[str, dict[str, int]] = {}
    for user, counts in stored["users"].items():
        if isinstance(counts, dict):
            users[str(user)] = {k: int(v) for k, v in counts.items() if k in KINDS and isinstance(v, int)}
    return users


def usage(space: GuildSpace, user_id: int, *, now: float | None = None) -> Usage:
    """A member's paid calls today in this server."""
    day = utc_day(time.time() if now is None else now)
    return Usage(day, dict(_read(space, day).get(str(user_id), {})))


def charge(space: GuildSpace, user_id: int, kind: str, *, limit: int, now: float | None = None) -> Usage:
    """Count one paid call of ``kind`` by ``user_id`` today, or raise OverBudget (counting nothing) when the
    member already made ``limit`` paid calls today. Returns the usage after this call.

    Read, check and write happen under the file's lock, so concurrent answers cannot both take the last call.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown paid call kind {kind!r}")
    if limit < 1:
        raise ValueError("a budget limit is at least 1 (0 means unlimited and is never charged)")
    now = time.time() if now is None else now
    day = utc_day(now)
    with lock_for(space.budget_file):
        users = _read(space, day)
        counts = users.setdefault(str(user_id), {})
        if sum(counts.values()) >= limit:
            raise OverBudget(over_budget_line(limit, now))
        counts[kind] = counts.get(kind, 0) + 1
        space.data.mkdir(parents=True, exist_ok=True)
        atomic_write_json(space.budget_file, {"day": day, "users": users})
    return Usage(day, dict(counts))
