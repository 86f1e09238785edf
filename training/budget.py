"""Budgets on paid calls: how many paid API calls each member made today in one server, and the limit.

A paid call is an OpenAI chat answer, an OpenAI transcription of a voice message or an OpenAI spoken
answer (which kinds are paid is stated by the backends' ``paid`` class attributes; ``Model.paid``
reads them). Every member has one daily allowance for all three kinds (``PAID_CALLS_PER_USER_PER_DAY``);
the day is the UTC day, so the allowance resets at UTC midnight.

The counts are rows of the ``budget`` table per server, UTC day and member (one server's rows never count
another's calls). Only today is kept: a charge on a new day drops the days before. They hold no content
(ids and numbers), so ``!forget`` leaves them alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from errors import OverBudget
from storage import GuildSpace

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


@dataclass(frozen=True)
class Usage:
    """One member's paid calls today, by kind."""

    day: str
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def usage(space: GuildSpace, user_id: int, *, now: float | None = None) -> Usage:
    """A member's paid calls today in this server."""
    day = utc_day(time.time() if now is None else now)
    with space.db.tx(write=False) as tx:
        row = tx.one(f"SELECT {', '.join(KINDS)} FROM budget WHERE guild_id = ? AND day = ? AND user_id = ?",
                     (space.guild_id, day, user_id))
    return Usage(day, {k: int(n) for k, n in zip(KINDS, row or (0,) * len(KINDS), strict=True) if n})


def charge(space: GuildSpace, user_id: int, kind: str, *, limit: int, now: float | None = None) -> Usage:
    """Count one paid call of ``kind`` by ``user_id`` today, or raise OverBudget (counting nothing) when the
    member already made ``limit`` paid calls today. Returns the usage after this call.

    One conditional upsert: concurrent answers (in any process) cannot both take the last call.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown paid call kind {kind!r}")
    if limit < 1:
        raise ValueError("a budget limit is at least 1 (0 means unlimited and is never charged)")
    now = time.time() if now is None else now
    day = utc_day(now)
    total = " + ".join(f"budget.{k}" for k in KINDS)
    with space.db.tx() as tx:
        row = tx.one(f"INSERT INTO budget (guild_id, day, user_id, {kind}) VALUES (?, ?, ?, 1) "
                     f"ON CONFLICT (guild_id, day, user_id) DO UPDATE SET {kind} = budget.{kind} + 1 "
                     f"WHERE {total} < ? RETURNING {', '.join(KINDS)}", (space.guild_id, day, user_id, limit))
        if row is None:
            raise OverBudget(limit, next_reset(now))
        # Earlier days no longer count: dropped as a new day starts (ids and numbers only, nothing to keep).
        tx.execute("DELETE FROM budget WHERE guild_id = ? AND day < ?", (space.guild_id, day))
    return Usage(day, {k: int(n) for k, n in zip(KINDS, row, strict=True) if n})
