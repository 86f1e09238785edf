""""Did you mean …?" offers as records: the offer, the asker's pick (a paraphrase of the chosen question) and
"None of these" (an unanswered question), and the unanswered questions grouped by meaning for the admins.

Sync, one short transaction each (the Model calls them in a thread), every query filtered on the server's id.
What arrives in a button's custom id is never trusted: an offer is looked up in the clicking server, and
everything a click may change is checked and written in one transaction (two quick clicks record one pick).

A pick counts (answers at once, reaches the next training) when an admin made it, when an admin approves it
(``corrections.review``), or once ``picks_to_learn`` different members made the same pick (the same asked
text, normalised, and the same chosen question).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dataset import corrections as records
from dataset.corrections import APPROVED, PENDING, Correction, Pick
from errors import InvalidInput, NotFound
from records.db import Database, Tx
from storage import GuildSpace, utc_now

log = logging.getLogger(__name__)

NONE_OF_THESE = -1  # the choice that says none of the offered questions was meant
MAX_OPTIONS = 4  # offered questions kept per offer (one button each, beside "None of these")
MAX_ANSWER = 4000  # characters of an admin's answer to an unanswered question (a modal field's limit)
UNANSWERED_SHOWN = 10  # groups listed by one !unanswered


class Refused(InvalidInput):
    """A click or a submit that cannot count (expired, someone else's, used, forged): nothing was recorded."""


class NotAsker(Refused):
    """Someone other than the asker clicked; ``asker_id`` is who may choose."""

    def __init__(self, asker_id: int) -> None:
        super().__init__("Only the person who asked can choose.")
        self.asker_id = asker_id


def same_key(text: str) -> str:
    """What makes two asked texts the same pick: case, punctuation and spacing do not count (the rule of the
    local model's exact match)."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


@dataclass(frozen=True)
class Offer:
    """A "Did you mean" offer: ``options`` are (question, answer) pairs, one button each."""

    id: int
    channel_id: int
    message_id: int | None
    prompt_message_id: int | None
    author_id: int
    author_name: str | None
    prompt: str
    options: list[tuple[str, str]]
    model: str | None
    time: str
    expires_at: float
    choice: int | None  # None: not chosen yet; NONE_OF_THESE; else the index of the option
    closed: bool

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


@dataclass(frozen=True)
class Choice:
    """What a click recorded: the offer as it was, the chosen (question, answer) or None for "None of
    these", the pick (with ``counted``: it answers from now on) or the unanswered row's id."""

    offer: Offer
    option: tuple[str, str] | None
    pick: Pick | None = None
    counted: bool = False
    agreed: int = 0  # members who made the same pick (this one included)
    unanswered_id: int | None = None


@dataclass(frozen=True)
class Unanswered:
    id: int
    prompt: str
    author_id: int | None
    author_name: str | None
    channel_id: int | None
    time: str


@dataclass
class Group:
    """Unanswered questions that mean the same: ``rows[0]`` is the most asked wording (the one shown)."""

    rows: list[Unanswered] = field(default_factory=list)
    askers: set[int] = field(default_factory=set)

    @property
    def id(self) -> int:
        return self.rows[0].id

    @property
    def question(self) -> str:
        return self.rows[0].prompt

    @property
    def count(self) -> int:
        return len(self.rows)


# --- offers and clicks -------------------------------------------------------------------------

_OFFER_COLS = ("id, channel_id, message_id, prompt_message_id, author_id, author_name, prompt, options, model,"
               " created_at, expires_at, choice, closed")


def _offer(row: Sequence[object]) -> Offer:
    values = list(row)
    values[7] = [(str(q), str(a)) for q, a in json.loads(str(values[7]))]
    values[12] = bool(values[12])
    return Offer(*values)  # type: ignore[arg-type]  # the columns in the fields' order


def add_offer(space: GuildSpace, *, channel_id: int, author_id: int, author_name: str | None, prompt: str,
              prompt_message_id: int | None, options: Sequence[tuple[str, str]], model: str | None,
              minutes: float) -> Offer:
    """Record an offer before its message is sent (the buttons name its id); ``minutes``: how long they work."""
    if not options:
        raise InvalidInput("An offer needs at least one question.")
    kept = [(q.strip(), a.strip()) for q, a in options[:MAX_OPTIONS]]
    now = time.time()
    with space.db.tx() as tx:
        offer_id = tx.scalar(
            "INSERT INTO offers (guild_id, channel_id, prompt_message_id, author_id, author_name, prompt, options,"
            " model, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (space.guild_id, channel_id, prompt_message_id, author_id, author_name,
             records._text(prompt, "prompt", required=False), json.dumps(kept, ensure_ascii=False), model,
             utc_now(), now + minutes * 60))
    found = get_offer(space, int(offer_id))
    assert found is not None
    return found


