"""Forget a person in one server: their corrections, picks on offers (paraphrases), offers made to them, unanswered
questions, feedback, reactions, logged questions and answers, uploads and the examples that came from them, removed durably and crash-safely (sync; call it from a thread).

How it stays crash-safe: the records (corrections, feedback, reactions, asks, logged answers, evaluation
cases) are deleted in one database transaction. The dataset files that hold their examples get their new
versions staged next to them first (``.<name>.forget-<token>``, fsynced); the same transaction writes a row of
``forget_journal`` listing every staged file and every file to delete: its commit is the one commit point.
The staged files then replace the originals, the deletions happen, and the journal row goes last.
:func:`recover` (run at start-up) finishes every journal row, and removes staged files that none names (a crash
before the commit: nothing changed). Dataset folders stay locked for the whole operation, so an example added
meanwhile cannot be lost by the rewrite.

Their words in others' records go too: an admin's correction of their question (it carries the question), and
evaluation cases and !test mismatches that copy their questions (``_derived``).

Telling the person who asked: a forget given a channel is journaled from its start (state ``started``), its row
updated in the commit transaction (``committed``, with its plan and what it removed), kept once the files are done
(``done``) until :func:`told`. After a crash :func:`recover` finishes committed rows and :func:`pending_notices`
lists what to tell, and where: finished (with the kept archives and exports), or cut short before anything was
removed.

What it does not touch: trained models (the current one keeps their data until the next training: the
caller says so) and archives made before (zips; the result lists them so an admin can delete them).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from errors import NotFound, TrainerError
from records.db import Database, Tx
from storage import GuildSpace, fsync_dir, lock_for, utc_now

log = logging.getLogger(__name__)

_STAGED = re.compile(r"^\..+\.forget-[0-9a-f]{8}$")
# Folders of the data space that hold no examples of a person (or, for archives and models, that are
# reported instead of rewritten; exports are copies made for an admin, listed like archives).
_NOT_DATA = ("archives", "exports", "models", "uploads")


@dataclass
class ForgetResult:
    counts: dict[str, int] = field(default_factory=dict)  # kind -> records/files removed
    archives: list[str] = field(default_factory=list)  # zips made before, shown relative to the data space
    journal_id: int | None = None  # its journal row, kept until ``told`` (when it was given a channel)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class ForgetPlan(TypedDict):
    """A forget's file changes (JSON in its journal row): staged files to put in place, files to delete."""

    replace: list[list[str]]  # [staged path, target]
    delete: list[str]


def _remove_rows(tx: Tx, guild_id: int, user_id: int, counts: dict[str, int], *, delete: bool) -> None:
    """The person's records and those derived from their words: counted into ``counts`` and, with ``delete``,
    deleted (the preview counts inside a transaction it rolls back, so both count the same way)."""
    derived: dict[str, int] = {}
    _derived(tx, guild_id, user_id, derived)
    for kind, table in _TABLES:
        n = int(tx.scalar(f"SELECT COUNT(*) FROM {table} WHERE guild_id = ? AND author_id = ?", (guild_id, user_id), 0))
        if n:
            if delete:
                tx.execute(f"DELETE FROM {table} WHERE guild_id = ? AND author_id = ?", (guild_id, user_id))
            counts[kind] = n
    counts.update(derived)


def _their_examples(user_id: int, uploads: set[str]) -> Callable[[Mapping[str, object]], bool]:
    """Which dataset lines are the person's; the uploads they came from are collected into ``uploads``."""

    def theirs(record: Mapping[str, object]) -> bool:
        if _is_theirs_example(record, user_id):
            origin = str(record.get("origin") or "")
            if "upload " in origin:
                uploads.add(origin.rsplit("upload ", 1)[1])
            return True
        return False

    return theirs


def _is_theirs_example(record: Mapping[str, object], user_id: int) -> bool:
    """Whether a line of a dataset file is an example ``user_id`` added (any JSON object: not all are our records)."""
    if record.get("added_by_id") == user_id:
        return True
    # Examples stored before added_by_id existed carry "name (id)".
    return str(record.get("added_by") or "").endswith(f"({user_id})")


def _rewrite_lines(path: Path, drop: Callable[[Mapping[str, object]], bool]) -> tuple[bytes, int]:
    """The file without the JSON objects ``drop`` picks, every other line kept as it is; (new bytes, dropped)."""
    out: list[bytes] = []
    dropped = 0
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                out.append(raw if raw.endswith(b"\n") else raw + b"\n")  # not ours to judge: kept as it is
                continue
            if not isinstance(record, dict):
                out.append(raw if raw.endswith(b"\n") else raw + b"\n")
                continue
            if drop(record):
                dropped += 1
            else:
                out.append(raw if raw.endswith(b"\n") else raw + b"\n")
    return b"".join(out), dropped


