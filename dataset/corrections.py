"""Durable per-guild logs: bot answers, corrections, feedback and !test mismatches.

All functions are sync and do a small fsynced append or a file read: the Model calls them in a
thread. Every record carries ``time`` (ISO 8601, UTC). Logs live in the guild's
corrections folder (see :class:`storage.GuildSpace`) and are JSON Lines written with
:func:`storage.append_record`, so a crash leaves every acknowledged record readable.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Any

from errors import InvalidInput
from storage import GuildSpace, append_record, lock_for, read_records, utc_now

log = logging.getLogger(__name__)

MAX_TEXT = 20_000  # characters kept per text field; Discord messages are far shorter


def new_ref(prefix: str) -> str:
    """A short reference id users can quote, e.g. ``C-7f3a2b``."""
    return f"{prefix}-{secrets.token_hex(3)}"


def _text(value: Any, what: str, *, required: bool) -> str:
    """A text field. What a user writes (``required``) is refused over MAX_TEXT; logged bot text is capped."""
    text = "" if value is None else str(value).strip()
    if required and not text:
        raise InvalidInput(f"The {what} is empty: write some text after the command.")
    if required and len(text) > MAX_TEXT:
        raise InvalidInput(f"The {what} is {len(text):,} characters long; the limit is {MAX_TEXT:,}. "
                           f"Nothing was saved: shorten it and send it again.")
    return text[:MAX_TEXT]


# --- bot answers --------------------------------------------------------------------------


class _AnswerIndex:
    """message_id -> byte offset of its record in one answers file, read incrementally.

    Only offsets are kept (not the records), so memory stays small however long the log grows;
    a lookup is one dict access plus one seek+readline.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offsets: dict[int, int] = {}
        self.read_upto = 0  # bytes of the file already indexed (always at a line boundary)
        # (channel id, author id) -> offset of the latest answer to that author there, and its prompt's id.
        self.last: dict[tuple[Any, Any], int] = {}
        self.last_prompt: dict[tuple[Any, Any], Any] = {}
        self.lock = threading.Lock()

    def refresh(self) -> None:
        """Index the complete lines appended since the last call (caller holds the lock)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < self.read_upto:  # file replaced or truncated: start again
                self.offsets.clear()
                self.last.clear()
                self.last_prompt.clear()
                self.read_upto = 0
            fh.seek(self.read_upto)
            offset = self.read_upto
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn or still being written: index it once it is complete
                try:
                    record = json.loads(raw)
                    message_id = record.get("message_id")
                except (ValueError, AttributeError):
                    record, message_id = {}, None  # damaged line: skipped, as read_records does
                if isinstance(message_id, int):
                    self.offsets[message_id] = offset
                    # The first message of an answer (a long one is several) is the one to correct.
                    key = (record.get("channel_id"), record.get("author_id"))
                    if record.get("prompt_message_id") != self.last_prompt.get(key):
                        self.last[key] = offset
                        self.last_prompt[key] = record.get("prompt_message_id")
                offset += len(raw)
            self.read_upto = offset

    def get(self, message_id: int) -> dict[str, Any] | None:
        with self.lock:
            if message_id not in self.offsets:
                self.refresh()
            return self._read(self.offsets.get(message_id))

    def latest(self, channel_id: int, author_id: int) -> dict[str, Any] | None:
        """The bot's latest answer to ``author_id`` in ``channel_id``, or None."""
        with self.lock:
            self.refresh()
            return self._read(self.last.get((channel_id, author_id)))

    def _read(self, offset: int | None) -> dict[str, Any] | None:
        """The record at ``offset`` (the caller holds the lock)."""
        if offset is None:
            return None
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            raw = fh.readline()
        try:
            record = json.loads(raw)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None


class AnswerIndexes:
    """One :class:`_AnswerIndex` per answers file, kept by the caller (the Model) for the bot's life."""

    def __init__(self) -> None:
        self._indexes: dict[str, _AnswerIndex] = {}
        self._guard = threading.Lock()

    def drop(self, path: Path) -> None:
        """Forget the index of a file that was rewritten (its offsets no longer hold)."""
        with self._guard:
            self._indexes.pop(str(path), None)

    def for_path(self, path: Path) -> _AnswerIndex:
        with self._guard:
            index = self._indexes.get(str(path))
            if index is None:
                index = self._indexes[str(path)] = _AnswerIndex(path)
            return index


