"""The one-time import of a data folder written before the database (JSON Lines logs, state.json, budget.json).

At start, every server folder still holding such files is imported into the database in one transaction per
server: answers, corrections and review decisions, feedback, test mismatches, reactions, asks, the evaluation
set, jobs with their losses, the current model and the other settings of state.json, today's budget. Then each
file is renamed ``.<name>.imported`` (hidden, so nothing reads it by mistake, and kept). ``legacy_imports``
records what was imported, and every insert is keyed on the record's own id, so an import cut short by a
crash simply runs again. A forget that an old version left half done (its journal) is finished first.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from records.db import Database, Tx
from storage import fsync_dir, read_json, read_records, utc_now

log = logging.getLogger(__name__)

# File -> folder it lives in ("c": the corrections folder, "d": the data folder), in import order.
FILES = (
    ("answers.jsonl", "c"), ("corrections.jsonl", "c"), ("reviews.jsonl", "c"), ("feedback.jsonl", "c"),
    ("test_errors.jsonl", "c"), ("reactions.jsonl", "c"), ("asks.jsonl", "c"), ("eval_set.jsonl", "c"),
    ("jobs.jsonl", "d"), ("state.json", "d"), ("budget.json", "d"),
)
OLD_JOURNAL = "forget-journal.json"


@dataclass
class Imported:
    guild_id: int
    rows: dict[str, int] = field(default_factory=dict)  # file name -> records imported


def _int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _lines(path: Path) -> list[dict[str, Any]]:
    return read_records(path).records


def _answers(tx: Tx, gid: int, path: Path) -> int:
    rows = []
    last: dict[tuple[Any, Any], tuple[Any, int]] = {}  # (channel, author) -> (prompt message, part)
    for r in _lines(path):
        mid = _int(r.get("message_id"))
        if mid is None:
            continue
        key = (r.get("channel_id"), r.get("author_id"))
        prev = last.get(key)
        # The old log marked a long answer's messages by their shared prompt message, in order.
        part = prev[1] + 1 if prev is not None and prev[0] == r.get("prompt_message_id") else 0
        last[key] = (r.get("prompt_message_id"), part)
        rows.append((gid, mid, part, _int(r.get("channel_id")), _int(r.get("prompt_message_id")),
                     _int(r.get("author_id")), r.get("author_name"), r.get("model"), _str(r.get("prompt")),
                     _str(r.get("answer")), _str(r.get("time")) or utc_now()))
    tx.executemany("INSERT INTO answers (guild_id, message_id, part, channel_id, prompt_message_id, author_id, "
                   "author_name, model, prompt, answer, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (guild_id, message_id) DO NOTHING", rows)
    return len(rows)


def _corrections(tx: Tx, gid: int, path: Path) -> int:
    rows = []
    for r in _lines(path):
        if not r.get("ref") or not _str(r.get("correction")).strip():
            continue
        status = r.get("status") if r.get("status") in ("pending", "approved", "rejected") else "approved"
        rows.append((gid, str(r["ref"]), _int(r.get("message_id")), _int(r.get("channel_id")),
                     _int(r.get("author_id")), r.get("author_name"), _int(r.get("source_message_id")),
                     _str(r.get("prompt")), _str(r.get("answer")), _str(r.get("correction")), status,
                     _str(r.get("time")) or utc_now()))
    tx.executemany("INSERT INTO corrections (guild_id, ref, message_id, channel_id, author_id, author_name, "
                   "source_message_id, prompt, answer, correction, status, created_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id, ref) DO NOTHING", rows)
    return len(rows)


def _reviews(tx: Tx, gid: int, path: Path) -> int:
    n = 0
    for r in _lines(path):  # in order: the latest decision about a correction wins
        refs = r.get("refs")
        if r.get("decision") not in ("approved", "rejected") or not isinstance(refs, list):
            continue
        review_id = tx.scalar("INSERT INTO reviews (guild_id, decision, by_id, by_name, reason, created_at) "
                              "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                              (gid, r["decision"], _int(r.get("by_id")), r.get("by_name"), _str(r.get("reason")),
                               _str(r.get("time")) or utc_now()))
        tx.executemany("UPDATE corrections SET status = ?, review_id = ? WHERE guild_id = ? AND ref = ?",
                       [(r["decision"], review_id, gid, str(ref)) for ref in refs])
        n += 1
    return n


def _feedback(tx: Tx, gid: int, path: Path) -> int:
    rows = [(gid, str(r["ref"]), _str(r.get("text")), _int(r.get("author_id")), r.get("author_name"),
             _int(r.get("channel_id")), _int(r.get("source_message_id")),
             None if r.get("reply_to") is None else json.dumps(r["reply_to"], ensure_ascii=False),
             _str(r.get("time")) or utc_now())
            for r in _lines(path) if r.get("ref")]
    tx.executemany("INSERT INTO feedback (guild_id, ref, text, author_id, author_name, channel_id, "
                   "source_message_id, reply_to, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (guild_id, ref) DO NOTHING", rows)
    return len(rows)


def _test_errors(tx: Tx, gid: int, path: Path) -> int:
    rows = []
    for i, r in enumerate(_lines(path)):
        got = r.get("got", r.get("actual", r.get("output")))
        rows.append((gid, str(r.get("ref") or f"T-legacy{i}"), str(r.get("kind") or "answer"), _str(r.get("input")),
                     _str(r.get("expected")), None if got is None else str(got), _int(r.get("line")), r.get("model"),
                     _str(r.get("time")) or utc_now()))
    tx.executemany("INSERT INTO test_errors (guild_id, ref, kind, input, expected, got, line, model, created_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id, ref) DO NOTHING", rows)
    return len(rows)


def _reactions(tx: Tx, gid: int, path: Path) -> int:
    latest: dict[tuple[int, int, str], dict[str, Any]] = {}
    for r in _lines(path):  # each person's latest event per answer and kind stands
        mid, uid = _int(r.get("message_id")), _int(r.get("author_id"))
        if mid is not None and uid is not None and r.get("kind") in ("up", "down"):
            latest[(mid, uid, str(r["kind"]))] = r
    tx.executemany("INSERT INTO reactions (guild_id, message_id, author_id, kind, added, channel_id, author_name, "
                   "model, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (guild_id, message_id, author_id, kind) DO NOTHING",
                   [(gid, mid, uid, kind, bool(r.get("added")), _int(r.get("channel_id")), r.get("author_name"),
                     r.get("model"), _str(r.get("time")) or utc_now()) for (mid, uid, kind), r in latest.items()])
    return len(latest)


def _asks(tx: Tx, gid: int, path: Path) -> int:
    rows = [(gid, _int(r.get("ask_message_id")), _int(r.get("message_id")), _int(r.get("channel_id")),
             _int(r.get("author_id")), r.get("author_name"), _str(r.get("time")) or utc_now())
            for r in _lines(path)
            if None not in (_int(r.get("ask_message_id")), _int(r.get("message_id")), _int(r.get("author_id")))]
    tx.executemany("INSERT INTO asks (guild_id, ask_message_id, message_id, channel_id, author_id, author_name, "
                   "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id, ask_message_id) DO NOTHING", rows)
    return len(rows)


def _eval_set(tx: Tx, gid: int, path: Path) -> int:
    from training.evaluation import normalize

    kept: dict[str, dict[str, Any]] = {}
    for r in _lines(path):
        if isinstance(r.get("input"), str) and isinstance(r.get("expected"), str):
            kind = "label" if r.get("kind") == "label" else "answer"
            key = f"{kind}:{normalize(r['input'])}"
            kept.pop(key, None)
            kept[key] = {**r, "kind": kind}
    tx.executemany("INSERT INTO eval_cases (guild_id, key, kind, input, expected, author_id, author_name, "
                   "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id, key) DO NOTHING",
                   [(gid, key, r["kind"], r["input"], r["expected"], _int(r.get("author_id")), r.get("author_name"),
                     _str(r.get("time")) or utc_now()) for key, r in kept.items()])
    return len(kept)


def _jobs(tx: Tx, gid: int, path: Path) -> int:
    from training.jobs import from_dict, upsert

    latest: dict[str, dict[str, Any]] = {}
    for r in _lines(path):
        if isinstance(r.get("id"), str) and r["id"]:
            latest[r["id"]] = r
    for record in latest.values():
        losses = [(int(s), float(v)) for s, v in record.pop("losses", None) or []]
        job = from_dict({"backend": "local", "status": "failed", **record})
        upsert(tx, gid, job, losses, keep_existing=True)
    return len(latest)


def _state(tx: Tx, gid: int, path: Path) -> int:
    try:
        state = read_json(path, {})
    except (ValueError, UnicodeDecodeError):
        log.warning("%s is damaged; its settings were not imported", path)
        return 0
    if not isinstance(state, dict):
        return 0
    n = 0
    models = state.pop("model", None)
    for backend, entry in (models or {}).items() if isinstance(models, dict) else ():
        if isinstance(entry, dict):
            history = [str(h) for h in entry.get("history") or [] if h]
            tx.execute("INSERT INTO current_models (guild_id, backend, current, history) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (guild_id, backend) DO NOTHING",
                       (gid, str(backend), entry.get("current"), json.dumps(history)))
            n += 1
    for key, value in state.items():
        tx.execute("INSERT INTO guild_state (guild_id, key, value) VALUES (?, ?, ?) "
                   "ON CONFLICT (guild_id, key) DO NOTHING",
                   (gid, str(key), json.dumps(value, ensure_ascii=False, sort_keys=True)))
        n += 1
    return n


def _budget(tx: Tx, gid: int, path: Path) -> int:
    try:
        stored = read_json(path, {})
    except (ValueError, UnicodeDecodeError):
        return 0  # today's counts start again: a few uncounted calls cost less than a refused start
    if not isinstance(stored, dict) or not isinstance(stored.get("users"), dict):
        return 0
    rows = []
    for user, counts in stored["users"].items():
        uid = _int(user)
        if uid is not None and isinstance(counts, dict):
            rows.append((gid, str(stored.get("day")), uid,
                         *(int(counts.get(k) or 0) for k in ("chat", "transcription", "speech"))))
    tx.executemany("INSERT INTO budget (guild_id, day, user_id, chat, transcription, speech) "
                   "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id, day, user_id) DO NOTHING", rows)
    return len(rows)


IMPORTERS: dict[str, Callable[[Tx, int, Path], int]] = {
    "answers.jsonl": _answers, "corrections.jsonl": _corrections, "reviews.jsonl": _reviews,
    "feedback.jsonl": _feedback, "test_errors.jsonl": _test_errors, "reactions.jsonl": _reactions,
    "asks.jsonl": _asks, "eval_set.jsonl": _eval_set, "jobs.jsonl": _jobs, "state.json": _state,
    "budget.json": _budget,
}


def _guild_folders(data_dir: Path, corrections_dir: Path) -> Iterator[int]:
    ids: set[int] = set()
    for root in (data_dir, corrections_dir):
        if root.is_dir():
            ids.update(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)
    yield from sorted(ids)


def _finish_old_forget(folder: Path) -> bool:
    """An old version's forget journal, committed but not carried out: finish it (as that version would)."""
    journal = folder / OLD_JOURNAL
    if not journal.is_file():
        return False
    from dataset.forget import carry_out

    carry_out(json.loads(journal.read_text(encoding="utf-8")))
    journal.unlink()
    fsync_dir(folder)
    return True