def _dataset_files(space: GuildSpace) -> Iterator[Path]:
    """Every JSON Lines file of the data space that may hold examples (not archives, models or uploads)."""
    if not space.data.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(space.data, followlinks=False):
        here = Path(dirpath)
        if here == space.data:
            dirnames[:] = [d for d in dirnames if d not in _NOT_DATA]
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.endswith(".jsonl") and not name.startswith("."):
                yield here / name


# (what the person is told, table): rows whose author_id is theirs.
_TABLES = (("corrections", "corrections"), ("feedback", "feedback"), ("logged questions and answers", "answers"),
           ("reactions", "reactions"), ("asks after their 👎", "asks"), ("evaluation cases", "eval_cases"),
           ("test mismatches", "test_errors"), ("picks on offers", "picks"), ("questions offered choices", "offers"),
           ("unanswered questions", "unanswered"))


def _same_question(text: str) -> str:
    """A question's wording for matching copies of it (case, spacing and punctuation aside)."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def _derived(tx: Tx, guild_id: int, user_id: int, counts: dict[str, int]) -> None:
    """Their words in others' records (before their own rows go): others' corrections of their questions (the
    correction carries the question), and copies of their questions in the evaluation set and !test mismatches
    (an admin testing with what they asked)."""
    n = tx.execute("DELETE FROM corrections WHERE guild_id = ? AND (author_id IS NULL OR author_id <> ?) AND "
                   "message_id IN (SELECT message_id FROM answers WHERE guild_id = ? AND author_id = ?)",
                   (guild_id, user_id, guild_id, user_id)).rowcount
    if n:
        counts["others' corrections of their questions"] = n
    asked = {_same_question(q) for q, in tx.all("SELECT prompt FROM answers WHERE guild_id = ? AND author_id = ?",
                                                (guild_id, user_id))} - {""}
    if not asked:
        return
    for what, table in (("evaluation cases with their questions", "eval_cases"),
                        ("test mismatches with their questions", "test_errors")):
        ids = [(rid,) for rid, text in tx.all(f"SELECT id, input FROM {table} WHERE guild_id = ? AND "
                                              f"(author_id IS NULL OR author_id <> ?)", (guild_id, user_id))
               if _same_question(text) in asked]
        if ids:
            tx.executemany(f"DELETE FROM {table} WHERE id = ?", ids)
            counts[what] = len(ids)


def forget(space: GuildSpace, user_id: int, *, channel_id: int | None = None, requester_id: int | None = None,
           user_name: str | None = None) -> ForgetResult:
    """Remove everything ``user_id`` gave in this server; NotFound when nothing is stored from them.

    With ``channel_id`` (where the person who asked, ``requester_id``, waits for the answer) the forget is
    journaled from its start, and its row is kept until :func:`told` says the answer went out: a forget the bot
    stopped in is then told there after a restart (:func:`pending_notices`), finished or not begun.
    """
    result = ForgetResult()
    staged: list[tuple[Path, bytes]] = []  # (target, new content)
    deletions: list[Path] = []
    journal: int | None = None
    if channel_id is not None:
        with space.db.tx() as tx:
            journal = int(tx.scalar("INSERT INTO forget_journal (guild_id, user_id, plan, created_at, state, "
                                    "channel_id, requester_id, result) VALUES (?, ?, '{}', ?, 'started', ?, ?, ?) "
                                    "RETURNING id", (space.guild_id, user_id, utc_now(), channel_id, requester_id,
                                                     json.dumps({"name": user_name}, ensure_ascii=False))))
    result.journal_id = journal
    try:
        _forget(space, user_id, result, staged, deletions, journal, user_name)
    except BaseException:
        if journal is not None:  # it failed and says so (or found nothing): nobody needs telling after a restart
            with space.db.tx() as tx:
                tx.execute("DELETE FROM forget_journal WHERE id = ? AND state = 'started'", (journal,))
        raise
    log.info("guild %s: forgot user %s: %s", space.guild_id, user_id, result.counts)
    return result


def _forget(space: GuildSpace, user_id: int, result: ForgetResult, staged: list[tuple[Path, bytes]],
            deletions: list[Path], journal: int | None, user_name: str | None) -> None:
    with ExitStack() as stack:
        # Dataset folders stay locked until the swap is done: nothing added meanwhile is lost.
        files = sorted(_dataset_files(space))
        for folder in sorted({f.parent for f in files}):
            stack.enter_context(lock_for(folder))
        uploads: set[str] = set()
        examples = 0
        for path in files:
            data, dropped = _rewrite_lines(path, _their_examples(user_id, uploads))
            if dropped:
                examples += dropped
                if data.strip():
                    staged.append((path, data))
                else:
                    deletions.append(path)
        for name in sorted(uploads):
            try:
                target = space.resolve(name)
            except TrainerError:  # a damaged origin: nothing to delete by it
                continue
            if target.is_file() and space.uploads.resolve() in target.parents:
                deletions.append(target)
        result.archives = kept_copies(space)
        pairs = _stage(staged)
        try:
            with space.db.tx() as tx:
                _remove_rows(tx, space.guild_id, user_id, result.counts, delete=True)
                _redact_quotes(tx, space.guild_id, user_id)
                if examples:
                    result.counts["examples"] = examples
                uploaded = sum(1 for p in deletions if p.parent == space.uploads.resolve())
                if uploaded:
                    result.counts["uploads"] = uploaded
                if not result.counts:
                    raise NotFound("nothing stored")
                plan: ForgetPlan = {"replace": [[str(a), str(b)] for a, b in pairs],
                                    "delete": [str(p) for p in deletions]}
                said = json.dumps({"counts": result.counts, "kept": result.archives, "name": user_name},
                                  ensure_ascii=False)
                if journal is not None:
                    tx.execute("UPDATE forget_journal SET plan = ?, state = 'committed', result = ? WHERE id = ?",
                               (json.dumps(plan), said, journal))
                elif pairs or deletions:
                    journal = tx.scalar("INSERT INTO forget_journal (guild_id, user_id, plan, created_at, result) "
                                        "VALUES (?, ?, ?, ?, ?) RETURNING id",
                                        (space.guild_id, user_id, json.dumps(plan), utc_now(), said))
        except BaseException:
            for tmp, _ in pairs:  # not committed: nothing changed
                tmp.unlink(missing_ok=True)
            raise
        if journal is not None:
            _apply(space.db, int(journal))
    space.db.checkpoint()


def kept_copies(space: GuildSpace) -> list[str]:
    """Archives (zips) and !export copies made before: a forget keeps their contents and lists them."""
    kept = sorted(space.relative(p) for p in space.archives.glob("*.zip")) if space.archives.is_dir() else []
    exports = space.data / "exports"
    if exports.is_dir():
        kept += sorted(space.relative(p) for p in exports.iterdir() if p.is_dir())
    return kept


def people(space: GuildSpace, typed: str = "", limit: int = 25) -> list[tuple[int, str]]:
    """(id, name) of people whose questions, corrections or feedback this server keeps (recent askers first),
    whose name contains ``typed``: whom there is something to forget (a choice list for admins)."""
    names: dict[int, str] = {}
    with space.db.tx(write=False) as tx:
        for table in ("answers", "corrections", "feedback"):
            for author_id, name in tx.all(f"SELECT author_id, author_name FROM {table} WHERE guild_id = ? AND "
                                          f"author_id IS NOT NULL ORDER BY id DESC LIMIT 1000", (space.guild_id,)):
                if not names.get(int(author_id)):  # a name from any table: logged answers may have none
                    names[int(author_id)] = str(name or "")
    typed = typed.lower().lstrip("@")
    shown = [(i, name or f"user {i}") for i, name in names.items()]
    return [(i, name) for i, name in shown if typed in name.lower()][:limit]


class _Rollback(Exception):
    """Undoes a preview's transaction."""


