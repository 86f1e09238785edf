"""What members give in one server, as records in the database: the bot's answers, corrections and their
reviews, picks on "Did you mean" offers (paraphrases, reviewed like corrections), feedback, !test mismatches,
👍/👎 reactions and the bot's asks after a 👎.

All functions are sync and run one short transaction (the Model calls them in a thread). Each returns typed
records (dataclasses), never raw rows. Every query is filtered on the server's id: one server's records are
never seen by another.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NotRequired, TypedDict

from dataset.markdown import published
from errors import InvalidInput
from records.db import Row, Tx
from storage import GuildSpace, utc_now

log = logging.getLogger(__name__)

MAX_TEXT = 20_000  # characters kept per text field; Discord messages are far shorter
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
UP, DOWN = "up", "down"


def new_ref(prefix: str) -> str:
    """A short reference id users can quote, e.g. ``C-7f3a2b``."""
    return f"{prefix}-{secrets.token_hex(3)}"


def _insert_with_new_ref(tx: Tx, prefix: str, sql: str, params: Callable[[str], tuple[Any, ...]]) -> str:
    """Run ``sql`` (an INSERT whose params are ``params(ref)``) under a ref not yet used in the server; the ref.

    Refs are short (16.7 million of each kind), so a server with thousands of records draws a used one now and
    then: it draws again (ON CONFLICT DO NOTHING also holds against another process inserting at once)."""
    for _ in range(50):
        ref = new_ref(prefix)
        if tx.one(f"{sql} ON CONFLICT (guild_id, ref) DO NOTHING RETURNING ref", params(ref)) is not None:
            return ref
    raise RuntimeError(f"no free {prefix}- reference after 50 draws")


def _text(value: Any, what: str, *, required: bool) -> str:
    """A text field. What a user writes (``required``) is refused over MAX_TEXT; logged bot text is capped."""
    text = "" if value is None else str(value).strip()
    if required and not text:
        raise InvalidInput(f"The {what} is empty: write some text after the command.")
    if required and len(text) > MAX_TEXT:
        raise InvalidInput(f"The {what} is {len(text):,} characters long; the limit is {MAX_TEXT:,}. "
                           f"Nothing was saved: shorten it and send it again.")
    return text[:MAX_TEXT]


# --- the records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One of the bot's answers, as sent (``message_id``: one of the messages it was sent as)."""

    message_id: int
    channel_id: int | None
    prompt: str
    answer: str
    prompt_message_id: int | None = None
    author_id: int | None = None  # who asked
    author_name: str | None = None
    model: str | None = None
    time: str = ""


@dataclass(frozen=True)
class Correction:
    """A correction of one answer; ``status`` is pending, approved or rejected."""

    ref: str
    prompt: str
    answer: str
    correction: str
    status: str
    message_id: int | None = None
    channel_id: int | None = None
    author_id: int | None = None
    author_name: str | None = None
    source_message_id: int | None = None
    time: str = ""
    reviewed_by: str | None = None
    review_reason: str = ""
    trusted: bool = False  # an admin wrote it (the question too): published as written

    @property
    def approved(self) -> bool:
        return self.status == APPROVED

    @property
    def published_prompt(self) -> str:
        """The question as answers and "Did you mean …?" offers show it (a member's: markdown neutralised)."""
        return published(self.prompt, trusted=self.trusted)

    @property
    def published_correction(self) -> str:
        """The answer as the bot gives it (a member's: markdown and masked links neutralised)."""
        return published(self.correction, trusted=self.trusted)

    @property
    def applies(self) -> bool:
        """Whether it answers questions now (approved, with text), before the next training."""
        return self.approved and bool(self.correction.strip())


@dataclass(frozen=True)
class Pick:
    """A pick on a "Did you mean" offer: ``prompt`` (what was asked) taught as a paraphrase of ``question``,
    answered with ``answer`` (the question's answer when it was offered). Reviewed like a correction."""

    ref: str
    prompt: str
    question: str
    answer: str
    status: str
    author_id: int | None = None
    author_name: str | None = None
    channel_id: int | None = None
    source_message_id: int | None = None
    offer_id: int | None = None
    time: str = ""
    reviewed_by: str | None = None
    review_reason: str = ""

    @property
    def approved(self) -> bool:
        return self.status == APPROVED

    @property
    def applies(self) -> bool:
        """Whether it answers questions now (counted: approved), before the next training."""
        return self.approved and bool(self.prompt.strip()) and bool(self.answer.strip())


