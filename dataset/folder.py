"""The guild's current dataset folder: stored uploads, adding examples (de-duplicated), selecting a folder.

A dataset is a folder inside the guild's data space; its name (relative to the space) is kept in
``state.json`` under ``"dataset"`` (default ``datasets/main``). Ingested examples are written as new
files ``ingested-<UTC stamp>-<id>.jsonl``; existing files are never rewritten. Sync: call it from a thread.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset import archive as archiver
from dataset.formats import (
    Example,
    IngestReport,
    collect,
    content_hash,
    finish_record,
    iter_source,
    parse_inline_lines,
    parse_source_file,
    space_files,
)
from errors import InvalidInput, NotFound, PathRefused, TooLarge, TrainerError
from storage import GuildSpace, atomic_open, atomic_write_bytes, fmt_bytes, lock_for, utc_now

log = logging.getLogger(__name__)

DEFAULT_DATASET = "datasets/main"


def store_upload(space: GuildSpace, filename: str, data: bytes) -> Path:
    """Save an uploaded attachment under ``uploads/<UTC stamp>-<safe name>`` atomically; returns the path."""
    name = re.sub(r"[^\w.-]+", "_", Path(filename or "upload").name).lstrip("._") or "upload"
    path = space.uploads / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(2)}-{name}"
    atomic_write_bytes(path, data)
    return path


# --- writing into the dataset -----------------------------------------------------------------

# Dataset folder -> {file path -> (mtime_ns, size, hashes)}, so re-scans only read changed files.
# Owned by the caller (the Model keeps one for the life of the bot); None: no caching.
HashCache = dict[str, dict[str, tuple[int, int, frozenset[str]]]]


def _existing_hashes(space: GuildSpace, folder: Path, caches: HashCache | None) -> set[str]:
    """Content hashes of every example already in a dataset folder (caller holds its lock)."""
    cache = {} if caches is None else caches.setdefault(str(folder), {})
    hashes: set[str] = set()
    if not folder.is_dir():
        return hashes
    live = set()
    for path in space_files(space, folder):
        st = path.stat()
        key = str(path)
        live.add(key)
        cached = cache.get(key)
        if cached is None or cached[:2] != (st.st_mtime_ns, st.st_size):
            found: set[str] = set()
            try:
                for _, cores, _ in parse_source_file(path, True, path.name):
                    for core in cores:
                        found.add(core.hash or content_hash(core))
            except InvalidInput:
                pass
            cached = cache[key] = (st.st_mtime_ns, st.st_size, frozenset(found))
        hashes |= cached[2]
    for gone in set(cache) - live:
        del cache[gone]
    return hashes


class _NothingNew(Exception):
    """Raised inside atomic_open to drop a file that would hold no example."""


def _ingest(
    space: GuildSpace,
    items: Iterable[tuple[int, list[Example], str | None, str]],
    shown: str,
    report: IngestReport,
    author: str,
    cache: HashCache | None = None,
    author_id: int | None = None,
    origin: str | None = None,
) -> IngestReport:
    """Stream parsed examples into a new file of the current dataset, skipping duplicates.

    Every example records who added it (``added_by``, ``added_by_id``) and from where (``origin``).
    """
    folder = current_dataset(space)
    now = utc_now()
    # Nanoseconds in the name: files sort in the order they were added, even within one second,
    # so a later answer for the same prompt reliably wins.
    ns = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"
    target = folder / f"ingested-{stamp}-{secrets.token_hex(3)}.jsonl"
    with lock_for(folder):
        known = _existing_hashes(space, folder, cache)
        added = 0
        try:
            with atomic_open(target) as fh:
                for number, cores, reason, source in items:
                    if reason:
                        report.skipped.append((number, reason))
                        continue
                    for core in cores:
                        record = finish_record(core, source=source, author=author, now=now,
                                               author_id=author_id, origin=origin)
                        digest = record.hash
                        assert digest is not None  # finish_record gives every record its hash
                        if digest in known:
                            report.duplicates += 1
                            where = f"line {number}" if source == shown else f"{source} line {number}"
                            report.skipped.append((number, f"{where}: already in the dataset"))
                            continue
                        known.add(digest)
                        fh.write(
                            json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                        )
                        fh.write(b"\n")
                        added += 1
                        report.count(record)
                if not added:
                    raise _NothingNew
        except _NothingNew:
            pass
        report.added = added
    if added:
        log.info("guild %s: %d example(s) added to %s", space.guild_id, added, space.relative(target))
    return report


def add_examples(space: GuildSpace, examples: Iterable[Example], *, source: str, author: str) -> int:
    """Write examples (parsed or normalized) into the current dataset; returns how many were new."""
    items = ((i, [ex], None, ex.source or source) for i, ex in enumerate(examples, 1))
    return _ingest(space, items, source, IngestReport(), author).added


def ingest_text(
    space: GuildSpace, text: str, *, positive: bool = True, author: str, source: str = "inline",
    cache: HashCache | None = None, author_id: int | None = None, origin: str | None = None,
) -> IngestReport:
    """Add inline text (see :func:`parse_text`) to the current dataset; returns what was added/skipped."""
    if not text or not text.strip():
        raise InvalidInput("There is no text to add: write examples after the command, one per line.")
    lines = enumerate(text.splitlines(), 1)
    items = (
        (n, c, f"line {n}: {r}" if r else None, source) for n, c, r in parse_inline_lines(lines, positive)
    )
    report = _ingest(space, items, source, IngestReport(), author, cache, author_id, origin)
    if not report.added and not report.skipped:
        raise InvalidInput("There is no text to add: write examples after the command, one per line.")
    return report


def ingest_file(
    space: GuildSpace, path: Path, *, positive: bool = True, author: str, source: str | None = None,
    cache: HashCache | None = None, author_id: int | None = None, origin: str | None = None,
) -> IngestReport:
    """Stream one file (e.g. from :func:`store_upload`) into the current dataset; constant memory."""
    report = IngestReport()
    shown = source or path.name
    report = _ingest(space, iter_source(None, path, positive, shown, report), shown, report, author, cache,
                     author_id, origin)
    if not report.added and not report.skipped:
        raise InvalidInput(f"`{shown}` has no examples (only blank lines).")
    return report


def ingest_path(space: GuildSpace, user_path: str, *, positive: bool = True, author: str,
                cache: HashCache | None = None, author_id: int | None = None,
                origin: str | None = None) -> IngestReport:
    """Add a file or folder of the guild space (a path the user typed) to the current dataset."""
    target = space.resolve(user_path, must_exist=True)
    shown = space.relative(target)
    report = IngestReport()
    report = _ingest(space, iter_source(space, target, positive, shown, report), shown, report, author, cache,
                     author_id, origin)
    if target.is_dir() and not report.files:
        raise InvalidInput(f"`{shown}` has no .jsonl, .json, .csv or .txt files.")
    return report


# --- the guild's current dataset ------------------------------------------------------------

def read_state(space: GuildSpace) -> dict[str, Any]:
    """The guild's state.json (empty dict when missing or unreadable)."""
    return space.read_state()