def preview(space: GuildSpace, user_id: int) -> ForgetResult:
    """What :func:`forget` would remove now, counted by the same code, changing nothing (an empty result: nothing
    is stored from them). For the confirm dialog before it; what is added meanwhile is forgotten too."""
    result = ForgetResult()
    uploads: set[str] = set()
    examples = 0
    for path in sorted(_dataset_files(space)):
        with lock_for(path.parent):  # not while a forget or an upload rewrites the file
            examples += _rewrite_lines(path, _their_examples(user_id, uploads))[1]
    try:
        with space.db.tx() as tx:  # forget's own deletions and counts, then rolled back
            _remove_rows(tx, space.guild_id, user_id, result.counts, delete=False)
            raise _Rollback
    except _Rollback:
        pass
    if examples:
        result.counts["examples"] = examples
    n_uploads = 0
    for name in uploads:
        try:
            target = space.resolve(name)
        except TrainerError:
            continue
        n_uploads += target.is_file() and space.uploads.resolve() in target.parents
    if n_uploads:
        result.counts["uploads"] = n_uploads
    return result


def _redact_quotes(tx: Tx, guild_id: int, user_id: int) -> None:
    """Someone else's feedback quoting their message: the quote goes, the feedback stays."""
    for fid, raw in tx.all("SELECT id, reply_to FROM feedback WHERE guild_id = ? AND reply_to IS NOT NULL",
                           (guild_id,)):
        reply = json.loads(raw)
        if isinstance(reply, dict) and reply.get("author_id") == user_id and reply.get("content"):
            tx.execute("UPDATE feedback SET reply_to = ? WHERE id = ?",
                       (json.dumps({**reply, "content": None, "redacted": True}, ensure_ascii=False), fid))