class RepliedTo(TypedDict):
    """The message a piece of feedback replied to (JSON in its row): None where Discord did not resolve it."""

    message_id: int
    author_id: int | None
    content: str | None
    redacted: NotRequired[bool]  # its author was forgotten: ``content`` is gone


@dataclass(frozen=True)
class Feedback:
    ref: str
    text: str
    author_id: int | None = None
    author_name: str | None = None
    channel_id: int | None = None
    source_message_id: int | None = None
    reply_to: RepliedTo | None = None
    time: str = ""


@dataclass(frozen=True)
class TestError:
    """A !test case the model got wrong: trained on next time (``got`` as the non-preferred answer)."""

    __test__ = False  # not a pytest class
    input: str
    expected: str
    got: str | None = None
    kind: str = "answer"
    line: int | None = None
    model: str | None = None
    ref: str = ""
    time: str = ""


@dataclass(frozen=True)
class Reaction:
    """A 👍 (``up``) or 👎 (``down``) put on (``added``) or taken off an answer."""

    message_id: int
    kind: str
    added: bool
    author_id: int
    channel_id: int | None = None
    author_name: str | None = None
    model: str | None = None
    time: str = ""


@dataclass(frozen=True)
class Ask:
    """The bot asked ``author_id`` (who gave 👎) for the right answer to ``message_id``."""

    ask_message_id: int
    message_id: int
    author_id: int
    channel_id: int | None = None
    author_name: str | None = None
    time: str = ""


@dataclass
class ReactionCounts:
    up: int = 0
    down: int = 0


# --- the bot's answers ------------------------------------------------------------------------

_ANSWER_COLS = "message_id, channel_id, prompt, answer, prompt_message_id, author_id, author_name, model, created_at"


def _answer(row: Row) -> Answer:
    return Answer(*row)  # the columns in the fields' order


def record_answer(space: GuildSpace, *, message_ids: list[int], channel_id: int, prompt: str, answer: str,
                  prompt_message_id: int | None, author_id: int | None, model: str | None,
                  author_name: str | None = None) -> None:
    """Log one bot answer, sent as ``message_ids`` (a long answer is several; any of them can be corrected)."""
    now = utc_now()
    prompt, answer = _text(prompt, "prompt", required=False), _text(answer, "answer", required=False)
    with space.db.tx() as tx:
        tx.executemany(
            "INSERT INTO answers (guild_id, message_id, part, channel_id, prompt_message_id, author_id, author_name,"
            " model, prompt, answer, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (guild_id, message_id) DO NOTHING",
            [(space.guild_id, int(mid), part, int(channel_id), prompt_message_id, author_id, author_name, model,
              prompt, answer, now) for part, mid in enumerate(message_ids)])


def parse_message_id(text: Any) -> int:
    """A message id typed by a user; anything but a number raises InvalidInput."""
    try:
        return int(str(text).strip())
    except ValueError:
        raise InvalidInput(f"`{str(text)[:40]}` is not a message id: copy the id of the bot's message.") from None


def find_answer(space: GuildSpace, message_id: int | str) -> Answer | None:
    """The logged answer for a bot message id (or the id as a user typed it), or None."""
    mid = parse_message_id(message_id)
    with space.db.tx(write=False) as tx:
        row = tx.one(f"SELECT {_ANSWER_COLS} FROM answers WHERE guild_id = ? AND message_id = ?",
                     (space.guild_id, mid))
    return None if row is None else _answer(row)


def latest_answer(space: GuildSpace, channel_id: int, author_id: int) -> Answer | None:
    """The bot's latest answer to ``author_id`` in ``channel_id`` (what ``!correct <text>`` corrects), or None."""
    with space.db.tx(write=False) as tx:
        row = tx.one(f"SELECT {_ANSWER_COLS} FROM answers WHERE guild_id = ? AND channel_id = ? AND author_id = ?"
                     " AND part = 0 ORDER BY id DESC LIMIT 1", (space.guild_id, channel_id, author_id))
    return None if row is None else _answer(row)


# --- corrections and the review queue ---------------------------------------------------------
# A correction is born approved (an admin's, or any while review is off) or pending; an admin's decision
# (a row in reviews, naming who and why) moves pending ones to approved or rejected, all or none.