def update_state(space: GuildSpace, **changes: Any) -> dict[str, Any]:
    """Read-modify-write state.json atomically (a key set to None is removed)."""
    with space.edit_state() as state:
        for key, value in changes.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
    return state


def current_dataset(space: GuildSpace) -> Path:
    """The folder of the guild's current dataset (may not exist yet)."""
    name = read_state(space).get("dataset") or DEFAULT_DATASET
    try:
        return space.resolve(str(name))
    except PathRefused:
        log.warning("guild %s: refused dataset path %r in state; using default", space.guild_id, name)
        return space.resolve(DEFAULT_DATASET)


def dataset_name(space: GuildSpace) -> str:
    """The current dataset as the user sees it, e.g. ``datasets/main``."""
    return space.relative(current_dataset(space))


def load_dataset(space: GuildSpace, folder: Path, *, positive: bool | None = None) -> IngestReport:
    """Read every parseable file of a dataset folder into normalized examples (in memory).

    ``positive`` is the flag for raw files without one (.txt lines, pairs); by default the one
    given to ``select_dataset`` (state ``dataset_positive``), else True.
    """
    root = space.data.resolve()
    real = folder.resolve()
    if real != root and root not in real.parents:
        raise PathRefused("That dataset folder is outside this server's data folder.")
    if positive is None:
        positive = read_state(space).get("dataset_positive", True) is not False
    report = IngestReport()
    if not real.is_dir():
        return report
    return collect(iter_source(space, real, positive, space.relative(real), report), report, "")


