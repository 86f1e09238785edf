"""The offline default backend: trains in seconds on CPU, no network, no pickle.

Answers come from nearest-neighbour retrieval over the trained prompt -> answer pairs: by meaning
with sentence embeddings (``training.embedding``, ``EMBED_MODEL``), or by word matching (TF-IDF over
word 1-2-grams + char 2-4-grams, hashed) when no embedding model could be loaded. When the closest
pair is not close enough, or not clearly ahead of a different answer, the answer is "I don't know"
and how to teach it. Corrections (``!correct``) count at once: they are searched before the trained
pairs, without waiting for the next training. Labelled texts train a linear classifier (logistic
loss, SGD epochs so there is a real loss curve to show) when there are at least two labels.

Every training writes a new numbered version ``space.models/local-v<N>/`` built in a hidden
temp folder and renamed into place, so a crash never leaves half a model and older versions
stay for rollback. Models are stored as ``.npz``/``.npy``/JSON and loaded with
``allow_pickle=False``: a file dropped into the data folder cannot run code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss
from sklearn.preprocessing import normalize

from dataset import corrections as records
from errors import BackendError, InvalidInput, NotFound
from storage import atomic_write_json
from training.backend import History, JobRecord, JobUpdate, Method, TrainingBackend
from training.embedding import (
    DEFAULT_EMBED_MODEL,
    DISABLED,
    Embedder,
    decide,
    load_embedder,
    load_vectors,
    save_vectors,
    top_rows,
)
from training.versions import Versions, new_tmp_dir

if TYPE_CHECKING:
    from config import Settings
    from dataset.compile import Compiled
    from storage import GuildSpace

log = logging.getLogger(__name__)

VERSIONS = Versions("local-v", "a local model name")

N_FEATURES = 2**20  # per analyzer; hashed, so no vocabulary has to be stored
MIN_SIMILARITY = 0.3  # below this the closest example is about something else
CLASSIFIER_EPOCHS = 15
CACHE_SIZE = 8
CANDIDATE_POSTING_LIMIT = 2_000  # postings longer than this (and than 1% of prompts) are skipped
TOP_K = 16  # candidates scored exactly
THREAD_ABOVE = 5_000  # word matching answers in a worker thread when the index is this big
REPORT_SECONDS = 10  # a long embedding reports its progress this often
SUGGEST = 2  # trained questions offered with a "don't know" (measured: the right one is among 2 in 8 of 10)
VERBATIM = 0.8  # word-matching similarity of a near-verbatim question: its trained answer, embeddings or not

_WORD = HashingVectorizer(
    analyzer="word", ngram_range=(1, 2), n_features=N_FEATURES, alternate_sign=False, norm=None,
    token_pattern=r"(?u)\b\w+\b", strip_accents="unicode",
)
_CHAR = HashingVectorizer(
    analyzer="char_wb", ngram_range=(2, 4), n_features=N_FEATURES, alternate_sign=False, norm=None,
    strip_accents="unicode",
)


class _Cancelled(Exception):
    pass


# ---------------------------------------------------------------- features

def _counts(texts: Sequence[str]) -> list[sp.csr_matrix]:
    return [_WORD.transform(texts).tocsr(), _CHAR.transform(texts).tocsr()]


def _idf(counts: sp.csr_matrix) -> np.ndarray:
    """Smoothed idf like scikit-learn's; 0 for features never seen (they are ignored)."""
    n = counts.shape[0]
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    idf = np.zeros(counts.shape[1], dtype=np.float32)
    seen = df > 0
    idf[seen] = np.log((1 + n) / (1 + df[seen])) + 1
    return idf