_CORRECTION_COLS = ("c.ref, c.prompt, c.answer, c.correction, c.status, c.message_id, c.channel_id, c.author_id,"
                    " c.author_name, c.source_message_id, c.created_at, r.by_name, r.reason, c.trusted")
_CORRECTIONS = f"SELECT {_CORRECTION_COLS} FROM corrections c LEFT JOIN reviews r ON r.id = c.review_id"


def _correction(row: Row) -> Correction:
    record = Correction(*row)  # the columns in the fields' order
    return replace(record, review_reason=record.review_reason or "", trusted=bool(record.trusted))


def add_correction(space: GuildSpace, *, message_id: int | None, prompt: str, answer: str, correction: str,
                   author_id: int | None, author_name: str | None, channel_id: int | None,
                   source_message_id: int | None = None, approved: bool = True,
                   trusted: bool = False) -> Correction:
    """Store a correction of a bot answer; returns it with its ``ref`` (``C-xxxxxx``).

    ``approved=False`` puts it in the review queue (a member's correction while REVIEW_CORRECTIONS is on);
    ``trusted``: an admin wrote it and the question it corrects (published as written, see
    ``Correction.published_correction``); ``source_message_id`` is the message the correction was written in.
    """
    record = Correction(
        ref="", prompt=_text(prompt, "prompt", required=False),
        answer=_text(answer, "answer", required=False), correction=_text(correction, "correction", required=True),
        status=APPROVED if approved else PENDING, message_id=message_id, channel_id=channel_id,
        author_id=author_id, author_name=author_name, source_message_id=source_message_id, time=utc_now(),
        trusted=trusted)
    with space.db.tx() as tx:
        ref = _insert_with_new_ref(
            tx, "C", "INSERT INTO corrections (guild_id, ref, message_id, channel_id, author_id, author_name,"
            " source_message_id, prompt, answer, correction, status, created_at, trusted)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            lambda ref: (space.guild_id, ref, message_id, channel_id, author_id, author_name, source_message_id,
                         record.prompt, record.answer, record.correction, record.status, record.time, trusted))
    return replace(record, ref=ref)


def list_corrections(space: GuildSpace, status: str | None = None) -> list[Correction]:
    """The server's corrections (only those with ``status`` when given), oldest first."""
    where, params = "c.guild_id = ?", [space.guild_id]
    params_: list[Any] = params
    if status is not None:
        where += " AND c.status = ?"
        params_.append(status)
    with space.db.tx(write=False) as tx:
        return [_correction(r) for r in tx.all(f"{_CORRECTIONS} WHERE {where} ORDER BY c.id", params_)]


def approved_corrections(space: GuildSpace) -> list[Correction]:
    """The corrections that may reach training data and answers, as they are published: a member's question and
    answer with their markdown and masked links neutralised (``dataset.markdown``), an admin's as written."""
    return [replace(c, prompt=c.published_prompt, correction=c.published_correction)
            for c in list_corrections(space, APPROVED)]


def pending_corrections(space: GuildSpace) -> list[Correction]:
    """Corrections waiting for an admin's decision, oldest first."""
    return list_corrections(space, PENDING)


_PICK_COLS = ("p.ref, p.prompt, p.question, p.answer, p.status, p.author_id, p.author_name, p.channel_id,"
              " p.source_message_id, p.offer_id, p.created_at, r.by_name, r.reason")
_PICKS = f"SELECT {_PICK_COLS} FROM picks p LEFT JOIN reviews r ON r.id = p.review_id"


def _pick(row: Row) -> Pick:
    record = Pick(*row)  # the columns in the fields' order
    return record if record.review_reason is not None else replace(record, review_reason="")


def list_picks(space: GuildSpace, status: str | None = None) -> list[Pick]:
    """The server's picks (only those with ``status`` when given), oldest first."""
    where, params = "p.guild_id = ?", [space.guild_id]
    params_: list[Any] = params
    if status is not None:
        where += " AND p.status = ?"
        params_.append(status)
    with space.db.tx(write=False) as tx:
        return [_pick(r) for r in tx.all(f"{_PICKS} WHERE {where} ORDER BY p.id", params_)]


def approved_picks(space: GuildSpace) -> list[Pick]:
    """The counted picks: paraphrases that answer at once and reach the next training."""
    return list_picks(space, APPROVED)


