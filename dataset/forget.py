"""Forget a person in one server: their corrections, feedback, reactions, logged questions and answers, uploads and the
examples that came from them, removed durably and crash-safely (sync; call it from a thread).

How it stays crash-safe: every file that changes gets its new version staged next to it
(``.<name>.forget-<token>``, fsynced); then one journal (``CORRECTIONS_DIR/<guild>/forget-journal.json``,
written atomically) lists every staged file and every file to delete: that write is the commit point.
The staged files then replace the originals and the deletions happen; the journal goes last.
:func:`recover` (run at start-up) finishes a committed journal, or removes staged files that no journal
names (a crash before the commit: nothing changed). Logs are locked for the whole operation, so a record
appended meanwhile cannot be lost by the rewrite.

What it does not touch: trained models (the current one keeps their data until the next training: the
caller says so) and archives made before (zips; the result lists them so an admin can delete them).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from errors import NotFound, TrainerError
from storage import GuildSpace, atomic_write_json, fsync_dir, lock_for

log = logging.getLogger(__name__)

JOURNAL = "forget-journal.json"
_STAGED = re.compile(r"^\..+\.forget-[0-9a-f]{8}$")
# Folders of the data space that hold no examples of a person (or, for archives and models, that are
# reported instead of rewritten; exports are copies made for an admin, listed like archives).
_NOT_DATA = ("archives", "exports", "models", "uploads")


@dataclass
class ForgetResult:
    counts: dict[str, int] = field(default_factory=dict)  # kind -> records/files removed
    archives: list[str] = field(default_factory=list)  # zips made before, shown relative to the data space

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _is_theirs_example(record: dict[str, Any], user_id: int) -> bool:
    if record.get("added_by_id") == user_id:
        return True
    # Examples stored before added_by_id existed carry "name (id)".
    return str(record.get("added_by") or "").endswith(f"({user_id})")


def _rewrite_lines(path: Path, keep: Callable[[dict[str, Any]], dict[str, Any] | None]) -> tuple[bytes, int]:
    """The file without the records ``keep`` drops (returns None) and with those it edits; (new bytes, dropped)."""
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
            kept = keep(record)
            if kept is None:
                dropped += 1
            elif kept is record:
                out.append(raw if raw.endswith(b"\n") else raw + b"\n")
            else:
                out.append((json.dumps(kept, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
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
            if name.endswith(".jsonl") and not name.startswith(".") and here / name != space.jobs_file:
                yield here / name


def forget(space: GuildSpace, user_id: int) -> ForgetResult:
    """Remove everything ``user_id`` gave in this server; NotFound when nothing is stored from them."""
    result = ForgetResult()
    staged: list[tuple[Path, bytes]] = []  # (target, new content)
    deletions: list[Path] = []

    def mine(record: dict[str, Any]) -> dict[str, Any] | None:
        return None if record.get("author_id") == user_id else record

    def feedback(record: dict[str, Any]) -> dict[str, Any] | None:
        if record.get("author_id") == user_id:
            return None
        reply = record.get("reply_to")
        if isinstance(reply, dict) and reply.get("author_id") == user_id and reply.get("content"):
            # Someone else's feedback quoting their message: the quote goes, the feedback stays.
            return {**record, "reply_to": {**reply, "content": None, "redacted": True}}
        return record

    logs = [
        ("corrections", space.corrections_file, mine),
        ("feedback", space.feedback_file, feedback),
        ("logged questions and answers", space.answers_file, mine),
        ("reactions", space.reactions_file, mine),
        ("asks after their 👎", space.asks_file, mine),
        ("evaluation cases", space.eval_set_file, mine),
    ]
    with ExitStack() as stack:
        # Logs and dataset folders stay locked until the swap is done: nothing appended meanwhile is lost.
        for _, path, _ in logs:
            stack.enter_context(lock_for(path))
        files = sorted(_dataset_files(space))
        for folder in sorted({f.parent for f in files}):
            stack.enter_context(lock_for(folder))
        for kind, path, keep in logs:
            if path.is_file():
                data, dropped = _rewrite_lines(path, keep)
                if dropped or data != path.read_bytes():
                    staged.append((path, data))
                if dropped:
                    result.counts[kind] = dropped
        uploads: set[str] = set()
        examples = 0
        for path in files:

            def keep_example(record: dict[str, Any]) -> dict[str, Any] | None:
                if _is_theirs_example(record, user_id):
                    origin = str(record.get("origin") or "")
                    if "upload " in origin:
                        uploads.add(origin.rsplit("upload ", 1)[1])
                    return None
                return record

            data, dropped = _rewrite_lines(path, keep_example)
            if dropped:
                examples += dropped
                if data.strip():
                    staged.append((path, data))
                else:
                    deletions.append(path)
        if examples:
            result.counts["examples"] = examples
        for name in sorted(uploads):
            try:
                target = space.resolve(name)
            except TrainerError:  # a damaged origin: nothing to delete by it
                continue
            if target.is_file() and space.uploads.resolve() in target.parents:
                deletions.append(target)
        if any(p.parent == space.uploads.resolve() for p in deletions):
            result.counts["uploads"] = sum(1 for p in deletions if p.parent == space.uploads.resolve())
        if not staged and not deletions:
            raise NotFound("nothing stored")
        _commit(space, user_id, staged, deletions)
    if space.archives.is_dir():
        result.archives = sorted(space.relative(p) for p in space.archives.glob("*.zip"))
    exports = space.data / "exports"
    if exports.is_dir():  # !export data copies: made before, kept like archives and listed
        result.archives += sorted(space.relative(p) for p in exports.iterdir() if p.is_dir())
    log.info("guild %s: forgot user %s: %s", space.guild_id, user_id, result.counts)
    return result


def _commit(space: GuildSpace, user_id: int, staged: list[tuple[Path, bytes]], deletions: list[Path]) -> None:
    """Stage, journal (the commit point), apply, clear the journal."""
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
    journal = space.corrections / JOURNAL
    atomic_write_json(journal, {"user_id": user_id, "replace": [[str(a), str(b)] for a, b in pairs],
                                "delete": [str(p) for p in deletions]})
    _apply(journal)


def _apply(journal: Path) -> None:
    """Carry out a committed journal (idempotent: a crash mid-way runs it again at start-up)."""
    plan = json.loads(journal.read_text(encoding="utf-8"))
    for tmp, target in plan.get("replace", []):
        if Path(tmp).exists():
            os.replace(tmp, target)
            fsync_dir(Path(target).parent)
    for path in plan.get("delete", []):
        Path(path).unlink(missing_ok=True)
    journal.unlink()
    fsync_dir(journal.parent)


def recover(data_dir: Path, corrections_dir: Path) -> list[str]:
    """At start-up: finish every committed forget, remove staged files no journal names; what was done."""
    done: list[str] = []
    if corrections_dir.is_dir():
        for journal in sorted(corrections_dir.glob(f"*/{JOURNAL}")):
            try:
                _apply(journal)
                done.append(f"finished forgetting a person in server {journal.parent.name}")
            except (OSError, ValueError) as exc:
                log.warning("could not finish %s: %s", journal, exc)
    for root in (data_dir, corrections_dir):
        if not root.is_dir():
            continue
        for dirpath, _, filenames in os.walk(root, followlinks=False):
            for name in filenames:
                if _STAGED.match(name):
                    Path(dirpath, name).unlink(missing_ok=True)
                    done.append(f"rolled back an unfinished forget ({name})")
    return done