def set_offer_message(space: GuildSpace, offer_id: int, message_id: int) -> None:
    """The message the offer's buttons were sent on (what the expiry sweep edits)."""
    with space.db.tx() as tx:
        tx.execute("UPDATE offers SET message_id = ? WHERE guild_id = ? AND id = ?",
                   (message_id, space.guild_id, offer_id))


def get_offer(space: GuildSpace, offer_id: int) -> Offer | None:
    """The offer with this id in this server, or None (an id from another server is not found)."""
    with space.db.tx(write=False) as tx:
        row = tx.one(f"SELECT {_OFFER_COLS} FROM offers WHERE guild_id = ? AND id = ?", (space.guild_id, offer_id))
    return None if row is None else _offer(row)


def _check_click(offer: Offer | None, choice: int, user_id: int, now: float) -> Offer:
    if offer is None:
        raise NotFound("That offer doesn't exist in this server. Nothing was recorded.")
    if choice != NONE_OF_THESE and not 0 <= choice < len(offer.options):
        raise Refused("That button doesn't belong to this offer. Nothing was recorded.")
    if user_id != offer.author_id:
        raise NotAsker(offer.author_id)
    if offer.choice is not None:
        raise Refused("You already chose on this offer. Nothing more was recorded.")
    if offer.closed or offer.expired(now):
        raise Refused("These buttons have expired: ask me again. Nothing was recorded.")
    return offer


def choose(space: GuildSpace, offer_id: int, choice: int, *, user_id: int, user_name: str | None,
           trusted: bool, picks_to_learn: int, now: float | None = None) -> Choice:
    """The asker's click on an offer: a pick of option ``choice`` or ``NONE_OF_THESE``, recorded with the offer
    marked used, in one transaction. ``trusted`` (an admin) counts at once; a member's pick waits for review,
    or counts once ``picks_to_learn`` different members made the same pick (0: always waits).

    Refused (nothing written): an offer not in this server (NotFound), someone else's click (NotAsker), a
    used or expired offer, a choice the offer does not have (Refused).
    """
    now = time.time() if now is None else now
    with space.db.tx() as tx:
        row = tx.one(f"SELECT {_OFFER_COLS} FROM offers WHERE guild_id = ? AND id = ?", (space.guild_id, offer_id))
        offer = _check_click(None if row is None else _offer(row), choice, user_id, now)
        # Marked used first, only if still unused: two quick clicks (or two processes) record one choice.
        changed = tx.execute("UPDATE offers SET choice = ?, chosen_at = ?, closed = ? WHERE guild_id = ? AND id = ?"
                             " AND choice IS NULL", (choice, utc_now(), True, space.guild_id, offer_id))
        if changed.rowcount != 1:
            raise Refused("You already chose on this offer. Nothing more was recorded.")
        if choice == NONE_OF_THESE:
            unanswered_id = tx.scalar(
                "INSERT INTO unanswered (guild_id, offer_id, prompt, author_id, author_name, channel_id,"
                " source_message_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (space.guild_id, offer.id, offer.prompt, user_id, user_name, offer.channel_id,
                 offer.prompt_message_id, utc_now()))
            return Choice(offer, None, unanswered_id=int(unanswered_id))
        question, answer = offer.options[choice]
        pick, counted, agreed = _add_pick(tx, space, offer, question, answer, user_id=user_id, user_name=user_name,
                                          trusted=trusted, picks_to_learn=picks_to_learn)
        return Choice(offer, (question, answer), pick=pick, counted=counted, agreed=agreed)