def pending_picks(space: GuildSpace) -> list[Pick]:
    """Members' picks waiting for an admin's decision (or for more members to make the same pick)."""
    return list_picks(space, PENDING)


def overlay_signature(space: GuildSpace) -> tuple[int, ...]:
    """Changes whenever what counts before the next training may have changed: corrections and picks added,
    reviewed or forgotten. Its first element is 0 when there are neither."""
    with space.db.tx(write=False) as tx:
        c = tx.one("SELECT COUNT(*), COALESCE(MAX(id), 0), COALESCE(MAX(review_id), 0) FROM corrections"
                   " WHERE guild_id = ?", (space.guild_id,))
        p = tx.one("SELECT COUNT(*), COALESCE(MAX(id), 0), COALESCE(MAX(review_id), 0) FROM picks"
                   " WHERE guild_id = ? AND status = ?", (space.guild_id, APPROVED))
    assert c is not None and p is not None
    return (int(c[0]) + int(p[0]), int(c[1]), int(c[2]), int(p[0]), int(p[1]), int(p[2]))


def corrections_signature(space: GuildSpace) -> tuple[int, int, int]:
    """Changes whenever the corrections that apply may have changed (added, reviewed or forgotten)."""
    with space.db.tx(write=False) as tx:
        row = tx.one("SELECT COUNT(*), COALESCE(MAX(id), 0), COALESCE(MAX(review_id), 0) FROM corrections"
                     " WHERE guild_id = ?", (space.guild_id,))
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


_REF_KINDS = {"c": "correction", "p": "pick"}


def parse_refs(raw: list[str]) -> list[str]:
    """Typed ids -> canonical refs: ``c-7f3a2b``, ``C-7F3A2B`` and ``7f3a2b`` all mean ``C-7f3a2b`` (a
    correction); ``P-7f3a2b`` is a pick (a paraphrase)."""
    refs: list[str] = []
    for word in raw:
        word = word.strip().strip("`,")
        if not word:
            continue
        kind = word[0].lower() if word[1:2] == "-" and word[0].lower() in _REF_KINDS else "c"
        tail = word[2:] if word[1:2] == "-" and word[0].lower() in _REF_KINDS else word
        if not re.fullmatch(r"[0-9a-fA-F]{6}", tail):
            raise InvalidInput(f"`{word[:40]}` is not a correction id (they look like `C-7f3a2b`, or `P-7f3a2b` "
                               f"for a paraphrase). Nothing was changed.", helps=("review", "lists them"))
        ref = f"{kind.upper()}-{tail.lower()}"
        if ref not in refs:
            refs.append(ref)
    if not refs:
        raise InvalidInput("Give the id of at least one correction.", helps=("review", "lists them"))
    return refs


