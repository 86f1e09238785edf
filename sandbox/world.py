"""The sandbox's world on disk: one JSON file and, beside it, a folder with the attachments' bytes.

``world.json`` holds the server, its roles, channels, users, messages and reactions (see
``Sandbox._world_record``); ``world-attachments/<attachment id>`` hold the files people and the bot
posted, written once each. Every write goes to a temporary file that is flushed, fsynced and
renamed over the old one, so a crash leaves either the previous world or the new one, never half.
A world that cannot be read is set aside (``world.json.<time>.bad``) so that nothing is lost, and
the sandbox starts a new one.

Nothing here knows the sandbox's classes: this module reads and writes bytes and JSON.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = 1  # bump when a saved world can no longer be read as it is


class WorldUnreadable(Exception):
    """The world file exists but is not a world this sandbox can load; the message says why."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` durably: temp file in the same folder, fsync, rename, fsync folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class WorldFile:
    """Where one sandbox world lives; blocking I/O, so the sandbox calls it from a thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.blobs = self.path.with_name(self.path.stem + "-attachments")

    def blob(self, attachment_id: int) -> Path:
        return self.blobs / str(attachment_id)

    def clean_leftovers(self) -> list[Path]:
        """Remove the temporary files a killed writer left behind (hidden ``.name.*.tmp``)."""
        removed: list[Path] = []
        for folder, name in ((self.path.parent, self.path.name), (self.blobs, "")):
            if not folder.is_dir():
                continue
            for leftover in folder.glob(f".{name}*.tmp"):
                try:
                    leftover.unlink()
                    removed.append(leftover)
                except OSError as exc:
                    log.warning("sandbox world: could not remove leftover %s: %s", leftover, exc)
        if removed:
            log.info("sandbox world: removed %d unfinished write(s): %s", len(removed),
                     ", ".join(p.name for p in removed))
        return removed

    def load(self) -> dict[str, Any] | None:
        """The saved world, or None when there is none yet; :class:`WorldUnreadable` when there is
        one that cannot be used (not JSON, not a world, another format)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise WorldUnreadable(f"cannot read it ({exc.strerror or exc})") from None
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise WorldUnreadable(f"it is not valid JSON ({exc})") from None
        if not isinstance(record, dict) or "guild_id" not in record:
            raise WorldUnreadable("it is not a sandbox world")
        if record.get("format") != FORMAT:
            raise WorldUnreadable(f"it was saved in format {record.get('format')!r}; this sandbox reads {FORMAT}")
        return record

    def set_aside(self) -> Path | None:
        """Move an unreadable world (and its attachments) out of the way; the new name, or None."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.{stamp}.bad")
        try:
            os.replace(self.path, target)
        except OSError as exc:
            log.warning("sandbox world: could not set %s aside: %s", self.path, exc)
            return None
        if self.blobs.is_dir():
            try:
                os.replace(self.blobs, self.blobs.with_name(f"{self.blobs.name}.{stamp}.bad"))
            except OSError as exc:
                log.warning("sandbox world: could not set %s aside: %s", self.blobs, exc)
        return target

    def save(self, record: dict[str, Any]) -> None:
        write_atomic(self.path, json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode())

    def write_blob(self, attachment_id: int, data: bytes) -> None:
        path = self.blob(attachment_id)
        if not path.exists():
            write_atomic(path, data)

    def read_blob(self, attachment_id: int) -> bytes:
        return self.blob(attachment_id).read_bytes()

    def prune_blobs(self, keep: set[int]) -> int:
        """Delete the attachment files no message refers to any more; how many went."""
        if not self.blobs.is_dir():
            return 0
        removed = 0
        for path in self.blobs.iterdir():
            if path.name.isdigit() and int(path.name) not in keep:
                try:
                    path.unlink()
                    removed += 1
                except OSError as exc:
                    log.warning("sandbox world: could not remove %s: %s", path, exc)
        return removed

    def remove_blobs(self) -> None:
        shutil.rmtree(self.blobs, ignore_errors=True)