def _add_pick(tx: Tx, space: GuildSpace, offer: Offer, question: str, answer: str, *, user_id: int,
              user_name: str | None, trusted: bool, picks_to_learn: int) -> tuple[Pick, bool, int]:
    """Insert the pick; approve it (and the same pick of other members) when it counts. (pick, counted,
    how many different members made this pick)."""
    key = same_key(offer.prompt)
    status = APPROVED if trusted else PENDING
    created = utc_now()
    # The same person making the same pick again adds no record (and no second vote); an admin's makes a
    # member's own earlier pick count.
    row = tx.one(f"{records._PICKS} WHERE p.guild_id = ? AND p.key = ? AND p.question = ? AND p.author_id = ?"
                 " AND p.status <> 'rejected' ORDER BY p.id LIMIT 1", (space.guild_id, key, question, user_id))
    if row is not None and (not trusted or records._pick(row).approved):
        earlier = records._pick(row)
        agreed = int(tx.scalar("SELECT COUNT(DISTINCT author_id) FROM picks WHERE guild_id = ? AND key = ?"
                               " AND question = ? AND status <> 'rejected'", (space.guild_id, key, question), 0))
        return earlier, earlier.approved, agreed

    def params(ref: str) -> tuple[object, ...]:
        return (space.guild_id, ref, offer.id, key, offer.prompt, question, answer, user_id, user_name,
                offer.channel_id, offer.prompt_message_id, status, created)

    ref = records._insert_with_new_ref(
        tx, "P", "INSERT INTO picks (guild_id, ref, offer_id, key, prompt, question, answer, author_id, author_name,"
        " channel_id, source_message_id, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", params)
    # Rejected picks do not count towards agreement: an admin said no to that pick.
    agreed = int(tx.scalar("SELECT COUNT(DISTINCT author_id) FROM picks WHERE guild_id = ? AND key = ?"
                           " AND question = ? AND status <> 'rejected'", (space.guild_id, key, question), 0))
    counted = trusted
    if not trusted and picks_to_learn > 0 and agreed >= picks_to_learn:
        review_id = tx.scalar(
            "INSERT INTO reviews (guild_id, decision, by_id, by_name, reason, created_at) VALUES (?, ?, ?, ?, ?, ?)"
            " RETURNING id", (space.guild_id, APPROVED, None, f"{agreed} members made the same pick",
                              f"PICKS_TO_LEARN={picks_to_learn}", utc_now()))
        tx.execute("UPDATE picks SET status = ?, review_id = ? WHERE guild_id = ? AND key = ? AND question = ?"
                   " AND status = ?", (APPROVED, review_id, space.guild_id, key, question, PENDING))
        counted, status = True, APPROVED
    pick = Pick(ref=ref, prompt=offer.prompt, question=question, answer=answer, status=status, author_id=user_id,
                author_name=user_name, channel_id=offer.channel_id, source_message_id=offer.prompt_message_id,
                offer_id=offer.id, time=created)
    return pick, counted, agreed


def close_offer(space: GuildSpace, offer_id: int) -> None:
    """Mark an offer's buttons disabled (expired and its message edited)."""
    with space.db.tx() as tx:
        tx.execute("UPDATE offers SET closed = ? WHERE guild_id = ? AND id = ?", (True, space.guild_id, offer_id))


def expired_open_offers(db: Database, guild_ids: set[int] | None, now: float | None = None) -> list[tuple[int, Offer]]:
    """(guild id, offer) for offers of ``guild_ids`` (None: all) past their time whose buttons were not disabled
    yet, oldest first: what the expiry sweep edits, after a restart too. (Few: each sweep closes what it finds.)"""
    now = time.time() if now is None else now
    with db.tx(write=False) as tx:
        rows = tx.all(f"SELECT guild_id, {_OFFER_COLS} FROM offers WHERE closed = ? AND expires_at <= ?"
                      " ORDER BY expires_at", (False, now))
    return [(int(r[0]), _offer(r[1:])) for r in rows if guild_ids is None or int(r[0]) in guild_ids]


# --- unanswered questions ----------------------------------------------------------------------