def review(space: GuildSpace, raw_refs: list[str], *, approve: bool, by_id: int | None, by_name: str | None,
           reason: str = "") -> list[Correction | Pick]:
    """Approve or reject corrections and picks (paraphrases) by id, all or none; returns them as they were before.

    Refused (InvalidInput, nothing written): an unknown id, approving an approved one, rejecting a rejected
    or an approved one (it may already be in a trained model; a newer correction replaces it).
    """
    refs = parse_refs(raw_refs)
    reason = _text(reason, "reason", required=False)[:500]
    decision = APPROVED if approve else REJECTED

    def checked(tx: Tx, ref: str) -> Correction | Pick:
        record: Correction | Pick | None
        if ref.startswith("P-"):
            row = tx.one(f"{_PICKS} WHERE p.guild_id = ? AND p.ref = ?", (space.guild_id, ref))
            what = "paraphrase"
            record = None if row is None else _pick(row)
        else:
            row = tx.one(f"{_CORRECTIONS} WHERE c.guild_id = ? AND c.ref = ?", (space.guild_id, ref))
            what = "correction"
            record = None if row is None else _correction(row)
        if record is None:
            raise InvalidInput(f"There is no {what} `{ref}` in this server. Nothing was changed.",
                               helps=("review", "lists the pending ones"))
        title = what.capitalize()
        if approve and record.status == APPROVED:
            raise InvalidInput(f"{title} `{ref}` is already approved. Nothing was changed.")
        if not approve and record.status == REJECTED:
            raise InvalidInput(f"{title} `{ref}` is already rejected. Nothing was changed.")
        if not approve and record.status == APPROVED:
            raise InvalidInput(f"{title} `{ref}` was already approved and may be in a trained model. Nothing "
                               f"was changed.", helps=("correct", "with the right answer replaces it"))
        return record

    with space.db.tx() as tx:  # check and write in one transaction: two admins deciding at once
        chosen = [checked(tx, ref) for ref in refs]
        review_id = tx.scalar("INSERT INTO reviews (guild_id, decision, by_id, by_name, reason, created_at)"
                              " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                              (space.guild_id, decision, by_id, by_name, reason, utc_now()))
        for record in chosen:
            table = "picks" if isinstance(record, Pick) else "corrections"
            # Only if it is still as checked: on PostgreSQL another admin's decision may have committed since
            # the check (the read took no lock); then the check is made again on what is stored now and refuses.
            changed = tx.execute(f"UPDATE {table} SET status = ?, review_id = ? WHERE guild_id = ? AND ref = ?"
                                 " AND status = ?", (decision, review_id, space.guild_id, record.ref, record.status))
            if changed.rowcount != 1:
                checked(tx, record.ref)
                what = "Paraphrase" if isinstance(record, Pick) else "Correction"
                raise InvalidInput(f"{what} `{record.ref}` was just decided by someone else. Nothing was changed.")
    return chosen


# --- feedback and test mismatches -------------------------------------------------------------


def add_feedback(space: GuildSpace, *, text: str, author_id: int | None, author_name: str | None,
                 channel_id: int | None, reply_to: RepliedTo | None,
                 source_message_id: int | None = None) -> Feedback:
    """Store feedback (``reply_to``: the replied-to message, e.g. id/author/content); ref ``F-xxxxxx``.

    ``source_message_id``: the message the feedback was written in (provenance)."""
    record = Feedback(ref="", text=_text(text, "feedback", required=True), author_id=author_id,
                      author_name=author_name, channel_id=channel_id, source_message_id=source_message_id,
                      reply_to=reply_to, time=utc_now())
    with space.db.tx() as tx:
        ref = _insert_with_new_ref(
            tx, "F", "INSERT INTO feedback (guild_id, ref, text, author_id, author_name, channel_id,"
            " source_message_id, reply_to, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            lambda ref: (space.guild_id, ref, record.text, author_id, author_name, channel_id, source_message_id,
                         None if reply_to is None else json.dumps(reply_to, ensure_ascii=False), record.time))
    return replace(record, ref=ref)


def list_feedback(space: GuildSpace) -> list[Feedback]:
    """All stored feedback, oldest first."""
    with space.db.tx(write=False) as tx:
        rows = tx.all("SELECT ref, text, author_id, author_name, channel_id, source_message_id, reply_to, created_at"
                      " FROM feedback WHERE guild_id = ? ORDER BY id", (space.guild_id,))
    return [Feedback(ref, text, author_id, author_name, channel_id, source, None if reply is None else json.loads(reply),
                     time) for ref, text, author_id, author_name, channel_id, source, reply, time in rows]