def record_answer(
    space: GuildSpace,
    *,
    message_id: int,
    channel_id: int,
    prompt: str,
    answer: str,
    prompt_message_id: int | None,
    author_id: int | None,
    model: str | None,
    author_name: str | None = None,
) -> None:
    """Log one bot answer so ``!correct <message_id>`` can find its prompt later (sync).

    ``author_id``/``author_name``: who asked (the prompt is theirs), ``prompt_message_id`` their message.
    """
    append_record(
        space.answers_file,
        {
            "time": utc_now(),
            "message_id": int(message_id),
            "channel_id": int(channel_id),
            "prompt_message_id": prompt_message_id,
            "author_id": author_id,
            "author_name": author_name,
            "model": model,
            "prompt": _text(prompt, "prompt", required=False),
            "answer": _text(answer, "answer", required=False),
        },
    )


def find_answer(space: GuildSpace, message_id: int, indexes: AnswerIndexes | None = None) -> dict[str, Any] | None:
    """The logged answer for a bot message id, or None; O(1) after the first call with ``indexes`` (sync).

    ``message_id`` may be the text a user typed; anything but a number raises InvalidInput.
    """
    try:
        mid = int(str(message_id).strip())
    except ValueError:
        raise InvalidInput(
            f"`{str(message_id)[:40]}` is not a message id: copy the id of the bot's message."
        ) from None
    index = (indexes or AnswerIndexes()).for_path(space.answers_file)
    return index.get(mid)


def latest_answer(space: GuildSpace, channel_id: int, author_id: int,
                  indexes: AnswerIndexes | None = None) -> dict[str, Any] | None:
    """The bot's latest answer to ``author_id`` in ``channel_id`` (what ``!correct <text>`` corrects), or None."""
    return (indexes or AnswerIndexes()).for_path(space.answers_file).latest(channel_id, author_id)


# --- corrections, feedback, test errors --------------------------------------------------


def add_correction(
    space: GuildSpace,
    *,
    message_id: int | None,
    prompt: str,
    answer: str,
    correction: str,
    author_id: int | None,
    author_name: str | None,
    channel_id: int | None,
    source_message_id: int | None = None,
    approved: bool = True,
) -> dict[str, Any]:
    """Store a correction of a bot answer; returns the record with its ``ref`` (``C-xxxxxx``).

    ``approved=False`` puts it in the review queue (a member's correction while REVIEW_CORRECTIONS is on);
    ``source_message_id`` is the message the correction was written in (provenance).
    """
    record = {
        "ref": new_ref("C"),
        "time": utc_now(),
        "message_id": message_id,
        "channel_id": channel_id,
        "author_id": author_id,
        "author_name": author_name,
        "source_message_id": source_message_id,
        "prompt": _text(prompt, "prompt", required=False),
        "answer": _text(answer, "answer", required=False),
        "correction": _text(correction, "correction", required=True),
        "status": APPROVED if approved else PENDING,
    }
    append_record(space.corrections_file, record)
    return {**record, "approved": approved}


# --- the review queue ----------------------------------------------------------------------
# A correction is born "approved" (an admin's, or any while review is off) or "pending". Decisions are
# events appended to reviews.jsonl ({"refs": [...], "decision", "by_id", "by_name", "reason"}), one line
# per command so approving several ids is all-or-nothing; the latest decision per correction wins.
# Records written before the review queue existed carry no status and count as approved.

PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"


def _decisions(space: GuildSpace) -> dict[str, dict[str, Any]]:
    """ref -> the latest review event about it."""
    latest: dict[str, dict[str, Any]] = {}
    for event in read_records(space.reviews_file).records:
        refs = event.get("refs")
        if isinstance(refs, list) and event.get("decision") in (APPROVED, REJECTED):
            for ref in refs:
                latest[str(ref)] = event
    return latest


def list_corrections(space: GuildSpace) -> list[dict[str, Any]]:
    """All stored corrections, oldest first (damaged lines skipped and logged), each with its review state:
    ``status`` (pending/approved/rejected), ``approved`` (bool) and, once decided, ``review`` (the event)."""
    decisions = _decisions(space)
    out = []
    for record in read_records(space.corrections_file).records:
        record = dict(record)
        event = decisions.get(str(record.get("ref")))
        if event is not None:
            record["status"] = event["decision"]
            record["review"] = event
        elif record.get("status") not in (PENDING, APPROVED, REJECTED):
            record["status"] = APPROVED
        record["approved"] = record["status"] == APPROVED
        out.append(record)
    return out


def approved_corrections(space: GuildSpace) -> list[dict[str, Any]]:
    """The corrections that may reach training data and answers."""
    return [c for c in list_corrections(space) if c["approved"]]


def pending_corrections(space: GuildSpace) -> list[dict[str, Any]]:
    """Corrections waiting for an admin's decision, oldest first."""
    return [c for c in list_corrections(space) if c["status"] == PENDING]


