"""``!export data``: the server's compiled dataset as OpenAI-format chat JSONL, with provenance beside it.

Sync (the Model runs it in a thread). Files are written line by line into a new folder
``exports/data-<UTC stamp>/`` of the server's data space, each atomically, so a crash never leaves a
half file under a real name: ``train.jsonl`` (supervised chat lines), ``dpo.jsonl`` (preference pairs
made from corrections, when there are any) and ``provenance.jsonl`` (who gave each example and
correction, from which message or upload).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict

from dataset import archive, corrections
from dataset.compile import compile_guild
from dataset.folder import current_dataset, load_dataset
from dataset.formats import Example
from errors import InvalidInput
from storage import GuildSpace, atomic_write_jsonl

log = logging.getLogger(__name__)


class ExampleProvenance(TypedDict, total=False):
    """A line of ``provenance.jsonl`` for an example: its record's provenance (keys known for it, in this order)."""

    what: Literal["example"]
    id: str
    hash: str
    kind: Literal["chat", "text"]
    added_by: str
    added_by_id: int
    source: str
    origin: str
    added_at: str


class CorrectionProvenance(TypedDict):
    """A line of ``provenance.jsonl`` for an approved correction."""

    what: Literal["correction"]
    ref: str
    author_id: int | None
    author_name: str | None
    message_id: int | None
    source_message_id: int | None
    time: str


def example_provenance(ex: Example) -> ExampleProvenance:
    """Who gave an example and from where (the provenance it records; unknown keys left out)."""
    row: ExampleProvenance = {"what": "example"}
    if ex.id is not None:
        row["id"] = ex.id
    if ex.hash is not None:
        row["hash"] = ex.hash
    row["kind"] = ex.kind
    if ex.added_by is not None:
        row["added_by"] = ex.added_by
    if ex.added_by_id is not None:
        row["added_by_id"] = ex.added_by_id
    if ex.source is not None:
        row["source"] = ex.source
    if ex.origin is not None:
        row["origin"] = ex.origin
    if ex.added_at is not None:
        row["added_at"] = ex.added_at
    return row


@dataclass
class DataExport:
    folder: Path  # exports/data-<stamp>/
    files: list[Path]  # the files in it, train.jsonl first
    examples: int  # supervised lines
    pairs: int  # DPO lines
    bytes: int  # total size


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, object]]) -> int:
    atomic_write_jsonl(path, rows)
    return path.stat().st_size


def export_data(space: GuildSpace) -> DataExport:
    """Write the compiled dataset (and DPO pairs, and provenance) into a new export folder."""
    compiled = compile_guild(space, min_examples=1, trainer="The export")
    if not compiled.supervised and not compiled.preference:
        raise InvalidInput("There is nothing to export yet: this server's dataset has no examples.",
                           helps=("train", "adds some (attach a file or write `question => answer`)"))
    loaded = load_dataset(space, current_dataset(space))
    folder = space.data / "exports" / f"data-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    n = 1
    while folder.exists():  # two exports in one second
        n += 1
        folder = folder.with_name(folder.name.split("~")[0] + f"~{n}")
    folder.mkdir(parents=True)
    files = [folder / "train.jsonl"]
    total = _write_jsonl(files[0], compiled.supervised)
    if compiled.preference:
        files.append(folder / "dpo.jsonl")
        total += _write_jsonl(files[-1], compiled.preference)

    def provenance() -> Iterator[ExampleProvenance | CorrectionProvenance]:
        for ex in loaded.examples:
            yield example_provenance(ex)
        for c in corrections.approved_corrections(space):  # only what reached the training lines
            yield {"what": "correction", "ref": c.ref, "author_id": c.author_id, "author_name": c.author_name,
                   "message_id": c.message_id, "source_message_id": c.source_message_id, "time": c.time}

    files.append(folder / "provenance.jsonl")
    total += _write_jsonl(files[-1], provenance())
    log.info("guild %s: exported %d lines and %d pairs to %s", space.guild_id, len(compiled.supervised),
             len(compiled.preference), space.relative(folder))
    return DataExport(folder, files, len(compiled.supervised), len(compiled.preference), total)


def export_for_chat(space: GuildSpace, *, read_limit: int) -> tuple[DataExport, list[tuple[str, bytes]], str | None]:
    """Export the compiled dataset: the export, the files to attach as (name, bytes) when they fit in
    ``read_limit`` bytes together (else one zip of them when it fits, else none), and where the zip lies in the
    data space when one was made."""
    result = export_data(space)
    if result.bytes <= read_limit:
        return result, [(f.name, f.read_bytes()) for f in result.files], None
    zipped = archive.archive_folder(space, space.relative(result.folder))
    fits = zipped.bytes <= read_limit
    return result, ([(zipped.name, zipped.path.read_bytes())] if fits else []), f"archives/{zipped.name}"
