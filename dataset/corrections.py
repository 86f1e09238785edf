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
import secrets
import threading
from pathlib import Path
from typing import Any

from errors import InvalidInput
from storage import GuildSpace, append_record, read_records, utc_now

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
) -> None:
    """Log one bot answer so ``!correct <message_id>`` can find its prompt later (sync)."""
    append_record(
        space.answers_file,
        {
            "time": utc_now(),
            "message_id": int(message_id),
            "channel_id": int(channel_id),
            "prompt_message_id": prompt_message_id,
            "author_id": author_id,
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
) -> dict[str, Any]:
    """Store a correction of a bot answer; returns the record with its ``ref`` (``C-xxxxxx``)."""
    record = {
        "ref": new_ref("C"),
        "time": utc_now(),
        "message_id": message_id,
        "channel_id": channel_id,
        "author_id": author_id,
        "author_name": author_name,
        "prompt": _text(prompt, "prompt", required=False),
        "answer": _text(answer, "answer", required=False),
        "correction": _text(correction, "correction", required=True),
    }
    append_record(space.corrections_file, record)
    return record


def list_corrections(space: GuildSpace) -> list[dict[str, Any]]:
    """All stored corrections, oldest first (damaged lines skipped and logged)."""
    return read_records(space.corrections_file).records


def add_feedback(
    space: GuildSpace,
    *,
    text: str,
    author_id: int | None,
    author_name: str | None,
    channel_id: int | None,
    reply_to: dict[str, Any] | None,
) -> dict[str, Any]:
    """Store feedback (``reply_to``: the replied-to message, e.g. id/author/content); ref ``F-xxxxxx``."""
    record = {
        "ref": new_ref("F"),
        "time": utc_now(),
        "text": _text(text, "feedback", required=True),
        "author_id": author_id,
        "author_name": author_name,
        "channel_id": channel_id,
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
