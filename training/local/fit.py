"""One local training, in a worker thread: :func:`train_version` fits and saves a version.

Steps: word matching (TF-IDF features and index), the classifier of labelled texts (when they have at least
two labels: logistic loss, SGD epochs, so there is a real loss curve to show), the sentence vectors, then the
version (``store.write_version``, ``store.VERSIONS.claim``).

The vectors are the long part (all-MiniLM-L6-v2 in numpy embeds ~220 short pairs a second on two cores), so
they are made in a way that lets a big training answer early, say where it is, stop at once and survive a
restart:

- **A quick stage.** When more than ``STAGE_ABOVE`` pairs need the full model, the pairs are first embedded
  with a quick static model (WordLlama, ~25,000 pairs a second) and the version is claimed with those vectors
  (``quick-embeddings.npy``): it answers at once, with the quick model's own calibrated thresholds. When the
  full vectors are done they join the same version (``embeddings.npy``), which answers at full quality from
  then on; the quick vectors are deleted.
- **A work folder**, ``models/.runs/<job id>/`` (:class:`Work`): what the job trains on (``train.json``), the
  order its pairs are embedded in (shortest first, so a batch pays little for padding; in chunks of about
  ``CHUNK_TOKENS`` tokens, a few seconds each), the full vectors, written straight into their file as they are
  made (never held whole in memory), and, after each chunk is on disk, how many are done (``state.json``,
  replaced atomically). A job cut short by ``/quit``, SIGTERM or a kill goes on from there
  (``training.local.runner``); at the end the vectors file is renamed into the version, not copied.
- **Progress** (:class:`Progress`): pairs done and to do, pairs a second and the time left, after every
  chunk. ``Progress.check`` runs between chunks and inside the encoder (before each layer of each batch), so
  a cancel, or the bot stopping, ends the work within a fraction of a second.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss

from storage import atomic_write_json, atomic_write_text, fsync_dir, lock_held, read_json
from training.embedding import QUICK_VECTORS, VECTORS, Embedder, describe_vectors
from training.local.retrieval import count_features, features, fit_idf, weigh
from training.local.store import VERSIONS, previous_vectors, write_version
from training.versions import new_tmp_dir

if TYPE_CHECKING:
    from storage import GuildSpace

log = logging.getLogger(__name__)

RUNS = ".runs"  # models/.runs/<job id>/: a running job's work folder
CLASSIFIER_EPOCHS = 15
STAGE_ABOVE = 2_000  # pairs for the full model above which a quick stage answers first (~15 s of embedding)
CHUNK_TOKENS = 16_384  # tokens per chunk of a transformer (~3 s on two cores): a progress report and a save
CHUNK_ROWS = 2_048  # pairs per chunk at most (and for a model whose cost does not grow with tokens)
STOPPED_SILENTLY = "the bot process ended without a word (killed, or the machine stopped)"


class Cancelled(Exception):
    """``!cancel``: the work ends and its work folder goes."""


class Stopped(Exception):
    """The bot is stopping: the job stays running and resumes from its work folder at the next start."""


@dataclass
class Progress:
    """How a training is doing: written by its worker thread, read by polls (attribute writes are atomic)."""

    cancel: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    step: int = 0
    total_steps: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    done: int = 0  # pairs embedded with the full model (before a restart too)
    total: int = 0  # pairs the full model embeds (those whose vectors could not be reused)
    rate: float | None = None  # pairs a second since this run began embedding
    eta: float | None = None  # seconds left for the full vectors
    stage: str | None = None  # which stage answers, while a quick one does
    live: str | None = None  # the version that answers before the job ends (the quick stage's)

    def check(self) -> None:
        """Raise Cancelled or Stopped when asked to end (called often during long steps)."""
        if self.cancel.is_set():
            raise Cancelled()
        if self.stop.is_set():
            raise Stopped()

    def tick(self, loss: float | None = None, event: str | None = None) -> None:
        """One step done."""
        self.check()
        self.step += 1
        if loss is not None:
            self.losses.append((self.step, loss))
        if event:
            self.events.append(event)


class Work:
    """A job's work folder, ``models/.runs/<job id>/``; see the module's docstring."""

    def __init__(self, models: Path, job_id: str) -> None:
        self.path = models / RUNS / job_id
        self.vectors = self.path / "vectors.npy"

    def exists(self) -> bool:
        """Whether the job's data was saved (a job cut short can go on)."""
        return (self.path / "train.json").is_file()

    def save_data(self, pairs: list[tuple[str, str]], labelled: list[tuple[str, str]], method: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / "train.json", {"method": method, "pairs": pairs, "labelled": labelled})

    def load_data(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
        data = json.loads((self.path / "train.json").read_text(encoding="utf-8"))
        return ([(str(p), str(a)) for p, a in data["pairs"]], [(str(t), str(lab)) for t, lab in data["labelled"]],
                str(data.get("method") or "supervised"))

    def state(self) -> dict[str, Any]:
        state = read_json(self.path / "state.json")
        return state if isinstance(state, dict) else {}

    def set_state(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.path / "state.json", state)

    def progress(self) -> tuple[int, int]:
        """(pairs embedded, pairs to embed) as the last saved chunk left them; (0, 0) before any."""
        state = self.state()
        return int(state.get("done") or 0), int(state.get("todo") or 0)

    def note_stop(self, why: str) -> None:
        """Why the work stopped, for the resume's message (a kill leaves none)."""
        with contextlib.suppress(OSError):
            atomic_write_text(self.path / "stopped", why)

    def why_stopped(self) -> str:
        try:
            return (self.path / "stopped").read_text(encoding="utf-8").strip() or STOPPED_SILENTLY
        except OSError:
            return STOPPED_SILENTLY

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the folder's lock while working: another process never resumes a job that still runs."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "stopped").unlink(missing_ok=True)
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # a killed process releases it too

    def busy(self) -> bool:
        """Whether a live thread (of any process) works in this folder."""
        return lock_held(self.path / "lock")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # the last one: no empty .runs left behind


def train_version(
    space: GuildSpace,
    pairs: list[tuple[str, str]],
    labelled: list[tuple[str, str]],
    *,
    job_id: str,
    method: str,
    embedder: Embedder | None = None,
    quick: Callable[[], Embedder | None] | None = None,
    progress: Progress | None = None,
    on_upgrade: Callable[[str], None] | None = None,
) -> str:
    """Fit and save a new version; returns its name (sync and CPU-bound: run it in a thread).

    With an ``embedder`` the pairs' sentence vectors are saved too (``embeddings.npy``); ``quick`` gives the
    model of a quick first stage when one is worth it (None: never). A job resumed after a restart passes the
    same ``job_id``: what its work folder holds is not done again. ``on_upgrade(name)`` is called when a
    version that answered with quick vectors has its full ones.
    """
    prog = progress or Progress()
    work = Work(space.models, job_id)
    try:
        with work.held():
            if not work.exists():
                work.save_data(pairs, labelled, method)
            name = _train(space, pairs, labelled, job_id=job_id, method=method, embedder=embedder, quick=quick,
                          prog=prog, work=work, on_upgrade=on_upgrade)
    except Stopped:
        work.note_stop("the bot was stopped (/quit, SIGTERM or a restart)")
        raise
    except BaseException:
        work.remove()
        raise
    work.remove()
    return name


def _train(space: GuildSpace, pairs: list[tuple[str, str]], labelled: list[tuple[str, str]], *, job_id: str,
           method: str, embedder: Embedder | None, quick: Callable[[], Embedder | None] | None, prog: Progress,
           work: Work, on_upgrade: Callable[[str], None] | None) -> str:
    started = time.time()
    labels = sorted({label for _, label in labelled})
    n_pairs = len(pairs)
    embeds = embedder is not None and n_pairs > 0
    prog.total_steps = 3 + (CLASSIFIER_EPOCHS if len(labels) >= 2 else 0) + embeds
    name = VERSIONS.of_job(space.models, job_id)  # a job resumed after its quick stage was saved
    if name is not None and embedder is not None:
        prog.total_steps += 1
        prog.step = prog.total_steps - 2  # what is left: the full vectors, then the version's upgrade
        return _upgrade(space, work, pairs, embedder, name, _plan(space, work, pairs, embedder, prog), prog,
                        on_upgrade)

    def meta(**more: Any) -> dict[str, Any]:
        return {"job_id": job_id, "method": method, "created_at": time.time(),
                "seconds": round(time.time() - started, 3), "pairs": n_pairs, "labelled": len(labelled),
                "labels": labels if len(labels) >= 2 else [],
                "embed_model": embedder.name if embeds and embedder is not None else None,
                "dataset": f"guild {space.guild_id}: compiled data, corrections and feedback", **more}

    prog.step = 0
    tmp = new_tmp_dir(space.models)
    try:
        # Word matching and the classifier first, straight into the version's hidden folder: only the
        # pairs stay in memory while the vectors are made.
        _word_matching(tmp, pairs, labelled, labels, prog)
        release_memory()
        if embedder is None or not n_pairs:
            return _claim(space, tmp, meta(), prog)
        plan = _plan(space, work, pairs, embedder, prog)
        todo, _, done = plan
        fast = quick() if quick is not None and len(todo) - done > STAGE_ABOVE else None
        if fast is None or fast.fingerprint == embedder.fingerprint:
            _embed(work, pairs, embedder, plan, prog)
            prog.tick(event=f"Embedded {n_pairs} pairs with {embedder.name}")
            _place_vectors(work, tmp, embedder, n_pairs)
            return _claim(space, tmp, meta(), prog)
        prog.total_steps += 1
        _quick_vectors(tmp, pairs, fast, prog)
        name = _claim(space, tmp, meta(quick_model=fast.name), prog, final=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prog.tick(event=f"Quick answers: `{name}` answers now with {fast.name} vectors; "
                    f"{embedder.name} embeds the {len(todo) - done:,} pairs for full quality")
    release_memory()
    return _upgrade(space, work, pairs, embedder, name, plan, prog, on_upgrade)


def _upgrade(space: GuildSpace, work: Work, pairs: list[tuple[str, str]], embedder: Embedder, name: str,
             plan: tuple[np.ndarray, np.ndarray, int], prog: Progress, on_upgrade: Callable[[str], None] | None
             ) -> str:
    """The second stage: the full vectors, then moved into the version that answered with quick ones."""
    prog.live = name
    prog.stage = (f"Stage 2/2: `{name}` answers with quick {_quick_name(space, name)} vectors while "
                  f"{embedder.name} embeds; full quality when that is done")
    _embed(work, pairs, embedder, plan, prog)
    prog.tick(event=f"Embedded {len(pairs)} pairs with {embedder.name}")
    folder = space.models / name
    _place_vectors(work, folder, embedder, len(pairs))
    for stale in QUICK_VECTORS:
        (folder / stale).unlink(missing_ok=True)
    if on_upgrade is not None:
        on_upgrade(name)
    prog.stage = ""
    prog.step = prog.total_steps
    prog.events.append(f"`{name}` now answers with {embedder.name} vectors (full quality)")
    return name


def _word_matching(folder: Path, pairs: list[tuple[str, str]], labelled: list[tuple[str, str]], labels: list[str],
                   prog: Progress) -> None:
    """Fit word matching (and the classifier of labelled texts) and write their files into ``folder``."""
    n_pairs = len(pairs)
    counts = count_features([p for p, _ in pairs] + [t for t, _ in labelled])
    idfs = [fit_idf(c) for c in counts]
    prog.tick(event=f"Vectorised {n_pairs + len(labelled)} texts")
    index = None
    if n_pairs:
        parts = [weigh(c[:n_pairs] if labelled else c, idf) for c, idf in zip(counts, idfs)]
        del counts
        index = sp.hstack(parts, format="csr", dtype=np.float32)
        del parts
        index.data *= np.float32(1 / math.sqrt(2))
    else:
        del counts
    prog.tick(event=f"Indexed {n_pairs} prompt/answer pairs")
    classifier = _classifier(labelled, labels, idfs, prog)
    write_version(folder, pairs, idfs, index, classifier=classifier)


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it, so a big training's peak would stay the
    bot's size); nothing where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _quick_name(space: GuildSpace, name: str) -> str:
    meta = read_json(space.models / name / "meta.json") or {}
    return str(meta.get("quick_model") or "quick") if isinstance(meta, dict) else "quick"


def _classifier(labelled: list[tuple[str, str]], labels: list[str], idfs: list[np.ndarray],
                prog: Progress) -> tuple[sp.csr_matrix, np.ndarray, list[str]] | None:
    """(coefficients, intercepts, labels) of the labelled texts' classifier; None with fewer than two labels."""
    if len(labels) < 2:
        if labelled:
            prog.events.append(f"Only one label ({labels[0]!r}): no classifier trained, two are needed")
        return None
    x = features([t for t, _ in labelled], idfs)
    y = np.array([label for _, label in labelled])
    clf = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0)
    rng = np.random.default_rng(0)
    for epoch in range(CLASSIFIER_EPOCHS):
        order = rng.permutation(len(y))
        clf.partial_fit(x[order], y[order], classes=np.array(labels))
        loss = float(log_loss(y, clf.predict_proba(x), labels=labels))
        prog.tick(loss, f"Epoch {epoch + 1}/{CLASSIFIER_EPOCHS}: training loss={loss:.4f}")
    return sp.csr_matrix(clf.coef_.astype(np.float32)), clf.intercept_.astype(np.float32), labels


def _claim(space: GuildSpace, tmp: Path, meta: dict[str, Any], prog: Progress, *, final: bool = True) -> str:
    """Number the version built in ``tmp`` into place (``final``: the job's last step)."""
    prog.check()  # a cancel before this point leaves no version
    name = VERSIONS.claim(space.models, tmp, meta)
    if final:
        prog.step = prog.total_steps
        prog.events.append(f"Saved model {name}")
    return name


def _quick_vectors(folder: Path, pairs: list[tuple[str, str]], quick: Embedder, prog: Progress) -> None:
    """The quick model's vectors into ``folder`` (written in blocks, never held whole)."""
    with _Matrix.create(folder / QUICK_VECTORS[0], len(pairs), quick.dim) as out:
        for start in range(0, len(pairs), CHUNK_ROWS):
            block = pairs[start:start + CHUNK_ROWS]
            rows = np.arange(start, start + len(block))
            out.write(rows, quick.index_vectors([p for p, _ in block], [a for _, a in block], prog.check))
        out.sync()
    atomic_write_json(folder / QUICK_VECTORS[1], describe_vectors(quick, len(pairs)))


def _plan(space: GuildSpace, work: Work, pairs: list[tuple[str, str]], embedder: Embedder,
          prog: Progress) -> tuple[np.ndarray, np.ndarray, int]:
    """(rows to embed in order, their token counts, how many are done): the saved plan of a resumed job, or a
    new one with the previous version's vectors of unchanged pairs copied in."""
    state = work.state()
    if (state.get("fingerprint") == embedder.fingerprint and state.get("rows") == len(pairs)
            and work.vectors.is_file() and (work.path / "todo.npy").is_file()):
        plan = np.load(work.path / "todo.npy", allow_pickle=False)
        done = min(int(state.get("done") or 0), plan.shape[1])
        prog.events.append(f"Resuming: {done:,} of {plan.shape[1]:,} pairs were embedded before the stop")
        return plan[0], plan[1], done
    previous, row_of = previous_vectors(space, embedder)
    todo = []
    with _Matrix.create(work.vectors, len(pairs), embedder.dim) as out:
        reused_to, reused_from = [], []
        for i, pair in enumerate(pairs):
            row = row_of.get(pair)
            if row is None:
                todo.append(i)
            else:
                reused_to.append(i)
                reused_from.append(row)
        if reused_to and previous is not None:
            for start in range(0, len(reused_to), CHUNK_ROWS):
                to = np.asarray(reused_to[start:start + CHUNK_ROWS])
                out.write(to, np.asarray(previous[reused_from[start:start + CHUNK_ROWS]]))
            prog.events.append(f"Reused the vectors of {len(reused_to)} unchanged pairs")
        out.sync()
    del previous, row_of
    rows = np.asarray(todo, dtype=np.int64)
    counts = np.ones(len(rows), dtype=np.int64)  # in pair order until _order (after a quick stage: it takes seconds)
    np.save(work.path / "todo.npy", np.stack([rows, counts]), allow_pickle=False)
    work.set_state({"fingerprint": embedder.fingerprint, "rows": len(pairs), "todo": len(rows), "done": 0})
    return rows, counts, 0


def _order(work: Work, pairs: list[tuple[str, str]], embedder: Embedder,
           plan: tuple[np.ndarray, np.ndarray, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """The plan's rows shortest first (by token count), before any is embedded: each batch is then texts of
    about one length, so little goes into padding, and each chunk holds about CHUNK_TOKENS tokens."""
    rows, counts, done = plan
    state = work.state()
    if done or state.get("ordered"):
        return plan
    found = embedder.token_counts(embedder.index_texts([pairs[i][0] for i in rows], [pairs[i][1] for i in rows]))
    if found is not None:
        order = np.argsort(found, kind="stable")
        rows, counts = rows[order], found[order]
        np.save(work.path / "todo.npy", np.stack([rows, counts]), allow_pickle=False)
    work.set_state({**state, "ordered": True})
    return rows, counts, 0


def _chunks(tokens: np.ndarray, start: int) -> Iterator[tuple[int, int]]:
    """[a, b) ranges from ``start`` of about CHUNK_TOKENS tokens (CHUNK_ROWS rows at most) each."""
    a = start
    while a < len(tokens):
        total = np.cumsum(tokens[a:a + CHUNK_ROWS])
        b = a + max(1, int(np.searchsorted(total, CHUNK_TOKENS, side="right")))
        yield a, b
        a = b


def _embed(work: Work, pairs: list[tuple[str, str]], embedder: Embedder, plan: tuple[np.ndarray, np.ndarray, int],
           prog: Progress) -> None:
    """Embed the plan's rows still to do, chunk by chunk, into the work's vectors file; after each chunk is on
    disk, save the count and report pairs done, pairs a second and the time left."""
    todo, tokens, done = _order(work, pairs, embedder, plan)
    prog.total, prog.done = len(todo), done
    state = work.state()
    started = time.monotonic()
    made = made_tokens = 0
    tokens_left = int(tokens[done:].sum())
    with _Matrix.open(work.vectors) as out:
        for a, b in _chunks(tokens, done):
            prog.check()
            rows = todo[a:b]
            out.write(rows, embedder.index_vectors([pairs[i][0] for i in rows], [pairs[i][1] for i in rows],
                                                   prog.check))
            out.sync()
            work.set_state({**state, "done": b})
            made += b - a
            chunk_tokens = int(tokens[a:b].sum())
            made_tokens += chunk_tokens
            tokens_left -= chunk_tokens
            seconds = max(time.monotonic() - started, 1e-6)
            prog.done, prog.rate = b, made / seconds
            prog.eta = tokens_left * seconds / max(made_tokens, 1)  # by tokens: the long pairs come last
    prog.eta = 0.0


def _place_vectors(work: Work, folder: Path, embedder: Embedder, rows: int) -> None:
    """Move the finished vectors file into a version folder, described first: until the file is there the
    description names a file that is missing, and the version answers as it did (its quick vectors)."""
    atomic_write_json(folder / VECTORS[1], describe_vectors(embedder, rows))
    os.replace(work.vectors, folder / VECTORS[0])
    fsync_dir(folder)


class _Matrix:
    """A float32 ``.npy`` matrix on disk whose rows are written in place (``os.pwrite``), so a big one is never
    held in memory; ``sync`` puts what was written on disk."""

    def __init__(self, path: Path, fd: int) -> None:
        self.fd = fd
        with open(path, "rb") as fh:
            if np.lib.format.read_magic(fh) != (1, 0):
                os.close(fd)
                raise ValueError(f"{path.name} is not a matrix this module wrote")
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            self.offset = fh.tell()
        if dtype != np.float32 or len(shape) != 2:
            os.close(fd)
            raise ValueError(f"{path.name} is not a float32 matrix")
        self.row_bytes = int(shape[1]) * 4

    @classmethod
    def create(cls, path: Path, rows: int, dim: int) -> _Matrix:
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
            fh.truncate(fh.tell() + rows * dim * 4)  # zeros, sparse until written
        return cls(path, os.open(path, os.O_RDWR))

    @classmethod
    def open(cls, path: Path) -> _Matrix:
        return cls(path, os.open(path, os.O_RDWR))

    def write(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        for r, vec in zip(rows.tolist(), data):
            os.pwrite(self.fd, vec.tobytes(), self.offset + r * self.row_bytes)

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def __enter__(self) -> _Matrix:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
