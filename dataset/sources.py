"""What the current dataset was given, batch by batch, so an admin can see and take back a bad upload (sync).

Every example written by ``!train`` records where it came from (``origin``: the message, and the stored upload
when it came from a file). A *source* is one such batch: an uploaded file, the examples written in one message,
or a path of the data space added once; examples with no origin (a folder chosen with ``!select_dataset``) are
grouped by the file that holds them. Each source has a short id (``S-`` and six hex digits of its origin).

:func:`removal_preview` says what removing a source would take away (so a confirmation can show the counts);
:func:`remove` takes it away: its examples from every file of the dataset (each file replaced atomically, under
the dataset's lock) and the stored upload. A crash part-way leaves whole files, some without the source's
examples; removing the same id again finishes the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from dataset.folder import current_dataset
from dataset.forget import _rewrite_lines
from errors import InvalidInput, NotFound, TrainerError
from storage import GuildSpace, atomic_write_bytes, fsync_dir, lock_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One batch of the current dataset's examples."""

    id: str  # S-xxxxxx
    origin: str  # what the examples' ``origin`` says (or "file <path>" without one)
    what: str  # how a person knows it: the uploaded file's name, "examples written in a message", a path
    examples: int
    added_by: str | None
    added_at: str | None
    upload: str | None  # the stored upload (relative to the data space), when it came from a file


def _key(record: Mapping[str, object], path: Path, space: GuildSpace) -> str:
    origin = record.get("origin")
    return str(origin) if origin else f"file {space.relative(path)}"


def source_id(origin: str) -> str:
    return "S-" + hashlib.sha1(origin.encode("utf-8")).hexdigest()[:6]


def _files(space: GuildSpace) -> list[Path]:
    folder = current_dataset(space)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*.jsonl") if not any(part.startswith(".") for part in
                                                                p.relative_to(folder).parts))


def _records(path: Path) -> Iterator[dict[str, object]]:
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(record, dict):
                yield record


def list_sources(space: GuildSpace) -> list[Source]:
    """The current dataset's sources, newest first."""
    found: dict[str, dict[str, object]] = {}
    for path in _files(space):
        for record in _records(path):
            key = _key(record, path, space)
            entry = found.setdefault(key, {"n": 0, "by": record.get("added_by"), "at": record.get("added_at"),
                                           "source": record.get("source")})
            entry["n"] = int(entry["n"]) + 1  # type: ignore[call-overload]
    sources = []
    for origin, entry in found.items():
        upload = origin.rsplit("upload ", 1)[1] if "upload " in origin else None
        shown = str(entry["source"] or "")
        if upload:
            what = f"upload `{shown or Path(upload).name}`"
        elif origin.startswith("file "):
            what = f"file `{origin[5:]}`"
        elif shown == "inline" or not shown:
            what = "examples written in a message"
        else:
            what = f"path `{shown}`"
        sources.append(Source(source_id(origin), origin, what, int(entry["n"]),  # type: ignore[call-overload]
                              None if entry["by"] is None else str(entry["by"]),
                              None if entry["at"] is None else str(entry["at"]), upload))
    return sorted(sources, key=lambda s: s.added_at or "", reverse=True)


def _find(space: GuildSpace, raw_id: str) -> Source:
    wanted = raw_id.strip().strip("`").lower()
    wanted = wanted if wanted.startswith("s-") else f"s-{wanted}"
    if len(wanted) != 8:
        raise InvalidInput(f"`{raw_id.strip()[:40]}` is not a source id (they look like `S-1a2b3c`). Nothing was "
                           f"changed.", helps=("uploads", "lists them"))
    for source in list_sources(space):
        if source.id.lower() == wanted:
            return source
    raise NotFound(f"The current dataset has no source `{raw_id.strip()[:40]}`. Nothing was changed.",
                   helps=("uploads", "lists them"))


def removal_preview(space: GuildSpace, raw_id: str) -> Source:
    """What removing the source ``raw_id`` would take away (InvalidInput / NotFound for a bad id)."""
    return _find(space, raw_id)


def remove(space: GuildSpace, raw_id: str) -> Source:
    """Remove a source: its examples from the current dataset and its stored upload; what was removed."""
    source = _find(space, raw_id)
    folder = current_dataset(space)
    removed = 0
    with lock_for(folder):
        for path in _files(space):

            def theirs(record: Mapping[str, object], path: Path = path) -> bool:
                return _key(record, path, space) == source.origin

            data, dropped = _rewrite_lines(path, theirs)
            if not dropped:
                continue
            removed += dropped
            if data.strip():
                atomic_write_bytes(path, data)
            else:
                path.unlink()
                fsync_dir(path.parent)
    if source.upload:
        try:
            stored = space.resolve(source.upload)
        except TrainerError:  # a damaged origin: nothing to delete by it
            stored = None
        if stored is not None and stored.is_file() and space.uploads.resolve() in stored.parents:
            stored.unlink()
            fsync_dir(stored.parent)
    log.info("guild %s: removed source %s (%s): %d example(s)", space.guild_id, source.id, source.origin, removed)
    return Source(source.id, source.origin, source.what, removed, source.added_by, source.added_at, source.upload)
