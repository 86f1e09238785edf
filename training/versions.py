"""Numbered model versions on disk, one module for the local and hf backends (no heavy imports).

Every finished training is a folder ``models/<prefix><N>/`` (``local-v3``, ``hf-v2``) holding the
backend's files and a ``meta.json``. A backend builds it in a hidden ``.tmp-*`` folder
(:func:`new_tmp_dir`), then :meth:`Versions.claim` writes its ``meta.json``, fsyncs it and renames it
into place under ``models/.versions.lock``, a lock file shared by every thread and process that saves
versions: a crash or a cancel never leaves half a model and two trainings never take the same number.
Older versions stay for rollback.

A backend with a :class:`Versions` as its ``versions`` attribute (``training.backend``) lists and
checks its models from the disk rather than from the job log.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from errors import NotFound
from storage import atomic_write_json, fsync_dir, fsync_tree, read_json

LOCK_FILE = ".versions.lock"
TMP_PREFIX = ".tmp-"  # storage.remove_leftovers knows this name too
STALE_TMP_SECONDS = 6 * 3600  # a .tmp-* folder this old belongs to no live trainer


@dataclass(frozen=True)
class Versions:
    """One backend's numbered version folders: ``<prefix><N>`` with a ``meta.json`` and ``files``."""

    prefix: str  # "local-v": versions are local-v1, local-v2, ...
    what: str  # what the names are, for the error on a name that is none: "a local model name"
    files: tuple[str, ...] = ()  # files besides meta.json without which a version is not there

    def name(self, number: int) -> str:
        return f"{self.prefix}{number}"

    def number(self, name: str) -> int | None:
        """The number in a version name; None when ``name`` is not one."""
        m = re.fullmatch(re.escape(self.prefix) + r"(\d+)", name or "")
        return int(m.group(1)) if m else None

    def numbers(self, models: Path) -> list[int]:
        """Numbers of the finished versions in ``models`` (those with a meta.json), ascending."""
        try:
            names = os.listdir(models)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            number = self.number(name)
            if number is not None and (models / name / "meta.json").is_file():
                found.append(number)
        return sorted(found)

    def names(self, models: Path) -> list[str]:
        """Names of the finished versions in ``models``, oldest first."""
        return [self.name(n) for n in self.numbers(models)]

    def read_meta(self, models: Path, name: str) -> dict[str, Any]:
        """meta.json of a version; NotFound if there is no such version (or it is damaged)."""
        if self.number(name) is None:
            raise NotFound(f"`{name}` is not {self.what} (they look like `{self.name(3)}`).")
        try:
            meta = read_json(models / name / "meta.json")
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or not all((models / name / f).is_file() for f in self.files):
            raise NotFound(f"There is no model `{name}` on this server.")
        return meta

    def exists(self, models: Path, name: str) -> bool:
        try:
            self.read_meta(models, name)
        except NotFound:
            return False
        return True

    def of_job(self, models: Path, job_id: str) -> str | None:
        """The version a job produced, if it got that far (its meta.json names the job)."""
        for number in reversed(self.numbers(models)):
            meta = read_json(models / self.name(number) / "meta.json") or {}
            if meta.get("job_id") == job_id:
                return self.name(number)
        return None

    def claim(self, models: Path, tmp: Path, meta: dict[str, Any]) -> str:
        """Number the finished version in ``tmp``, write its meta.json, fsync it and rename it into place;
        its name.

        The number is chosen under a lock file shared by every thread and process that saves versions, so
        two trainings finishing together never get the same one.
        """
        with _file_lock(models / LOCK_FILE):
            number = (self.numbers(models) or [0])[-1] + 1
            while (models / self.name(number)).exists():
                number += 1  # a folder without meta.json (damaged by hand): never reuse its name
            name = self.name(number)
            atomic_write_json(tmp / "meta.json", {**meta, "name": name, "version": number})
            fsync_tree(tmp)
            os.rename(tmp, models / name)
            fsync_dir(models)
        return name


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # each open is its own lock: threads exclude each other too
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def new_tmp_dir(models: Path) -> Path:
    """A hidden folder to build a version in before :meth:`Versions.claim` renames it."""
    models.mkdir(parents=True, exist_ok=True)
    tmp = models / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    return tmp


def remove_stale_tmp(models: Path, older_than: float = STALE_TMP_SECONDS) -> int:
    """Delete ``.tmp-*`` folders left by trainers that died while saving; how many were removed."""
    removed = 0
    try:
        entries = list(models.iterdir())
    except FileNotFoundError:
        return 0
    now = time.time()
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX) and entry.is_dir():
            try:
                if now - entry.stat().st_mtime > older_than:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
            except FileNotFoundError:
                continue
    return removed