@dataclass
class SelectResult:
    name: str  # dataset folder relative to the space
    examples: int
    report: IngestReport
    archive: archiver.ArchiveResult


def select_dataset(space: GuildSpace, user_dir: str, *, positive: bool = True) -> SelectResult:
    """Make a folder the dataset for the next training, archive it, count its examples (sync)."""
    folder = space.resolve(user_dir, must_exist=True)
    shown = space.relative(folder)
    if not folder.is_dir():
        raise InvalidInput(f"`{shown}` is a file; give a folder.")
    archives = space.archives.resolve()
    if folder == archives or archives in folder.parents:
        raise InvalidInput("The archives folder cannot be a dataset.")
    report = load_dataset(space, folder, positive=positive)
    if not report.examples:
        raise InvalidInput(f"`{shown}` has no usable examples; nothing selected.")
    archive = archiver.archive_folder(space, shown)
    update_state(space, dataset=shown, dataset_positive=positive)
    return SelectResult(shown, len(report.examples), report, archive)




def add_upload(space: GuildSpace, filename: str, data: bytes, *, positive: bool, author: str,
               cache: HashCache | None = None, author_id: int | None = None,
               origin: str | None = None) -> IngestReport:
    """Store an uploaded file and add its examples to the current dataset (their ``origin`` names the stored
    upload, so forgetting a person finds both). A refused upload, or one that added nothing, is not kept."""
    path = store_upload(space, filename, data)
    where = f"{origin}, upload {space.relative(path)}" if origin else f"upload {space.relative(path)}"
    try:
        report = ingest_file(space, path, positive=positive, author=author, source=filename, cache=cache,
                             author_id=author_id, origin=where)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if not report.added:
        path.unlink(missing_ok=True)
    return report


def path_exists(space: GuildSpace, user_path: str) -> bool:
    """Whether a typed path names an entry of the data space (False when refused)."""
    try:
        return space.resolve(user_path).exists()
    except (TrainerError, OSError):
        return False


def read_user_file(space: GuildSpace, user_path: str, *, limit: int) -> tuple[str, str, bytes]:
    """A file of the data space as (path shown, file name, bytes); TooLarge above ``limit`` bytes."""
    target = space.resolve(user_path, must_exist=True)
    shown = space.relative(target)
    if not target.is_file():
        raise InvalidInput(f"`{shown}` is a folder.", helps=(f"archive {shown}", "zips it"))
    size = target.stat().st_size
    if size > limit:
        said, cap = fmt_bytes(size), fmt_bytes(limit)
        if said == cap:  # "10.0 MB, over the limit of 10.0 MB" would make no sense
            said, cap = f"{size:,} bytes", f"{limit:,} bytes"
        raise TooLarge(f"`{shown}` is {said}, over this server's upload limit of {cap}.")
    try:
        return shown, target.name, target.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"`{shown}` does not exist in this server's data folder.") from None
    except OSError as exc:
        raise InvalidInput(f"`{shown}` can't be read: {exc.strerror or type(exc).__name__}.") from None


def suggest_paths(space: GuildSpace, typed: str, *, folders_only: bool = False, limit: int = 25) -> list[str]:
    """Entries of the data space whose path starts like ``typed`` (for a slash option's autocomplete): the
    entries of the folder typed so far, hidden ones left out, never anything outside the space."""
    typed = typed.strip().strip("`\"'").replace("\\", "/")
    folder, _, start = typed.rpartition("/")
    try:
        base = space.resolve(folder) if folder else space.data.resolve()
        entries = sorted(base.iterdir()) if base.is_dir() else []
    except (TrainerError, OSError):  # a refused or unreadable path: nothing to suggest
        return []
    root = space.data.resolve()
    found: list[str] = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.lower().startswith(start.lower()):
            continue
        try:
            real = entry.resolve()
        except OSError:
            continue
        if real != root and root not in real.parents:  # a link leading out of the space
            continue
        if folders_only and not real.is_dir():
            continue
        found.append(f"{folder}/{entry.name}" if folder else entry.name)
        if len(found) >= limit:
            break
    return found
