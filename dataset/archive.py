"""Zip a folder of a guild's data space into ``archives/<name>-<UTC timestamp>.zip``.

:func:`archive_folder` is sync and blocking (disk + CPU): cogs run it with ``asyncio.to_thread``.
It streams every file in 1 MiB chunks (constant memory whatever the folder size), writes a hidden
temp file in the archives folder, fsyncs it and links it into place, so a reader never sees a half
archive and an existing archive is never overwritten.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from errors import InvalidInput
from storage import GuildSpace

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
_UNSAFE = re.compile(r"[^\w.-]+")  # \w is unicode-aware: keeps letters of any script


@dataclass
class ArchiveResult:
    path: Path  # the new zip file
    name: str  # its file name, e.g. ``main-20251125T221200Z.zip``
    files: int  # files stored in it
    bytes: int  # size of the zip
    source_bytes: int  # total size of the files before compression
    skipped_symlinks: int = 0
    skipped_hidden: int = 0


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _safe_name(name: str) -> str:
    cleaned = _UNSAFE.sub("_", name).strip("._") or "data"
    return cleaned[:80]


def collect(root: Path, exclude: Path) -> tuple[list[tuple[Path, str]], int, int]:
    """Files under ``root`` as (path, archive name); skips hidden names, symlinks and ``exclude``."""
    files: list[tuple[Path, str]] = []
    symlinks = hidden = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            full = here / d
            if d.startswith("."):
                hidden += 1
            elif full.is_symlink():  # never followed: it could lead out of the space
                symlinks += 1
            elif full == exclude:
                continue
            else:
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            full = here / f
            if f.startswith("."):
                hidden += 1
            elif full.is_symlink():
                symlinks += 1
            elif full.is_file():
                # Archive names are relative and use "/"; they can never contain ".." or a root.
                files.append((full, full.relative_to(root).as_posix()))
    return files, symlinks, hidden


def archive_folder(space: GuildSpace, user_dir: str) -> ArchiveResult:
    """Zip ``user_dir`` (a folder in the guild space) into the archives folder (sync, blocking).

    Raises NotFound (missing), InvalidInput (a file, the archives folder, or nothing to archive),
    PathRefused (outside the space, hidden). Hidden files and all symlinks are skipped and counted.
    """
    source = space.resolve(user_dir, must_exist=True)
    shown = space.relative(source)
    archives = space.archives.resolve()
    if not source.is_dir():
        raise InvalidInput(f"`{shown}` is a file, not a folder: give a folder to archive.")
    if source == archives or archives in source.parents:
        raise InvalidInput("The archives folder itself cannot be archived.")
    files, symlinks, hidden = collect(source, archives)
    if not files:
        raise InvalidInput(f"`{shown}` has no files to archive.")

    base = _safe_name(source.name if source != space.data.resolve() else f"guild-{space.guild_id}")
    archives.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".archive-", suffix=".zip.tmp", dir=archives)
    source_bytes = 0
    stored = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
                for path, arcname in files:
                    try:
                        # strict_timestamps=False: a file dated before 1980 is stored as 1980, not refused.
                        info = zipfile.ZipInfo.from_file(path, arcname, strict_timestamps=False)
                        with open(path, "rb") as src:
                            info.compress_type = zipfile.ZIP_DEFLATED
                            with zf.open(info, "w", force_zip64=True) as dst:
                                shutil.copyfileobj(src, dst, CHUNK)
                    except FileNotFoundError:
                        continue  # deleted while we were archiving: not an error
                    source_bytes += info.file_size
                    stored += 1
            raw.flush()
            os.fsync(raw.fileno())
        final = _link_unique(Path(tmp), archives, base)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    os.unlink(tmp)
    size = final.stat().st_size
    log.info("archived %s: %d files, %d -> %d bytes into %s", shown, stored, source_bytes, size, final.name)
    return ArchiveResult(final, final.name, stored, size, source_bytes, symlinks, hidden)


def _link_unique(tmp: Path, folder: Path, base: str) -> Path:
    """Hard-link the finished temp file to a new name; never replaces an existing archive."""
    stamp = _stamp()
    for n in range(1000):
        final = folder / (f"{base}-{stamp}.zip" if n == 0 else f"{base}-{stamp}-{n}.zip")
        try:
            os.link(tmp, final)
        except FileExistsError:
            continue
        except OSError:
            # No hard links on this filesystem: a rename is still atomic, just not exclusive.
            if final.exists():
                continue
            os.replace(tmp, final)
            tmp.touch()  # the caller unlinks tmp afterwards
        try:
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass
        return final
    raise InvalidInput("Too many archives with the same name this second; try again.")


def list_archives(space: GuildSpace) -> list[Path]:
    """Archives of the guild, newest first."""
    if not space.archives.is_dir():
        return []
    zips = [p for p in space.archives.glob("*.zip") if p.is_file() and not p.name.startswith(".")]
    return sorted(zips, key=lambda p: p.stat().st_mtime, reverse=True)


def archive_for_chat(space: GuildSpace, user_dir: str, *, read_limit: int) -> tuple[ArchiveResult, str, bytes | None]:
    """Zip a folder of the data space: the result, the folder as stored (not as typed: quotes, a trailing slash),
    and the zip's bytes when they fit in ``read_limit`` (to attach), else None."""
    result = archive_folder(space, user_dir)
    shown = space.relative(space.resolve(user_dir))
    return result, shown, result.path.read_bytes() if result.bytes <= read_limit else None


def read_if_small(path: Path, limit: int) -> bytes | None:
    """A file's bytes when it is at most ``limit`` bytes (to attach), else None."""
    return path.read_bytes() if path.stat().st_size <= limit else None