def _stage(staged: list[tuple[Path, bytes]]) -> list[tuple[Path, Path]]:
    """Write each new file version beside its target, fsynced; (staged path, target) pairs."""
    token = secrets.token_hex(4)
    pairs: list[tuple[Path, Path]] = []
    try:
        for target, data in staged:
            tmp = target.with_name(f".{target.name}.forget-{token}")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            pairs.append((tmp, target))
    except BaseException:
        for tmp, _ in pairs:
            tmp.unlink(missing_ok=True)
        raise
    return pairs


def carry_out(plan: ForgetPlan) -> None:
    """Put the staged files in place and delete the files a forget's plan names (idempotent)."""
    for tmp, target in plan.get("replace", []):
        if Path(tmp).exists():
            os.replace(tmp, target)
            fsync_dir(Path(target).parent)
    for path in plan.get("delete", []):
        Path(path).unlink(missing_ok=True)


def _apply(db: Database, journal_id: int) -> None:
    """Carry out a committed journal row (idempotent: a crash mid-way runs it again at start-up). A row with a
    channel stays, done, until the person who asked has been told (:func:`told`)."""
    with db.tx(write=False) as tx:
        row = tx.one("SELECT plan, channel_id FROM forget_journal WHERE id = ?", (journal_id,))
    if row is None:
        return
    carry_out(json.loads(row[0]))
    with db.tx() as tx:
        if row[1] is None:
            tx.execute("DELETE FROM forget_journal WHERE id = ?", (journal_id,))
        else:
            tx.execute("UPDATE forget_journal SET plan = '{}', state = 'done' WHERE id = ?", (journal_id,))


def recover(db: Database, data_dir: Path, corrections_dir: Path) -> list[str]:
    """At start-up: finish every committed forget, remove staged files no journal names; what was done.

    What to tell the people who asked is then :func:`pending_notices`."""
    done: list[str] = []
    with db.tx(write=False) as tx:
        rows = tx.all("SELECT id, guild_id, plan, state FROM forget_journal ORDER BY id")
    named: set[str] = set()
    for journal_id, guild_id, plan, state in rows:
        if state == "started":
            done.append(f"a forget in server {guild_id} was cut short before anything was removed")
            continue
        if state == "done":
            continue
        try:
            _apply(db, int(journal_id))
            done.append(f"finished forgetting a person in server {guild_id}")
        except (OSError, ValueError) as exc:
            named.update(tmp for tmp, _ in json.loads(plan).get("replace", []))
            log.warning("could not finish forget journal %s of server %s: %s", journal_id, guild_id, exc)
    for root in (data_dir, corrections_dir):
        if not root.is_dir():
            continue
        for dirpath, _, filenames in os.walk(root, followlinks=False):
            for name in filenames:
                if _STAGED.match(name) and str(Path(dirpath, name)) not in named:
                    Path(dirpath, name).unlink(missing_ok=True)
                    done.append(f"rolled back an unfinished forget ({name})")
    return done


@dataclass(frozen=True)
class ForgetNotice:
    """A forget the bot stopped in (its answer never went out): what to tell the person who asked, where."""

    journal_id: int
    guild_id: int
    channel_id: int
    requester_id: int | None
    user_id: int
    user_name: str | None  # as the person who asked named them
    finished: bool  # False: it stopped before anything was removed (nothing was forgotten)
    counts: dict[str, int]
    kept: list[str]  # archives and exports made before, which keep their contents


def pending_notices(db: Database) -> list[ForgetNotice]:
    """After :func:`recover`: every forget whose person was not told how it ended, oldest first."""
    with db.tx(write=False) as tx:
        rows = tx.all("SELECT id, guild_id, channel_id, requester_id, user_id, state, result FROM forget_journal "
                      "WHERE channel_id IS NOT NULL AND state IN ('started', 'done') ORDER BY id")
    notices = []
    for journal_id, guild_id, channel_id, requester_id, user_id, state, result in rows:
        said = json.loads(result) if result else {}
        notices.append(ForgetNotice(int(journal_id), int(guild_id), int(channel_id),
                                    None if requester_id is None else int(requester_id), int(user_id),
                                    said.get("name"), state == "done", dict(said.get("counts") or {}), list(said.get("kept") or [])))
    return notices


def told(db: Database, journal_id: int) -> None:
    """The person who asked has been told how the forget ended: its journal row goes."""
    with db.tx() as tx:
        tx.execute("DELETE FROM forget_journal WHERE id = ? AND state IN ('started', 'done')", (journal_id,))