def add_test_errors(space: GuildSpace, mismatches: list[TestError], *, author_id: int | None = None,
                    author_name: str | None = None) -> int:
    """Keep !test mismatches for the next training (``author_*``: who ran the test, for !forget); returns how
    many were stored."""
    now = utc_now()
    with space.db.tx() as tx:
        for m in mismatches:

            def row(ref: str, m: TestError = m) -> tuple[Any, ...]:
                return (space.guild_id, ref, m.kind, m.input, m.expected, m.got, m.line, m.model, now, author_id,
                        author_name)

            _insert_with_new_ref(tx, "T", "INSERT INTO test_errors (guild_id, ref, kind, input, expected, got, line,"
                                 " model, created_at, author_id, author_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 row)
    return len(mismatches)


def list_test_errors(space: GuildSpace) -> list[TestError]:
    """All stored !test mismatches, oldest first."""
    with space.db.tx(write=False) as tx:
        rows = tx.all("SELECT input, expected, got, kind, line, model, ref, created_at FROM test_errors"
                      " WHERE guild_id = ? ORDER BY id", (space.guild_id,))
    return [TestError(*r) for r in rows]


# --- reactions on the bot's answers, and the asks after a 👎 -----------------------------------
# Each person's latest 👍/👎 per answer stands (taken off: kept with added = false). A 👎 makes the bot ask
# for the right answer, once per person and answer; a reply to that ask is a correction.

_REACTION_KINDS = {"👍": UP, "👎": DOWN}
# Skin tones (U+1F3FB..U+1F3FF) and the emoji variation selector do not change what a thumb means.
_MODIFIERS = {chr(c) for c in range(0x1F3FB, 0x1F400)} | {"\ufe0f"}


def reaction_kind(emoji: str) -> str | None:
    """``up`` for 👍, ``down`` for 👎 (any skin tone), None for any other emoji."""
    return _REACTION_KINDS.get("".join(ch for ch in str(emoji) if ch not in _MODIFIERS))


def add_reaction(space: GuildSpace, *, message_id: int, channel_id: int | None, kind: str, added: bool,
                 author_id: int, author_name: str | None, model: str | None) -> bool:
    """Record a 👍/👎 put on (``added``) or taken off an answer. True when the bot should now ask this person
    for the right answer: a 👎 put on, and not asked before about this answer (decided in the same
    transaction, so two quick 👎 ask once)."""
    if kind not in (UP, DOWN):
        raise InvalidInput(f"`{kind}` is not a reaction kind.")
    with space.db.tx() as tx:
        tx.execute("INSERT INTO reactions (guild_id, message_id, author_id, kind, added, channel_id, author_name,"
                   " model, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                   " ON CONFLICT (guild_id, message_id, author_id, kind) DO UPDATE SET added = excluded.added,"
                   # Taking a thumb off may come with no name (the member is not cached): keep the one we have.
                   " author_name = CASE WHEN excluded.added THEN excluded.author_name"
                   " ELSE COALESCE(reactions.author_name, excluded.author_name) END,"
                   " created_at = excluded.created_at",
                   (space.guild_id, int(message_id), author_id, kind, bool(added), channel_id, author_name, model,
                    utc_now()))
        if not (added and kind == DOWN):
            return False
        asked = tx.one("SELECT 1 FROM asks WHERE guild_id = ? AND message_id = ? AND author_id = ?",
                       (space.guild_id, int(message_id), author_id))
        return asked is None


def reaction_counts(space: GuildSpace) -> dict[str, ReactionCounts]:
    """model -> the 👍 and 👎 standing now on its answers."""
    with space.db.tx(write=False) as tx:
        rows = tx.all("SELECT model, kind, COUNT(*) FROM reactions WHERE guild_id = ? AND added"
                      " GROUP BY model, kind", (space.guild_id,))
    counts: dict[str, ReactionCounts] = {}
    for model, kind, n in rows:
        per = counts.setdefault(str(model or "untrained"), ReactionCounts())
        if kind == UP:
            per.up += int(n)
        elif kind == DOWN:
            per.down += int(n)
    return counts


def add_ask(space: GuildSpace, *, ask_message_id: int, message_id: int, channel_id: int | None,
            author_id: int, author_name: str | None) -> None:
    """Remember that the bot asked ``author_id`` (who gave 👎) for the right answer to ``message_id``."""
    with space.db.tx() as tx:
        tx.execute("INSERT INTO asks (guild_id, ask_message_id, message_id, channel_id, author_id, author_name,"
                   " created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id, ask_message_id) DO NOTHING",
                   (space.guild_id, int(ask_message_id), int(message_id), channel_id, author_id, author_name,
                    utc_now()))


def find_ask(space: GuildSpace, ask_message_id: int) -> Ask | None:
    """The ask behind one of the bot's messages, or None."""
    with space.db.tx(write=False) as tx:
        row = tx.one("SELECT ask_message_id, message_id, author_id, channel_id, author_name, created_at FROM asks"
                     " WHERE guild_id = ? AND ask_message_id = ?", (space.guild_id, int(ask_message_id)))
    return None if row is None else Ask(*row)  # the columns in the fields' order


def was_asked(space: GuildSpace, message_id: int, author_id: int) -> bool:
    """Whether the bot already asked ``author_id`` for the right answer to ``message_id`` (asked once only)."""
    with space.db.tx(write=False) as tx:
        return tx.one("SELECT 1 FROM asks WHERE guild_id = ? AND message_id = ? AND author_id = ?",
                      (space.guild_id, int(message_id), author_id)) is not None