def open_unanswered(space: GuildSpace) -> list[Unanswered]:
    """The questions recorded with "None of these" that no admin answered yet, oldest first."""
    with space.db.tx(write=False) as tx:
        rows = tx.all("SELECT id, prompt, author_id, author_name, channel_id, created_at FROM unanswered"
                      " WHERE guild_id = ? AND answered_ref IS NULL ORDER BY id", (space.guild_id,))
    return [Unanswered(*r) for r in rows]


def group_unanswered(rows: Sequence[Unanswered], embed: Callable[[list[str]], np.ndarray | None],
                     same_meaning: float) -> list[Group]:
    """Questions grouped by meaning, most asked first: the same wording (normalised) always goes together; with
    vectors (``embed`` returns unit rows, or None: wording only), a wording joins the first group whose shown
    question scores at least ``same_meaning`` with it. Deterministic for the same rows (a button names a
    group by its first row's id, and the submit finds it again)."""
    by_key: dict[str, list[Unanswered]] = {}
    for row in rows:
        by_key.setdefault(same_key(row.prompt), []).append(row)
    # The most asked wordings lead (ties: asked first); each wording's oldest row stands for it.
    wordings = sorted(by_key.values(), key=lambda rs: (-len(rs), rs[0].id))
    vectors = embed([rs[0].prompt for rs in wordings]) if wordings else None
    groups: list[Group] = []
    leads: list[int] = []  # the wording index that leads each group
    for i, rs in enumerate(wordings):
        target = None
        if vectors is not None and leads:
            scores = vectors[leads] @ vectors[i]
            best = int(np.argmax(scores))
            if float(scores[best]) >= same_meaning and vectors[i].any():
                target = groups[best]
        if target is None:
            target = Group()
            groups.append(target)
            leads.append(i)
        target.rows.extend(rs)
        target.askers.update(r.author_id for r in rs if r.author_id is not None)
    groups.sort(key=lambda g: (-g.count, g.rows[0].id))
    return groups


def answer_group(space: GuildSpace, group: Group, *, question: str, answer: str, author_id: int,
                 author_name: str | None, channel_id: int | None) -> Correction:
    """An admin's answer to a group of unanswered questions: an approved correction of ``question``, and the
    group leaves the list, in one transaction. Refused (nothing written) when the group was answered meanwhile
    (a modal submitted twice) or the answer is empty or over ``MAX_ANSWER`` characters."""
    answer = answer.strip()
    if not answer:
        raise InvalidInput("The answer is empty. Nothing was saved.")
    if len(answer) > MAX_ANSWER:
        raise InvalidInput(f"The answer is {len(answer):,} characters long; the limit is {MAX_ANSWER:,}. "
                           f"Nothing was saved.")
    question = question.strip() or group.question
    ids = [r.id for r in group.rows]
    now = utc_now()
    with space.db.tx() as tx:
        ref = records._insert_with_new_ref(
            tx, "C", "INSERT INTO corrections (guild_id, ref, message_id, channel_id, author_id, author_name,"
            " source_message_id, prompt, answer, correction, status, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            lambda ref: (space.guild_id, ref, None, channel_id, author_id, author_name, None,
                         records._text(question, "question", required=True), "",
                         records._text(answer, "answer", required=True), APPROVED, now))
        marks = ", ".join("?" for _ in ids)
        changed = tx.execute(f"UPDATE unanswered SET answered_ref = ?, answered_at = ? WHERE guild_id = ?"
                             f" AND answered_ref IS NULL AND id IN ({marks})", (ref, now, space.guild_id, *ids))
        if changed.rowcount != len(ids):  # someone answered (part of) it meanwhile: this one is not kept
            raise Refused("That question was already answered. Nothing was saved.")
    return Correction(ref=ref, prompt=question, answer="", correction=answer, status=APPROVED, channel_id=channel_id,
                      author_id=author_id, author_name=author_name, time=now)


def unanswered_row(space: GuildSpace, row_id: int) -> tuple[Unanswered, str | None] | None:
    """One unanswered question of this server and the correction that answered it (None: still open), or None."""
    with space.db.tx(write=False) as tx:
        row = tx.one("SELECT id, prompt, author_id, author_name, channel_id, created_at, answered_ref FROM unanswered"
                     " WHERE guild_id = ? AND id = ?", (space.guild_id, row_id))
    return None if row is None else (Unanswered(*row[:6]), row[6])