def import_legacy(db: Database, data_dir: Path, corrections_dir: Path) -> list[Imported]:
    """Import every server folder's legacy files not imported yet; what was imported, per server."""
    done: list[Imported] = []
    for gid in _guild_folders(data_dir, corrections_dir):
        folders = {"c": corrections_dir / str(gid), "d": data_dir / str(gid)}
        if _finish_old_forget(folders["c"]):
            log.warning("finished forgetting a person in server %s (an older version stopped mid-way)", gid)
        present = [(name, folders[where] / name) for name, where in FILES if (folders[where] / name).is_file()]
        if not present:
            continue
        result = Imported(gid)
        with db.tx() as tx:
            for name, path in present:
                if tx.one("SELECT 1 FROM legacy_imports WHERE guild_id = ? AND name = ?", (gid, name)):
                    continue  # imported before a crash cut the renames short
                rows = IMPORTERS[name](tx, gid, path)
                tx.execute("INSERT INTO legacy_imports (guild_id, name, rows, imported_at) VALUES (?, ?, ?, ?)",
                           (gid, name, rows, utc_now()))
                result.rows[name] = rows
        for _, path in present:  # after the commit: kept, hidden, never read again
            os.replace(path, path.with_name(f".{path.name}.imported"))
            fsync_dir(path.parent)
        if result.rows:
            log.info("server %s: imported the records of an older version into %s: %s", gid, db.where,
                     ", ".join(f"{n} from {name}" for name, n in result.rows.items()))
            done.append(result)
    return done
