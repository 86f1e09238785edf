"""The one module that owns where data lives and how it is written.

Every guild has ``DATA_DIR/<guild_id>/`` (datasets, uploads, archives, models, jobs) and
``CORRECTIONS_DIR/<guild_id>/`` (corrections, feedback, answers, test errors). No other module
builds a path from user input: they call :meth:`GuildSpace.resolve`.

Writes are durable: whole files go through a temp file + ``fsync`` + ``os.replace``; logs are
JSON Lines appended with one ``write`` + ``fsync`` per record, so a crash leaves every
acknowledged record intact and at worst one torn last line, which readers skip and report.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import unquote

from errors import NotFound, NotSaved, PathRefused
from records.db import Database, DatabaseUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


# The one registry of file locks, process-wide by nature (any thread may write any guild's files):
# the only mutable module-level state of the project.
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def lock_for(path: Path) -> threading.Lock:
    """The lock of one file or folder path, shared by every thread of this process."""
    with _locks_guard:
        return _locks.setdefault(str(path), threading.Lock())


def utc_now() -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. ``2025-11-25T22:12:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fmt_bytes(n: float) -> str:
    """1,234 bytes / 1.2 KB / 3.4 MB / 1.0 GB."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{int(n):,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def lock_held(path: Path) -> bool:
    """Whether a live process (or thread) holds an flock on ``path``; a dead holder releases it, even when
    killed. False when the file does not exist."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def fsync_tree(folder: Path) -> None:
    """Flush every file directly in ``folder``, then the folder itself: before a finished folder (a model
    version) is renamed into place. A file that cannot be flushed raises, unlike ``fsync_dir``."""
    for f in folder.iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(folder)


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Stream a new version of ``path``: written to a hidden temp file, fsynced, then renamed.

    If the ``with`` body raises, the temp file is removed and ``path`` is left untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


# Hidden names our own writers use while a file or folder is being made (atomic_open, archives,
# model versions): anything left with such a name was cut short by a crash.
_LEFTOVER = re.compile(r"^\.(?:.+\.tmp|tmp-[0-9a-f]{32})$")


def remove_leftovers(*roots: Path) -> list[tuple[Path, int]]:
    """Delete half-written temp files and folders under ``roots`` (a crash mid-write leaves them).

    Returns (path, bytes) of what was removed. Only names our writers make are touched.
    """
    removed: list[tuple[Path, int]] = []
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            for name in filenames:
                if _LEFTOVER.match(name):
                    path = here / name
                    try:
                        size = path.lstat().st_size
                        path.unlink()
                    except OSError as exc:
                        log.warning("could not remove leftover %s: %s", path, exc)
                        continue
                    removed.append((path, size))
            for name in list(dirnames):
                if _LEFTOVER.match(name):
                    path = here / name
                    dirnames.remove(name)
                    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append((path, size))
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half."""
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[Mapping[str, object]]) -> None:
    """Replace ``path`` with one compact JSON object per line, streamed (rows may be a generator)."""
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")


