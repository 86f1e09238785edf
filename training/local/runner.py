"""Local training jobs: :class:`Runner` runs :func:`training.local.fit.train_version` in a worker thread per job,
reports its progress, cancels it and resumes it after a restart.

- **Progress**: every poll reads the worker's :class:`~training.local.fit.Progress` (steps, pairs embedded of
  the pairs to embed, pairs a second, time left, the live quick stage).
- **Cancel**: the worker is told to stop (it checks between layers of the encoder) and the job is cancelled
  at once: :meth:`Runner.cancel` waits at most ``CANCEL_WAIT`` for the thread, never for the work.
- **Restart**: a clean stop (``/quit``, SIGTERM) asks the workers to stop and leaves their work folders; a
  kill leaves them too. The next poll of such a job (the watcher's, after the restart) starts it again from
  its work folder, with the vectors it had made; after ``MAX_ATTEMPTS`` starts it fails with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from training.backend import Job, JobUpdate
from training.embedding import Embedder, has_vectors
from training.local.fit import CLASSIFIER_EPOCHS, Cancelled, Progress, Stopped, Work, release_memory, train_version
from training.local.store import VERSIONS

if TYPE_CHECKING:
    from storage import GuildSpace

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # starts of one job (the first + resumes after restarts) before it is declared failed
CANCEL_WAIT = 0.9  # seconds !cancel waits for the worker thread before saying the job is cancelled anyway
CLOSE_WAIT = 3.0  # seconds the bot's stop waits for workers to reach a check and leave their work folder
EmbedderOf = Callable[[], Embedder | None]


@dataclass
class Run:
    """One training in this process."""

    job_id: str
    progress: Progress = field(default_factory=Progress)
    status: str = "running"
    model: str | None = None
    error: str | None = None
    attempts: int = 1
    task: asyncio.Task | None = None
    reported_events: int = 0


@dataclass
class _Resume:
    """What a cut-short job needs to go on (read from its work folder)."""

    pairs: list[tuple[str, str]]
    labelled: list[tuple[str, str]]
    method: str
    attempts: int
    why: str
    done: int
    todo: int


class Runner:
    """The local trainings this process runs, one worker thread each, followed by :meth:`poll`.

    ``on_upgrade(guild_id, name)`` is called (from the worker thread) when a version that answered with quick
    vectors has its full ones: the backend drops its loaded copy.
    """

    def __init__(self, on_upgrade: Callable[[int, str], None] | None = None) -> None:
        self._runs: dict[str, Run] = {}
        self.on_upgrade = on_upgrade

    def start(self, space: GuildSpace, pairs: list[tuple[str, str]], labelled: list[tuple[str, str]], *,
              method: str, embedder: Embedder | None, quick: EmbedderOf | None = None) -> Run:
        """Start training in a worker thread (from the event loop); returns the running job at once."""
        run = Run(job_id=f"local-{uuid.uuid4().hex[:12]}")
        classifier = len({lab for _, lab in labelled}) >= 2
        run.progress.total_steps = 3 + (CLASSIFIER_EPOCHS if classifier else 0) + (embedder is not None and bool(pairs))
        self._launch(space, run, pairs, labelled, method, embedder, quick)
        return run

    def _launch(self, space: GuildSpace, run: Run, pairs: list[tuple[str, str]], labelled: list[tuple[str, str]],
                method: str, embedder: Embedder | None, quick: EmbedderOf | None) -> None:
        self._runs[run.job_id] = run

        def upgraded(name: str) -> None:
            if self.on_upgrade is not None:
                self.on_upgrade(space.guild_id, name)

        async def work() -> None:
            try:
                model = await asyncio.to_thread(
                    train_version, space, pairs, labelled, job_id=run.job_id, method=method, embedder=embedder,
                    quick=quick, progress=run.progress, on_upgrade=upgraded)
                if run.status == "running":  # not cancelled while it saved
                    run.model, run.status = model, "succeeded"
            except Cancelled:
                run.status = "cancelled"
            except Stopped:
                log.info("local training %s stopped with the bot; it resumes at the next start", run.job_id)
            except Exception as exc:  # a bug or a disk error: report it on the job, keep the bot alive
                log.exception("local training %s failed", run.job_id)
                run.status, run.error = "failed", f"Local training failed: {exc}"
            finally:
                await asyncio.to_thread(release_memory)  # what the training held goes back to the system

        run.task = asyncio.get_running_loop().create_task(work(), name=f"train-{run.job_id}")

    async def poll(self, space: GuildSpace, job: Job, embedder: EmbedderOf, quick: EmbedderOf | None = None
                   ) -> JobUpdate:
        """Progress of a training of this process; for a job cut short by a restart, it goes on (or what the disk
        says: finished, or failed after ``MAX_ATTEMPTS`` starts)."""
        run = self._runs.get(job.id)
        if run is not None:
            return self._update(run)
        found = await asyncio.to_thread(self._recover, space, job, embedder)
        if isinstance(found, JobUpdate):
            return found
        run = Run(job_id=job.id, attempts=found.attempts)
        run.progress.total_steps = job.total_steps or 0
        run.progress.step = job.step
        run.progress.done, run.progress.total = found.done, found.todo
        log.info("local training %s: %s; resuming (start %d of %d)", job.id, found.why, found.attempts, MAX_ATTEMPTS)
        self._launch(space, run, found.pairs, found.labelled, found.method, embedder(), quick)
        upd = self._update(run)
        where = f" with {found.done:,} of {found.todo:,} pairs embedded" if found.todo else ""
        upd.events.insert(0, f"The training stopped ({found.why}); resuming{where}")
        return upd

    def _recover(self, space: GuildSpace, job: Job, embedder: EmbedderOf) -> JobUpdate | _Resume:
        """(In a thread) what a job this process does not run is: finished, running elsewhere, to resume, failed."""
        work = Work(space.models, job.id)
        name = VERSIONS.of_job(space.models, job.id)
        if name is not None and not work.busy():
            emb = embedder()
            meta = VERSIONS.read_meta(space.models, name)
            if emb is None or not meta.get("embed_model") or has_vectors(space.models / name, emb,
                                                                                    int(meta.get("pairs") or 0)):
                work.remove()
                return JobUpdate("succeeded", step=job.total_steps, fine_tuned_model=name, eta_s=0.0, stage="")
        if not work.exists():
            return JobUpdate("failed", error="The bot restarted while this training ran; start it again.")
        if work.busy():
            return JobUpdate(job.status)  # another bot process runs it
        attempts = int(job.extra.get("attempts") or 1)
        why = work.why_stopped()
        if attempts >= MAX_ATTEMPTS:
            work.remove()
            error = f"The training stopped {attempts} times without finishing; the last time {why}."
            if name is not None:
                error += f" `{name}` keeps answering with its quick stage's vectors; train again for full quality."
            return JobUpdate("failed", error=error, stage="")
        pairs, labelled, method = work.load_data()
        done, todo = work.progress()
        return _Resume(pairs, labelled, method, attempts + 1, why, done, todo)

    def _update(self, run: Run) -> JobUpdate:
        p = run.progress
        events = p.events[run.reported_events:]
        run.reported_events += len(events)
        running = run.status == "running"
        return JobUpdate(
            status=run.status, step=p.step, total_steps=p.total_steps or None, losses=list(p.losses),
            events=events, fine_tuned_model=run.model, error=run.error,
            live_model=p.live if running else None, stage=p.stage if running else "",
            progress=(p.done, p.total) if p.total else None, examples_per_s=p.rate,
            eta_s=p.eta if running else 0.0, extra={"attempts": run.attempts},
        )

    async def wait(self, job_id: str) -> None:
        """Wait until a job started by this process ends (tests, benchmarks)."""
        run = self._runs.get(job_id)
        if run and run.task:
            await asyncio.shield(run.task)

    async def cancel(self, space: GuildSpace, job: Job) -> JobUpdate:
        """Cancel at once: the worker stops at its next check (within a layer of the encoder)."""
        run = self._runs.get(job.id)
        if run is None:  # cut short by a restart and not resumed yet: nothing runs, drop its work
            def drop() -> JobUpdate:
                work = Work(space.models, job.id)
                if not work.busy():
                    work.remove()
                return JobUpdate("cancelled", stage="")
            return await asyncio.to_thread(drop)
        if run.status == "running":
            run.progress.cancel.set()
            if run.task is not None:
                await asyncio.wait({run.task}, timeout=CANCEL_WAIT)
            if run.status == "running":
                run.status = "cancelled"  # the thread ends at its next check and removes its work folder
        return self._update(run)

    async def close(self) -> None:
        """The bot stops: workers stop at their next check and keep their work folders (resumed at the next start)."""
        running = [run.task for run in self._runs.values() if run.task is not None and not run.task.done()]
        for run in self._runs.values():
            run.progress.stop.set()
        if running:
            await asyncio.wait(running, timeout=CLOSE_WAIT)