def _weigh(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    m = counts.astype(np.float32, copy=True)
    m.data = (1.0 + np.log(m.data)) * idf[m.indices]
    m.eliminate_zeros()
    return normalize(m, copy=False)


def _features(texts: Sequence[str], idfs: Sequence[np.ndarray]) -> sp.csr_matrix:
    parts = [_weigh(c, idf) for c, idf in zip(_counts(texts), idfs)]
    # Each part has unit norm; scaling by 1/sqrt(2) keeps the whole row unit norm (cosine = dot).
    return (sp.hstack(parts, format="csr") * (1 / math.sqrt(2))).astype(np.float32)


def _query(text: str, idfs: Sequence[np.ndarray]) -> sp.csr_matrix:
    """The feature row of one text, like ``_features`` but without its per-call overhead (hot path)."""
    idx_parts, val_parts = [], []
    for offset, (vec, idf) in enumerate(zip((_WORD, _CHAR), idfs)):
        c = vec.transform([text])
        w = (1.0 + np.log(c.data.astype(np.float32))) * idf[c.indices]
        keep = w != 0
        w = w[keep]
        norm = float(np.sqrt(np.dot(w, w)))
        if norm:
            idx_parts.append(c.indices[keep].astype(np.int64) + offset * N_FEATURES)
            val_parts.append(w / (norm * math.sqrt(2)))
    if not idx_parts:
        return sp.csr_matrix((1, 2 * N_FEATURES), dtype=np.float32)
    idx = np.concatenate(idx_parts)
    val = np.concatenate(val_parts).astype(np.float32)
    order = np.argsort(idx)
    return sp.csr_matrix((val[order], idx[order], np.array([0, len(idx)])), shape=(1, 2 * N_FEATURES))


def _rows_dot(mat: sp.csr_matrix, cols: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """``mat @ q`` for a sparse q given as sorted (cols, vals), without scipy's O(features) transposes."""
    if not mat.nnz or not len(cols):
        return np.zeros(mat.shape[0], dtype=np.float64)
    pos = np.searchsorted(cols, mat.indices)
    pos[pos >= len(cols)] = 0
    hit = cols[pos] == mat.indices
    contrib = np.where(hit, mat.data * vals[pos], 0.0)
    rows = np.repeat(np.arange(mat.shape[0]), np.diff(mat.indptr))
    return np.bincount(rows, weights=contrib, minlength=mat.shape[0])


def _norm_key(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


# ---------------------------------------------------------------- data from the compiled dataset

def pairs_from(compiled: Compiled) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from chat lines and DPO preferred outputs; later duplicates win."""
    found: list[tuple[str, str]] = []
    for line in compiled.supervised:
        last_user: str | None = None
        for msg in line.get("messages") or []:
            role, content = msg.get("role"), msg.get("content")
            if not isinstance(content, str) or not content.strip():
                continue
            if role == "user":
                last_user = content
            elif role == "assistant" and last_user:
                found.append((last_user, content))
    for line in compiled.preference:
        users = [m.get("content") for m in (line.get("input") or {}).get("messages") or []
                 if m.get("role") == "user" and isinstance(m.get("content"), str)]
        preferred = [m.get("content") for m in line.get("preferred_output") or []
                     if isinstance(m.get("content"), str)]
        if users and preferred:
            found.append((users[-1], preferred[0]))
    # Corrections come after the data they correct, so the last answer for a prompt wins.
    latest: dict[str, tuple[str, str]] = {}
    for prompt, answer in found:
        key = _norm_key(prompt)
        latest.pop(key, None)
        latest[key] = (prompt, answer)
    return list(latest.values())


# ---------------------------------------------------------------- a trained version

@dataclass
class LocalModel:
    """A loaded version: what answering needs, nothing else."""

    name: str
    idfs: list[np.ndarray]
    index: sp.csr_matrix | None  # rows = prompts
    answers: list[str]
    prompts: list[str]
    classes: list[str]
    coef: sp.csr_matrix | None  # (n_classes or 1) x features
    intercept: np.ndarray | None
    vectors: np.ndarray | None = None  # sentence embeddings of the pairs (rows = prompts), None: word matching

    def __post_init__(self) -> None:
        # Column-major copy = an inverted index: feature -> (prompts having it, weights).
        self.postings = self.index.tocsc() if self.index is not None else None
        # Exact questions always get their trained answer, whatever the scores say.
        self.exact = {_norm_key(p): i for i, p in enumerate(self.prompts)}

    def nearest(self, text: str) -> tuple[int, float]:
        """Index and cosine similarity of the closest trained prompt.

        Candidates come from the query's rarer features (features present in most prompts cost the
        most and say the least); the best few are then scored exactly, so the similarity is exact.
        """
        if self.index is None or self.postings is None or not self.answers:
            return -1, 0.0
        q = _query(text, self.idfs)
        if not q.nnz:
            return -1, 0.0
        n = len(self.answers)
        indptr, indices, data = self.postings.indptr, self.postings.indices, self.postings.data
        cols, vals = q.indices, q.data
        lens = indptr[cols + 1] - indptr[cols]
        keep = lens <= max(CANDIDATE_POSTING_LIMIT, n // 100)
        if not keep.any():
            keep[:] = True
        rows = [indices[indptr[c]:indptr[c + 1]] for c in cols[keep]]
        weights = [data[indptr[c]:indptr[c + 1]] * v for c, v in zip(cols[keep], vals[keep])]
        if not rows or not sum(len(r) for r in rows):
            return -1, 0.0
        approx = np.bincount(np.concatenate(rows), weights=np.concatenate(weights), minlength=n)
        # Partition only the touched prompts: argpartition over a mostly-zero array is very slow.
        touched = np.flatnonzero(approx)
        k = min(TOP_K, len(touched))
        if len(touched) > k:
            cand = touched[np.argpartition(approx[touched], len(touched) - k)[len(touched) - k:]]
        else:
            cand = touched
        exact = _rows_dot(self.index[cand], cols, vals)
        best = int(exact.argmax())
        return int(cand[best]), float(exact[best])

    def label(self, text: str) -> str | None:
        if self.coef is None or self.intercept is None:
            return None
        q = _query(text, self.idfs)
        scores = _rows_dot(self.coef, q.indices, q.data) + self.intercept
        if len(self.classes) == 2:  # binary SGD keeps one row: positive score -> classes[1]
            return self.classes[1] if scores[0] > 0 else self.classes[0]
        return self.classes[int(scores.argmax())]


def _sparse_idf(idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.flatnonzero(idf).astype(np.int64)
    return idx, idf[idx]


def _dense_idf(idx: np.ndarray, val: np.ndarray) -> np.ndarray:
    idf = np.zeros(N_FEATURES, dtype=np.float32)
    idf[idx] = val
    return idf


def version_numbers(space: GuildSpace) -> list[int]:
    """Numbers of the finished local versions on disk, ascending."""
    return VERSIONS.numbers(space.models)


def load_version(space: GuildSpace, name: str, embedder: Embedder | None = None) -> LocalModel:
    """Load a version from disk (sync; run in a thread).

    With an ``embedder``, the saved sentence vectors are used when that model made them; a version
    trained before embeddings (or with another ``EMBED_MODEL``) is embedded again here, once.
    """
    meta = VERSIONS.read_meta(space.models, name)
    folder = space.models / name
    with np.load(folder / "idf.npz", allow_pickle=False) as z:
        idfs = [_dense_idf(z["w_idx"], z["w_val"]), _dense_idf(z["c_idx"], z["c_val"])]
    pairs = json.loads((folder / "answers.json").read_text(encoding="utf-8"))
    index = sp.load_npz(folder / "index.npz").tocsr() if pairs else None
    coef = intercept = None
    classes: list[str] = []
    if (folder / "classifier.json").is_file():
        info = json.loads((folder / "classifier.json").read_text(encoding="utf-8"))
        classes = list(info["classes"])
        intercept = np.asarray(info["intercept"], dtype=np.float32)
        coef = sp.load_npz(folder / "classifier.npz").tocsr()
    prompts, answers = [p["prompt"] for p in pairs], [p["answer"] for p in pairs]
    vectors = None
    if embedder is not None and pairs:
        vectors = load_vectors(folder, embedder, len(pairs))
        if vectors is None:
            log.info("%s of guild %s has no %s vectors: embedding its %d pairs now", name, space.guild_id,
                     embedder.name, len(pairs))
            vectors = embedder.index_vectors(prompts, answers)
            try:  # kept with the version, so the next start (or a retrain) does not embed them again
                save_vectors(folder, vectors, embedder)
            except OSError as exc:
                log.warning("%s of guild %s: the new vectors could not be saved (%s); they are used from memory",
                            name, space.guild_id, exc)
    log.info("loaded %s for guild %s (%d pairs, %d labels, %s)", name, space.guild_id, meta.get("pairs"),
             len(classes), f"{embedder.name} embeddings" if vectors is not None else "word matching")
    return LocalModel(name, idfs, index, answers, prompts, classes, coef, intercept, vectors)


def _previous_vectors(space: GuildSpace, embedder: Embedder) -> dict[tuple[str, str], np.ndarray]:
    """Rows of the newest version this embedder indexed, by (prompt, answer): a retrain reuses them.

    A transformer embeds ~190 pairs a second here, so re-embedding 10k unchanged pairs for every
    ``!train`` would take most of a minute; the vectors of a pair only depend on its text and the model.
    """
    for number in reversed(version_numbers(space)):
        folder = space.models / VERSIONS.name(number)
        try:
            pairs = json.loads((folder / "answers.json").read_text(encoding="utf-8"))
            vectors = load_vectors(folder, embedder, len(pairs))
        except (OSError, ValueError):
            continue
        if vectors is not None:
            return {(p["prompt"], p["answer"]): vectors[i] for i, p in enumerate(pairs)}
    return {}


def _reuse(pairs: list[tuple[str, str]], known: dict[tuple[str, str], np.ndarray],
           dim: int) -> tuple[np.ndarray, list[int]]:
    """Vectors for ``pairs`` with the ``known`` rows filled in, and the indexes still to embed."""
    vectors = np.zeros((len(pairs), dim), dtype=np.float32)
    todo = []
    for i, pair in enumerate(pairs):
        row = known.get(pair)
        if row is None:
            todo.append(i)
        else:
            vectors[i] = row
    return vectors, todo


def _embed_pairs(space: GuildSpace, pairs: list[tuple[str, str]], embedder: Embedder,
                 cancelled: Callable[[], bool], report: Callable[[str], None]) -> np.ndarray:
    """Index vectors for ``pairs``, reusing the previous version's rows; checks ``cancelled`` per chunk."""
    vectors, todo = _reuse(pairs, _previous_vectors(space, embedder), embedder.dim)
    if len(pairs) > len(todo):
        report(f"Reused the vectors of {len(pairs) - len(todo)} unchanged pairs")
    started = last = time.monotonic()
    for done in range(0, len(todo), embedder.chunk):
        if cancelled():
            raise _Cancelled()
        rows = todo[done:done + embedder.chunk]
        vectors[rows] = embedder.index_vectors([pairs[i][0] for i in rows], [pairs[i][1] for i in rows])
        now = time.monotonic()
        if now - last >= REPORT_SECONDS and done + len(rows) < len(todo):
            last = now
            left = (now - started) / (done + len(rows)) * (len(todo) - done - len(rows))
            report(f"Embedded {done + len(rows)}/{len(todo)} pairs (about {left:.0f} s left)")
    return vectors


def _suggestions(scored: Sequence[tuple[float, str, int, str]], minimum: float | None) -> list[str]:
    """Up to ``SUGGEST`` trained questions (of different answers) scoring at least ``minimum``, best first."""
    if minimum is None:
        return []
    picked: list[str] = []
    answers: set[str] = set()
    for score, answer, _, question in scored:  # sorted best first
        if score < minimum or len(picked) == SUGGEST:
            break
        if answer not in answers:
            answers.add(answer)
            picked.append(question)
    return picked


def _short(question: str, limit: int = 120) -> str:
    """A trained question on one line, cut to ``limit`` characters, for a suggestion."""
    flat = " ".join(question.split())
    return flat if len(flat) <= limit else flat[:limit - 1].rstrip() + "…"


def train_version(
    space: GuildSpace,
    pairs: list[tuple[str, str]],
    labelled: list[tuple[str, str]],
    *,
    job_id: str,
    method: str,
    progress: Callable[[int, float | None, str | None], None] = lambda step, loss, event: None,
    cancelled: Callable[[], bool] = lambda: False,
    embedder: Embedder | None = None,
) -> str:
    """Fit and save a new version; returns its name (sync and CPU-bound: run in a thread).

    With an ``embedder`` the prompts' sentence vectors are saved too (``embeddings.npy``).
    """
    started = time.time()
    labels = sorted({label for _, label in labelled})
    use_classifier = len(labels) >= 2
    step = 0

    def tick(loss: float | None = None, event: str | None = None) -> None:
        nonlocal step
        if cancelled():
            raise _Cancelled()
        step += 1
        progress(step, loss, event)

    texts = [p for p, _ in pairs] + [t for t, _ in labelled]
    counts = _counts(texts)
    idfs = [_idf(c) for c in counts]
    tick(event=f"Vectorised {len(texts)} texts")
    n_pairs = len(pairs)
    index = None
    if n_pairs:
        parts = [_weigh(c[:n_pairs], idf) for c, idf in zip(counts, idfs)]
        index = (sp.hstack(parts, format="csr") * (1 / math.sqrt(2))).astype(np.float32)
    tick(event=f"Indexed {n_pairs} prompt/answer pairs")
    vectors = None
    if embedder is not None and n_pairs:
        vectors = _embed_pairs(space, pairs, embedder, cancelled, lambda event: progress(step, None, event))
        tick(event=f"Embedded {n_pairs} pairs with {embedder.name}")

    coef = intercept = None
    if use_classifier:
        x = _features([t for t, _ in labelled], idfs)
        y = np.array([label for _, label in labelled])
        clf = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0)
        rng = np.random.default_rng(0)
        for epoch in range(CLASSIFIER_EPOCHS):
            order = rng.permutation(len(y))
            clf.partial_fit(x[order], y[order], classes=np.array(labels))
            loss = float(log_loss(y, clf.predict_proba(x), labels=labels))
            tick(loss, f"Epoch {epoch + 1}/{CLASSIFIER_EPOCHS}: training loss={loss:.4f}")
        coef = sp.csr_matrix(clf.coef_.astype(np.float32))
        intercept = clf.intercept_.astype(np.float32)
    elif labelled:
        progress(step, None, f"Only one label ({labels[0]!r}): no classifier trained, two are needed")

    tmp = new_tmp_dir(space.models)
    try:
        w_idx, w_val = _sparse_idf(idfs[0])
        c_idx, c_val = _sparse_idf(idfs[1])
        np.savez(tmp / "idf.npz", w_idx=w_idx, w_val=w_val, c_idx=c_idx, c_val=c_val)
        atomic_write_json(tmp / "answers.json", [{"prompt": p, "answer": a} for p, a in pairs])
        if index is not None:
            sp.save_npz(tmp / "index.npz", index)
        if vectors is not None and embedder is not None:
            save_vectors(tmp, vectors, embedder)
        if coef is not None and intercept is not None:
            sp.save_npz(tmp / "classifier.npz", coef)
            atomic_write_json(tmp / "classifier.json", {"classes": labels, "intercept": intercept.tolist()})
        if cancelled():
            raise _Cancelled()
        name = VERSIONS.claim(space.models, tmp, {
            "job_id": job_id, "method": method,
            "created_at": time.time(), "seconds": round(time.time() - started, 3),
            "pairs": n_pairs, "labelled": len(labelled), "labels": labels if use_classifier else [],
            "embed_model": embedder.name if vectors is not None and embedder is not None else None,
            "dataset": f"guild {space.guild_id}: compiled data, corrections and feedback",
        })
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tick(event=f"Saved model {name}")
    return name


# ---------------------------------------------------------------- the backend

@dataclass
class _Run:
    job_id: str
    total_steps: int
    status: str = "running"
    step: int = 0
    model: str | None = None
    error: str | None = None
    cancel: threading.Event | None = None
    task: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self.losses: list[tuple[int, float]] = []
        self.events: list[str] = []
        self.reported_events = 0
        self.cancel = threading.Event()


def correction_applies(record: dict[str, Any]) -> bool:
    """Whether a stored correction answers questions now (before the next training).

    ``records.list_corrections`` marks each with ``approved`` from the review queue: a member's
    correction waits (``"approved": false``) until an admin approves it.
    """
    return record.get("approved", True) is not False and bool(str(record.get("correction") or "").strip())


@dataclass
class _Overlay:
    """A guild's applicable corrections, searchable like a trained version."""

    signature: tuple[tuple[int, int], ...]  # records.corrections_signature when it was built
    prompts: list[str]
    answers: list[str]
    vectors: np.ndarray | None

    def __post_init__(self) -> None:
        self.exact = {_norm_key(p): i for i, p in enumerate(self.prompts)}


class LocalBackend(TrainingBackend):
    """Offline retrieval + classifier models, one numbered version per training."""

    name = "local"
    trainer_title = "The local model"
    methods = ("supervised",)  # retrieval has no preference training: corrections already win outright
    poll_seconds = 0.5  # jobs run in this process and finish in seconds
    ignored_check_codes = frozenset({"missing_system_message", "too_many_tokens"})
    blurb = ("Model: the built-in **local** backend — it learns from this server's examples and corrections "
             "in seconds, answers with the closest example it was trained on and classifies labelled texts. "
             "It retrieves, it does not generate new text.")
    no_loss_reason = ("No loss curve: this local model answers by finding the closest trained example, "
                      "which has no training loss (only labelled texts train a classifier with one).")
    no_loss_status = "none (nearest-example model)"
    applies_corrections_now = True  # corrections are searched before the trained pairs
    versions = VERSIONS  # the models are the local-v<N> folders on disk

    def __init__(self, settings: Settings, *, openai_client: Any = None, embed_model: str | None = None) -> None:
        super().__init__(settings)
        self.prefix = settings.prefix
        self.embed_model = embed_model or settings.embed_model or DEFAULT_EMBED_MODEL
        self._runs: dict[str, _Run] = {}
        self._cache: OrderedDict[tuple[int, str], LocalModel] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._embed_lock = threading.Lock()
        self._embedder: Embedder | None = None
        self._embed_error: str | None = None  # why the embedding model is not in use
        self._embed_tried = False
        self._note_pending = False  # the one-time "word matching only" note for users
        self._overlays: dict[int, _Overlay] = {}

    # ------------------------------------------------------------ the embedding model

    def embedder(self) -> Embedder | None:
        """The loaded embedding model, loading it on first use (sync); None: word matching."""
        if self._embed_tried:
            return self._embedder
        with self._embed_lock:
            if not self._embed_tried:
                if self.embed_model.lower() in DISABLED:
                    self._embed_error = "EMBED_MODEL is off"
                    log.info("EMBED_MODEL=%s: answering by word matching", self.embed_model)
                else:
                    try:
                        self._embedder = load_embedder(self.embed_model)
                        log.info("embedding model %s loaded from %s (%d dimensions)", self.embed_model,
                                 self._embedder.source, self._embedder.dim)
                        if not self._embedder.calibrated:
                            log.warning("EMBED_MODEL=%s has no calibrated thresholds: using strict defaults "
                                        "(run bench/calibrate.py to measure it)", self.embed_model)
                    except (BackendError, OSError, ValueError, RuntimeError) as exc:
                        self._embed_error = f"EMBED_MODEL={self.embed_model} could not be loaded: {exc}"
                        self._note_pending = True
                        log.warning("%s; answering by word matching instead", self._embed_error)
                self._embed_tried = True
        return self._embedder

    def describe(self) -> str:
        """One line for ``!model``/``!help``: how this backend answers."""
        emb = self.embedder()
        if emb is not None:
            offers = " and offers the closest questions it knows" if emb.thresholds.suggest is not None else ""
            return f"answers by meaning with the `{emb.name}` embedding model; unsure: says it doesn't know{offers}"
        return f"answers by word matching ({self._embed_error or 'no embedding model'})"

    async def start(self) -> None:
        """Load the embedding model in a worker thread, before the first message needs it."""
        await asyncio.to_thread(self.embedder)

    async def close(self) -> None:
        for run in self._runs.values():
            if run.task and not run.task.done():
                run.cancel.set() if run.cancel else None
                run.task.cancel()

    async def start_job(
        self, space: GuildSpace, compiled: Compiled, *, method: Method, suffix: str
    ) -> JobRecord:
        """Start training in a worker thread; returns at once with a running job."""
        pairs = pairs_from(compiled)
        labelled = [(t, lab) for t, lab in compiled.labelled if t.strip() and lab.strip()]
        if method == "dpo" and not compiled.preference:
            raise InvalidInput("DPO needs preference pairs (a preferred and a rejected answer); there are none yet.")
        if not pairs and len({lab for _, lab in labelled}) < 2:
            raise InvalidInput("Nothing to train on: add prompt/answer examples or texts with at least two labels.")
        classifier = len({lab for _, lab in labelled}) >= 2
        embedder = await asyncio.to_thread(self.embedder)
        steps = 3 + (CLASSIFIER_EPOCHS if classifier else 0) + (1 if embedder is not None and pairs else 0)
        run = _Run(job_id=f"local-{uuid.uuid4().hex[:12]}", total_steps=steps)
        self._runs[run.job_id] = run

        def progress(step: int, loss: float | None, event: str | None) -> None:
            # Called from the worker thread; plain attribute writes are atomic under the GIL.
            run.step = step
            if loss is not None:
                run.losses.append((step, loss))
            if event:
                run.events.append(event)

        async def work() -> None:
            try:
                run.model = await asyncio.to_thread(
                    train_version, space, pairs, labelled, job_id=run.job_id, method=method,
                    progress=progress, cancelled=run.cancel.is_set if run.cancel else (lambda: False),
                    embedder=embedder,
                )
                run.step, run.status = run.total_steps, "succeeded"
            except _Cancelled:
                run.status = "cancelled"
            except asyncio.CancelledError:
                run.status, run.error = "cancelled", "The bot shut down during training."
                raise
            except Exception as exc:  # a bug or a disk error: report it on the job, keep the bot alive
                log.exception("local training %s failed", run.job_id)
                run.status, run.error = "failed", f"Local training failed: {exc}"

        run.task = asyncio.get_running_loop().create_task(work(), name=f"train-{run.job_id}")
        return {
            "id": run.job_id, "backend": self.name, "method": method, "status": "running",
            "step": 0, "total_steps": run.total_steps, "pairs": len(pairs), "labelled": len(labelled),
        }

    async def poll(self, space: GuildSpace, job: JobRecord) -> JobUpdate:
        """Progress of a training started by this process; after a restart, what the disk says."""
        run = self._runs.get(job["id"])
        if run is None:
            name = VERSIONS.of_job(space.models, job["id"])
            if name:
                return JobUpdate("succeeded", step=job.get("total_steps"), fine_tuned_model=name)
            return JobUpdate("failed", error="The bot restarted while this training ran; start it again.")
        events = run.events[run.reported_events:]
        run.reported_events += len(events)
        return JobUpdate(
            status=run.status, step=run.step, total_steps=run.total_steps,
            losses=list(run.losses),
            events=events, fine_tuned_model=run.model, error=run.error,
        )

    async def wait(self, job_id: str) -> None:
        """Wait until a job started by this process ends (tests, benchmarks)."""
        run = self._runs.get(job_id)
        if run and run.task:
            await asyncio.shield(run.task)

    async def cancel(self, space: GuildSpace, job: JobRecord) -> JobUpdate:
        run = self._runs.get(job["id"])
        if run is None or run.status != "running":
            return await self.poll(space, job)
        if run.cancel:
            run.cancel.set()
        if run.task:
            await asyncio.wait({run.task})
        return await self.poll(space, job)

    # ------------------------------------------------------------ answering

    def loaded(self, space: GuildSpace, name: str) -> LocalModel:
        """The cached model for (guild, version), loading it if needed (sync; may hit the disk)."""
        key = (space.guild_id, name)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        model = load_version(space, name, self.embedder())
        with self._cache_lock:
            self._cache[key] = model
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return model

    async def _model(self, space: GuildSpace, name: str) -> LocalModel:
        with self._cache_lock:
            cached = self._cache.get((space.guild_id, name))
        if cached is not None:
            return cached
        try:
            return await asyncio.to_thread(self.loaded, space, name)
        except NotFound:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise BackendError(f"Model `{name}` could not be loaded ({exc}); train again or pick another.") from None

    def method_refusal(self, method: str) -> str:
        return (f"The local model does not train with `{method}`: it answers with corrections as soon as they "
                f"are made and learns them in a plain `{self.prefix}train`. For preference (DPO) training of a "
                f"generative model, use `MODEL_BACKEND=hf` or `openai`.")

    def not_trained(self) -> str:
        return (f"I haven't been trained on this server yet. A trainer can add examples and run "
                f"`{self.prefix}train` to teach me.")

    def dont_know(self, suggestions: Sequence[str] = ()) -> str:
        """The honest "I don't know", offering the closest trained questions when there are some."""
        offer = ""
        if suggestions:
            quoted = " or ".join(f"“{_short(q)}”" for q in suggestions)
            offer = f" Did you mean {quoted}? Then ask me that."
        return (f"I don't know that one yet.{offer} If you know the answer, reply to this message with "
                f"`{self.prefix}correct <the right answer>` and I'll use it from now on.")

    def match(self, model: LocalModel | None, prompt: str, overlay: _Overlay | None = None) -> tuple[str, int] | None:
        """(answer, source) for ``prompt`` or None for "don't know"; source 0 = trained, 1 = correction."""
        return self.search(model, prompt, overlay)[0]

    def search(self, model: LocalModel | None, prompt: str,
               overlay: _Overlay | None = None) -> tuple[tuple[str, int] | None, list[str]]:
        """``match``'s result, and when it is None the trained questions worth suggesting instead.

        Sync and CPU-bound: ``answer`` runs it in a thread (with embeddings always, since embedding
        the question is a forward pass; word matching above ``THREAD_ABOVE`` pairs).
        """
        key = _norm_key(prompt)
        if overlay is not None and key in overlay.exact:
            return (overlay.answers[overlay.exact[key]], 1), []
        emb = self.embedder()
        if emb is None or model is not None and model.vectors is None:
            # Word matching: corrections count only for the very same question.
            if model is None:
                return None, []
            if key in model.exact:
                return (model.answers[model.exact[key]], 0), []
            best, sim = model.nearest(prompt)
            return ((model.answers[best], 0) if best >= 0 and sim >= MIN_SIMILARITY else None), []
        query = emb.encode([prompt])[0]
        # Corrections and trained pairs compete in one list; a trained pair whose question was corrected
        # is superseded (dropped), so the correction is not measured against the answer it replaces.
        scored: list[tuple[float, str, int, str]] = []  # (score, answer, source, question)
        corrected = overlay.exact if overlay is not None else {}
        if overlay is not None and overlay.vectors is not None and len(overlay.prompts):
            rows, scores = top_rows(overlay.vectors, query)
            scored += [(float(sc), overlay.answers[r], 1, overlay.prompts[r]) for r, sc in zip(rows, scores)]
        if model is not None and model.vectors is not None:
            if key in model.exact:
                return (model.answers[model.exact[key]], 0), []
            # A question worded almost like a trained one: word matching tells near-identical trained
            # questions apart ("... number 17" vs "... number 1723") where an average of word vectors cannot.
            best, sim = model.nearest(prompt)
            if best >= 0 and sim >= VERBATIM and _norm_key(model.prompts[best]) not in corrected:
                return (model.answers[best], 0), []
            rows, scores = top_rows(model.vectors, query)
            scored += [(float(sc), model.answers[r], 0, model.prompts[r]) for r, sc in zip(rows, scores)
                       if not corrected or _norm_key(model.prompts[r]) not in corrected]
        if not scored:
            return None, []
        scored.sort(key=lambda c: -c[0])
        found = decide(np.arange(len(scored)), np.array([c[0] for c in scored]), [c[1] for c in scored],
                       emb.thresholds)
        if found.row is not None:
            return (scored[found.row][1], scored[found.row][2]), []
        return None, _suggestions(scored, emb.thresholds.suggest)

    def answer_sync(self, model: LocalModel | None, prompt: str, overlay: _Overlay | None = None) -> str:
        """The trained (or corrected) answer closest to ``prompt``, or an honest "I don't know yet"."""
        found, suggestions = self.search(model, prompt, overlay)
        return found[0] if found is not None else self.dont_know(suggestions)

    # ------------------------------------------------------------ corrections count at once

    def _overlay_sync(self, space: GuildSpace) -> _Overlay | None:
        """The guild's corrections as a small index, rebuilt when the corrections file changes."""
        if not space.corrections_file.exists():
            self._overlays.pop(space.guild_id, None)
            return None
        signature = records.corrections_signature(space)
        cached = self._overlays.get(space.guild_id)
        if cached is not None and cached.signature == signature:
            return cached
        latest: dict[str, tuple[str, str]] = {}
        for record in records.list_corrections(space):
            prompt = str(record.get("prompt") or "").strip()
            if prompt and correction_applies(record):
                key = _norm_key(prompt)
                latest.pop(key, None)  # the newest correction of a question wins
                latest[key] = (prompt, str(record["correction"]).strip())
        prompts = [p for p, _ in latest.values()]
        answers = [a for _, a in latest.values()]
        emb = self.embedder()
        vectors = None
        if emb is not None and prompts:
            # Only corrections new since the last overlay are embedded (a forward pass each).
            known = {} if cached is None or cached.vectors is None else dict(
                zip(zip(cached.prompts, cached.answers), cached.vectors))
            vectors, todo = _reuse(list(zip(prompts, answers)), known, emb.dim)
            if todo:
                vectors[todo] = emb.index_vectors([prompts[i] for i in todo], [answers[i] for i in todo])
        overlay = _Overlay(signature, prompts, answers, vectors)
        self._overlays[space.guild_id] = overlay
        log.debug("guild %s: %d correction(s) apply before the next training", space.guild_id, len(prompts))
        return overlay

    async def _overlay(self, space: GuildSpace) -> _Overlay | None:
        cached = self._overlays.get(space.guild_id)
        try:
            if not space.corrections_file.exists():
                return None
            signature = records.corrections_signature(space)
        except OSError as exc:  # an unreadable corrections folder: answer from the trained model alone
            log.warning("guild %s: corrections unreadable (%s); answering without them", space.guild_id, exc)
            return None
        if cached is not None and cached.signature == signature:
            return cached
        try:
            return await asyncio.to_thread(self._overlay_sync, space)
        except OSError as exc:
            log.warning("guild %s: corrections unreadable (%s); answering without them", space.guild_id, exc)
            return None

    def _with_note(self, text: str) -> str:
        """The one-time note that the embedding model is missing, on the first answer after start."""
        if self._note_pending:
            self._note_pending = False
            text += (f"\n-# Note: my embedding model could not be loaded, so I match words only for now "
                     f"(an admin can check `EMBED_MODEL` and the log; `{self.prefix}model` says more).")
        return text

    async def answer(self, space: GuildSpace, model_name: str | None, prompt: str, history: History) -> str:
        """Retrieval answer; ``history`` is not used by this backend (each prompt stands alone)."""
        if not self._embed_tried:
            await asyncio.to_thread(self.embedder)  # loading reads ~90 MB: not on the loop
        overlay = await self._overlay(space)
        model = await self._model(space, model_name) if model_name else None
        if model is None and (overlay is None or not overlay.prompts):
            return self._with_note(self.not_trained())
        if self._embedder is not None or model is not None and len(model.answers) > THREAD_ABOVE:
            # Embedding the question is a transformer's forward pass (~10 ms): never on the loop.
            return self._with_note(await asyncio.to_thread(self.answer_sync, model, prompt, overlay))
        return self._with_note(self.answer_sync(model, prompt, overlay))

    async def predict_label(self, space: GuildSpace, model_name: str | None, text: str) -> str:
        """The classifier's label; falls back to the retrieval answer when no classifier was trained."""
        if not model_name:
            return self.not_trained()
        model = await self._model(space, model_name)
        label = model.label(text)
        if label is not None:
            return label
        if self._embedder is not None or len(model.answers) > THREAD_ABOVE:
            return await asyncio.to_thread(self.answer_sync, model, text)
        return self.answer_sync(model, text)