async def saved(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a write in a thread; a refused write (read-only folder or database, full disk, database away) becomes
    one plain NotSaved line that says what was not saved."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except OSError as exc:
        log.warning("could not save %s: %s", what, exc)
        raise NotSaved(f"{what[0].upper()}{what[1:]} was not saved: I could not write to my data folder "
                       f"({exc.strerror or type(exc).__name__}). Nothing was changed; an admin can find "
                       f"the details in the log.") from None
    except DatabaseUnavailable as exc:
        log.warning("could not save %s: %s", what, exc.reason or exc)
        raise NotSaved(f"{what[0].upper()}{what[1:]} was not saved: {exc} Nothing was changed; an admin can "
                       f"find the details in the log.") from None


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


def append_record(path: Path, record: Mapping[str, object]) -> None:
    """Append one JSON record as a line, flushed and fsynced before returning."""
    line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock_for(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # A torn last line (from a crash) must not swallow this record: start on a new line.
            if os.fstat(fd).st_size:
                with open(path, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        line = b"\n" + line
            view = memoryview(line)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class ReadResult:
    records: list[dict[str, Any]]
    damaged: list[int]  # 1-based line numbers that could not be parsed


def read_records(path: Path) -> ReadResult:
    """Read a JSON Lines log, skipping (and reporting) damaged lines instead of failing."""
    records: list[dict[str, Any]] = []
    damaged: list[int] = []
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return ReadResult(records, damaged)
    with fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                damaged.append(number)
                continue
            if isinstance(obj, dict):
                records.append(obj)
            else:
                damaged.append(number)
    if damaged:
        log.warning("%s: skipped %d damaged line(s): %s", path, len(damaged), damaged[:5])
    return ReadResult(records, damaged)


class GuildSpace:
    """The folders and records of one guild, and the only way to turn a typed path into a real one."""

    def __init__(self, guild_id: int, data_dir: Path, corrections_dir: Path, db: Database | None = None):
        if not isinstance(guild_id, int) or guild_id <= 0:
            raise ValueError(f"bad guild id {guild_id!r}")
        self.guild_id = guild_id
        # config.Settings is the only reader of DATA_DIR / CORRECTIONS_DIR: the folders are always given.
        self.data = Path(data_dir).resolve() / str(guild_id)
        self.corrections = Path(corrections_dir).resolve() / str(guild_id)
        # The bot passes its one Database; a space made alone (scripts, tests) opens the SQLite file of DATA_DIR.
        self._db = db
        self._data_root = Path(data_dir)

    @property
    def db(self) -> Database:
        """Where this server's records are (every query filters on ``guild_id``)."""
        if self._db is None:
            self._db = Database.open(None, self._data_root)
        return self._db

    # Well-known places inside the space.
    @property
    def uploads(self) -> Path:
        return self.data / "uploads"

    @property
    def datasets(self) -> Path:
        return self.data / "datasets"

    @property
    def archives(self) -> Path:
        return self.data / "archives"

    @property
    def models(self) -> Path:
        return self.data / "models"

    @property
    def heldout_dir(self) -> Path:
        """Each running training's held-out pairs, until its new model has been scored."""
        return self.data / "models" / "heldout"

    def read_state(self) -> dict[str, Any]:
        """The server's settings (the dataset in use, the system prompt, ...): key -> JSON value."""
        with self.db.tx(write=False) as tx:
            rows = tx.all("SELECT key, value FROM guild_state WHERE guild_id = ?", (self.guild_id,))
        return {key: json.loads(value) for key, value in rows}

    @contextmanager
    def edit_state(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write the server's settings in one transaction: the block changes the dict; changed and
        removed keys are written when it ends (nothing, when it raises)."""
        with self.db.tx() as tx:
            rows = tx.all("SELECT key, value FROM guild_state WHERE guild_id = ?", (self.guild_id,))
            before = {key: value for key, value in rows}
            state = {key: json.loads(value) for key, value in rows}
            yield state
            for key in before.keys() - state.keys():
                tx.execute("DELETE FROM guild_state WHERE guild_id = ? AND key = ?", (self.guild_id, key))
            for key, value in state.items():
                text = json.dumps(value, ensure_ascii=False, sort_keys=True)
                if before.get(key) != text:
                    tx.execute("INSERT INTO guild_state (guild_id, key, value) VALUES (?, ?, ?) ON CONFLICT "
                               "(guild_id, key) DO UPDATE SET value = excluded.value", (self.guild_id, str(key), text))

    def ensure(self) -> "GuildSpace":
        self.data.mkdir(parents=True, exist_ok=True)
        self.corrections.mkdir(parents=True, exist_ok=True)
        return self

    def resolve(self, user_path: str, *, must_exist: bool = False) -> Path:
        """Turn a path typed by a user into a path inside this guild's data space.

        Refuses absolute paths, ``..``, percent-encoded tricks, hidden names (``.env``) and
        symlinks that lead out of the space.
        """
        raw = (user_path or "").strip().strip("`\"'")
        decoded = unquote(raw)
        # Checked on the typed and the decoded form, each check on both before the next, so the reason
        # given is the most serious one (``..%2fx`` is a `..`, not a hidden name ``..%2fx``).
        candidates = (raw, decoded)
        split = [[p for p in c.replace("\\", "/").split("/") if p not in ("", ".")] for c in candidates]
        if any("\x00" in c for c in candidates):
            raise PathRefused("That path contains a NUL byte.")
        if any(c.startswith(("/", "\\", "~")) or (len(c) > 1 and c[1] == ":") for c in candidates):
            raise PathRefused("Absolute paths are not allowed: give a path inside this server's data folder.")
        if any(p == ".." for parts in split for p in parts):
            raise PathRefused("`..` is not allowed: paths stay inside this server's data folder.")
        if any(p.startswith(".") for parts in split for p in parts):
            raise PathRefused("Hidden files and folders (names starting with `.`) are not available.")
        parts = [p for p in decoded.replace("\\", "/").split("/") if p not in ("", ".")]
        try:
            self.data.mkdir(parents=True, exist_ok=True)
            root = self.data.resolve()
            target = root.joinpath(*parts) if parts else root
            real = target.resolve()  # follows symlinks
            exists = real.exists()
        except OSError as exc:  # a name too long for the file system, a symlink loop, ...
            raise PathRefused(f"That path can't be used: {exc.strerror or exc}.") from None
        if real != root and root not in real.parents:
            raise PathRefused("That path leads outside this server's data folder.")
        # A symlink inside the space may still point at a hidden file (``link -> .env``).
        if any(p.startswith(".") for p in real.relative_to(root).parts):
            raise PathRefused("Hidden files and folders (names starting with `.`) are not available.")
        if must_exist and not exists:
            shown = "/".join(parts) or "."
            raise NotFound(f"`{shown}` does not exist in this server's data folder.")
        return real

    def relative(self, path: Path) -> str:
        """A path as the user should see it: relative to the guild's data folder."""
        try:
            return path.resolve().relative_to(self.data.resolve()).as_posix() or "."
        except ValueError:
            return path.name
