"""Local training jobs: :func:`train_version` fits and saves a version, :class:`Runner` runs it in a thread.

A training vectorises the prompts (word matching), embeds the pairs with the embedding model (reusing
the newest version's vectors of unchanged pairs), trains a classifier when the labelled texts have at
least two labels (logistic loss, SGD epochs, so there is a real loss curve to show), then saves a new
version (``store.write_version``, ``store.VERSIONS.claim``). Each step checks for a cancel.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss

from training.backend import Job, JobUpdate
from training.embedding import Embedder
from training.local.retrieval import count_features, features, fit_idf, weigh
from training.local.store import VERSIONS, previous_vectors, reuse_vectors, write_version
from training.versions import new_tmp_dir

if TYPE_CHECKING:
    from storage import GuildSpace

log = logging.getLogger(__name__)

CLASSIFIER_EPOCHS = 15
REPORT_SECONDS = 10  # a long embedding reports its progress this often


class _Cancelled(Exception):
    pass


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
    counts = count_features(texts)
    idfs = [fit_idf(c) for c in counts]
    tick(event=f"Vectorised {len(texts)} texts")
    n_pairs = len(pairs)
    index = None
    if n_pairs:
        parts = [weigh(c[:n_pairs], idf) for c, idf in zip(counts, idfs)]
        index = (sp.hstack(parts, format="csr") * (1 / math.sqrt(2))).astype(np.float32)
    tick(event=f"Indexed {n_pairs} prompt/answer pairs")
    vectors = None
    if embedder is not None and n_pairs:
        vectors = _embed_pairs(space, pairs, embedder, cancelled, lambda event: progress(step, None, event))
        tick(event=f"Embedded {n_pairs} pairs with {embedder.name}")

    coef = intercept = None
    if use_classifier:
        x = features([t for t, _ in labelled], idfs)
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
        write_version(tmp, pairs, idfs, index, vectors=vectors, embedder=embedder,
                      classifier=(coef, intercept, labels) if coef is not None and intercept is not None else None)
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


def _embed_pairs(space: GuildSpace, pairs: list[tuple[str, str]], embedder: Embedder,
                 cancelled: Callable[[], bool], report: Callable[[str], None]) -> np.ndarray:
    """Index vectors for ``pairs``, reusing the previous version's rows; checks ``cancelled`` per chunk."""
    vectors, todo = reuse_vectors(pairs, previous_vectors(space, embedder), embedder.dim)
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


@dataclass
class Run:
    """One training in this process, as its worker thread reports it."""

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


class Runner:
    """The local trainings this process runs, one worker thread each, followed by :meth:`poll`."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}

    def start(self, space: GuildSpace, pairs: list[tuple[str, str]], labelled: list[tuple[str, str]], *,
              method: str, embedder: Embedder | None) -> Run:
        """Start training in a worker thread (from the event loop); returns the running job at once."""
        classifier = len({lab for _, lab in labelled}) >= 2
        steps = 3 + (CLASSIFIER_EPOCHS if classifier else 0) + (1 if embedder is not None and pairs else 0)
        run = Run(job_id=f"local-{uuid.uuid4().hex[:12]}", total_steps=steps)
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
        return run

    async def poll(self, space: GuildSpace, job: Job) -> JobUpdate:
        """Progress of a training started by this process; after a restart, what the disk says."""
        run = self._runs.get(job.id)
        if run is None:
            name = VERSIONS.of_job(space.models, job.id)
            if name:
                return JobUpdate("succeeded", step=job.total_steps, fine_tuned_model=name)
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

    async def cancel(self, space: GuildSpace, job: Job) -> JobUpdate:
        run = self._runs.get(job.id)
        if run is None or run.status != "running":
            return await self.poll(space, job)
        if run.cancel:
            run.cancel.set()
        if run.task:
            await asyncio.wait({run.task})
        return await self.poll(space, job)

    def close(self) -> None:
        """Stop the trainings still running (the bot is closing)."""
        for run in self._runs.values():
            if run.task and not run.task.done():
                run.cancel.set() if run.cancel else None
                run.task.cancel()