def corrections_signature(space: GuildSpace) -> tuple[tuple[int, int], ...]:
    """(mtime_ns, size) of the corrections and reviews files: changes whenever what applies may change."""
    sig = []
    for path in (space.corrections_file, space.reviews_file):
        try:
            st = path.stat()
            sig.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            sig.append((0, -1))
    return tuple(sig)


def _parse_refs(raw: list[str]) -> list[str]:
    """Typed ids -> canonical refs (``c-7f3a2b``, ``C-7F3A2B`` and ``7f3a2b`` all mean ``C-7f3a2b``)."""
    refs: list[str] = []
    for word in raw:
        word = word.strip().strip("`,")
        if not word:
            continue
        tail = word[2:] if word[:2].lower() == "c-" else word
        if not re.fullmatch(r"[0-9a-fA-F]{6}", tail):
            raise InvalidInput(f"`{word[:40]}` is not a correction id (they look like `C-7f3a2b`; "
                               f"`!review` lists them). Nothing was changed.")
        ref = f"C-{tail.lower()}"
        if ref not in refs:
            refs.append(ref)
    if not refs:
        raise InvalidInput("Give the id of at least one correction (`!review` lists them).")
    return refs


def review(space: GuildSpace, raw_refs: list[str], *, approve: bool, by_id: int | None, by_name: str | None,
           reason: str = "") -> list[dict[str, Any]]:
    """Approve or reject corrections by id, all or none; returns the corrections as they were before.

    Refused (InvalidInput, nothing written): an unknown id, approving an approved one, rejecting a rejected
    or an approved one (it may already be in a trained model; a newer correction replaces it).
    """
    refs = _parse_refs(raw_refs)
    reason = _text(reason, "reason", required=False)[:500]
    # Check and write as one step (two admins deciding at once); not the file's own lock, which
    # append_record takes.
    with lock_for(space.corrections / "reviews.decide"):
        known = {str(c.get("ref")): c for c in list_corrections(space)}
        chosen = []
        for ref in refs:
            record = known.get(ref)
            if record is None:
                raise InvalidInput(f"There is no correction `{ref}` in this server (`!review` lists the "
                                   f"pending ones). Nothing was changed.")
            status = record["status"]
            if approve and status == APPROVED:
                raise InvalidInput(f"Correction `{ref}` is already approved. Nothing was changed.")
            if not approve and status == REJECTED:
                raise InvalidInput(f"Correction `{ref}` is already rejected. Nothing was changed.")
            if not approve and status == APPROVED:
                raise InvalidInput(f"Correction `{ref}` was already approved and may be in a trained model; "
                                   f"send a new `!correct` to replace it. Nothing was changed.")
            chosen.append(record)
        append_record(space.reviews_file, {
            "time": utc_now(), "refs": refs, "decision": APPROVED if approve else REJECTED,
            "by_id": by_id, "by_name": by_name, "reason": reason,
        })
    return chosen


def add_feedback(
    space: GuildSpace,
    *,
    text: str,
    author_id: int | None,
    author_name: str | None,
    channel_id: int | None,
    reply_to: dict[str, Any] | None,
    source_message_id: int | None = None,
) -> dict[str, Any]:
    """Store feedback (``reply_to``: the replied-to message, e.g. id/author/content); ref ``F-xxxxxx``.

    ``source_message_id``: the message the feedback was written in (provenance)."""
    record = {
        "ref": new_ref("F"),
        "time": utc_now(),
        "text": _text(text, "feedback", required=True),
        "author_id": author_id,
        "author_name": author_name,
        "channel_id": channel_id,
        "source_message_id": source_message_id,
        "reply_to": reply_to,
    }
    append_record(space.feedback_file, record)
    return record


def list_feedback(space: GuildSpace) -> list[dict[str, Any]]:
    """All stored feedback, oldest first."""
    return read_records(space.feedback_file).records


def add_test_errors(space: GuildSpace, mismatches: list[dict[str, Any]]) -> int:
    """Keep !test mismatches for the next training; returns how many were stored.

    Each mismatch is a dict; the compiler trains on those with ``input`` and ``expected``
    (and uses ``got``, the model's wrong answer, as a DPO non-preferred output when present).
    """
    stored = 0
    for item in mismatches:
        if not isinstance(item, dict):
            raise InvalidInput("Each test mismatch must be a mapping with input and expected.")
        record = {**item, "ref": new_ref("T"), "time": utc_now()}
        append_record(space.errors_file, record)
        stored += 1
    return stored


def list_test_errors(space: GuildSpace) -> list[dict[str, Any]]:
    """All stored !test mismatches, oldest first."""
    return read_records(space.errors_file).records
