"""A training job's life: started from a server's compiled data, polled until it ends, scored by the evaluation
gate, its model made current (or kept as a candidate), cancelled; the models a server can switch between; !test.

:class:`JobRunner` owns the per-server and per-job locks and the watch lease. Several bot processes may share one
PostgreSQL: exactly one watches a job at a time, the one holding its lease (``jobs.claim``), which it renews on
every poll; when that process dies, its lease runs out (``JOB_LEASE_SECONDS``) and another process takes the
job over (the Training cog looks for such jobs every half lease).

Every method is async; disk and database work runs in threads. No discord here.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dataset import compile as compiler
from dataset import corrections
from dataset.corrections import TestError
from errors import Busy, InvalidInput, NotFound, TrainerError
from storage import GuildSpace, saved
from training import evaluation, jobs
from training.backend import METHODS, TERMINAL, Estimate, Evaluation, History, Job, JobUpdate, Score, TrainingBackend
from training.evaluation import EVAL_MARGIN, Case, EvalResult, parse_cases, run_cases

if TYPE_CHECKING:
    from config import Settings
    from dataset.check import CheckReport, Issue
    from records.db import Database

log = logging.getLogger(__name__)

TEST_CONCURRENCY = 4
# The gate holds back a model trained on fewer than this fraction of the current model's examples.
FEWER_EXAMPLES = 0.5
CONTRIBUTORS_KEPT = 10  # contributors named in a job; the rest are summed under "others"


class WatchedElsewhere(TrainerError):
    """Another bot process holds this job's lease and watches it."""


def top_contributors(counts: dict[str, int], keep: int = CONTRIBUTORS_KEPT) -> list[tuple[str, int]]:
    """The ``keep`` largest (name, count) pairs, plus ("others", rest) when there are more."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    top = ranked[:keep]
    rest = sum(n for _, n in ranked[keep:])
    return top + ([("others", rest)] if rest else [])


def apply_update(job: Job, upd: JobUpdate) -> bool:
    """Merge a poll's update into the job; True if anything changed."""
    before = copy.deepcopy(job)
    job.status = upd.status
    if upd.step is not None:
        job.step = upd.step
    if upd.total_steps:
        job.total_steps = upd.total_steps
    if upd.losses:
        step, loss = max(upd.losses)
        if not job.last_loss or step >= job.last_loss[0]:
            job.last_loss = (int(step), float(loss))
    if upd.events:
        job.events = (job.events + upd.events)[-jobs.KEEP_EVENTS:]
    if upd.fine_tuned_model:
        job.model = upd.fine_tuned_model
    if upd.error:
        job.error = upd.error
    # What a backend reports about its trainer has typed fields; the rest is its own bookkeeping.
    if upd.note is not None:
        job.note = upd.note
    if upd.device is not None:
        job.device = upd.device
    if upd.resumed_from is not None:
        job.resumed_from = upd.resumed_from
    if upd.smoothed_loss is not None:
        job.smoothed_loss = upd.smoothed_loss
    if upd.examples_per_s is not None:
        job.examples_per_s = upd.examples_per_s
    if upd.eta_s is not None:
        job.eta_s = upd.eta_s
    if upd.progress is not None:
        job.progress = upd.progress
    if upd.stage is not None:
        job.stage = upd.stage or None
    if upd.live_model and upd.status not in TERMINAL:
        job.model, job.live = upd.live_model, True
    job.extra.update(upd.extra)
    if upd.status in TERMINAL and not job.finished_at:
        job.finished_at = time.time()
    return job != before


class JobRunner:
    """Starts, follows, scores and cancels a backend's training jobs; switches and tests models."""

    def __init__(self, settings: Settings, backend: TrainingBackend) -> None:
        self.settings = settings
        self.backend = backend
        # Who holds a lease: unique per process run (a restarted bot is another watcher).
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._train_locks: dict[int, asyncio.Lock] = {}
        # poll and cancel read a job, await the backend, then save it: without a lock per job a poll
        # started before a cancel could save its stale copy over the cancelled one.
        self._job_locks: dict[str, asyncio.Lock] = {}

    @property
    def lease_seconds(self) -> float:
        """Long enough for a few polls of the slowest backend, so a live watcher never loses its job."""
        poll = min(self.settings.job_poll_seconds, self.backend.poll_seconds or self.settings.job_poll_seconds)
        return max(self.settings.job_lease_seconds, 2 * poll)

    # ------------------------------------------------------------ start

    def check_method(self, method: str) -> None:
        """InvalidInput unless the backend trains with ``method`` (pure: checked before any data is added)."""
        if method not in METHODS:
            raise InvalidInput(f"Unknown training method `{method}`: use one of {', '.join(METHODS)}.")
        if method not in self.backend.methods:
            raise InvalidInput(self.backend.method_refusal(method))

    def relevant_warnings(self, report: CheckReport) -> list[Issue]:
        """The checker's warnings that matter to the backend in use."""
        return [w for w in report.warnings if w.code not in self.backend.ignored_check_codes]

    async def train(self, space: GuildSpace, *, method: str, started_by: str,
                    channel_id: int) -> tuple[Job, CheckReport]:
        """Compile the server's data, check it, and start a job; InvalidInput (the report) before any upload.

        Busy if a job of this server is still running.
        """
        self.check_method(method)
        lock = self._train_locks.setdefault(space.guild_id, asyncio.Lock())
        if lock.locked():
            raise Busy("A training is being started for this server right now; wait a moment.")
        async with lock:
            await saved("the training job", space.ensure)
            for job in await asyncio.to_thread(jobs.unfinished_jobs, space):
                try:
                    job = await self.poll_job(space, job.id)
                except WatchedElsewhere:
                    pass
                if job.status not in TERMINAL:
                    raise Busy(f"Training job `{job.id}` is still {job.status}; wait for it or cancel it.")
            compiled = await asyncio.to_thread(compiler.compile_guild, space, min_examples=self.backend.min_examples,
                                               trainer=self.backend.trainer_title,
                                               chat=self.settings.train_from_chat)
            report = compiled.report
            if method == "dpo" and compiled.preference_report is not None:
                report = compiled.preference_report  # DPO uploads the preference lines, so check those
            if not report.ok:
                raise InvalidInput(report.format(billed=self.backend.bills_tokens,
                                                 ignore=self.backend.ignored_check_codes))
            started = time.time()
            job = await self.backend.start_job(space, compiled, method=method,  # type: ignore[arg-type]
                                               suffix=f"g{space.guild_id}")
            job.created_at, job.started_by, job.channel_id = started, started_by, channel_id
            job.status_message_id = job.model = job.error = job.finished_at = None
            job.events = []
            job.estimate = Estimate(examples=report.n_examples, tokens=report.est_tokens, epochs=report.epochs,
                                    billed_tokens=report.billed_tokens)
            # Who the examples came from (top few, then the rest counted): provenance for !train and !jobs.
            job.contributors = top_contributors(compiled.contributors)
            if self.settings.eval_gate:
                held = evaluation.holdout(compiled.supervised)
                if held:
                    await saved("the held-out pairs", evaluation.save_holdout, space, job.id, held)
            await saved("the training job", jobs.save_job, space, job)
            await asyncio.to_thread(jobs.claim, space, job.id, self.instance, self.lease_seconds)
            log.info("guild %s: %s started %s job %s", space.guild_id, started_by, self.backend.name, job.id)
            return job, report

    # ------------------------------------------------------------ follow

    def owns(self, job: Job) -> bool:
        """Whether this process's backend can follow ``job`` (MODEL_BACKEND may have changed since)."""
        return job.backend == self.backend.name

    async def poll_job(self, space: GuildSpace, job_id: str) -> Job:
        """Refresh a job from its backend and save it; on success the server switches to the new model.

        WatchedElsewhere when another live process holds the job's lease.
        """
        job = await asyncio.to_thread(jobs.get_job, space, job_id)
        if job.status in TERMINAL:
            return job
        async with self._job_locks.setdefault(job.id, asyncio.Lock()):
            if not await asyncio.to_thread(jobs.claim, space, job.id, self.instance, self.lease_seconds):
                raise WatchedElsewhere(f"Training job `{job.id}` is watched by another bot process.")
            job = await asyncio.to_thread(jobs.get_job, space, job.id)  # fresh: a cancel may have saved it
            if job.status in TERMINAL or not self.owns(job):
                return job  # another backend's job: nothing can poll it here
            upd = await self.backend.poll(space, job)
            if apply_update(job, upd):
                if (self.settings.eval_gate and job.status == "succeeded" and job.model
                        and (not job.activated or job.live) and job.evaluation is None):
                    job.evaluation = await self._evaluate(space, job)
                await saved("the job's progress", self._save, space, job, upd.losses)
            return job

    async def release_leases(self, db: Database) -> None:
        """A clean stop: give back the leases this process holds, so its jobs are followed again at once (by the
        restarted bot or another process) instead of once the leases have run out."""
        try:
            released = await asyncio.to_thread(jobs.release_all, db, self.instance)
        except TrainerError as exc:
            log.warning("could not give back this process's job leases (they run out by themselves): %s", exc)
            return
        if released:
            log.info("gave back the lease on %d job(s)", released)

    def _save(self, space: GuildSpace, job: Job, losses: Sequence[tuple[int, float]] = ()) -> None:
        self._activate(space, job)
        jobs.save_job(space, job, losses)
        if job.status in TERMINAL:
            evaluation.drop_holdout(space, job.id)
            jobs.release(space, job.id, self.instance)

    def _activate(self, space: GuildSpace, job: Job) -> None:
        """A job that just succeeded makes its model the server's current one, unless the evaluation gate kept
        it as a candidate (then ``!model <name>`` switches to it).

        A job whose model answers before it ends (``live``: the local backend's quick stage) makes it current
        at once, remembering the model it replaced; if the job is then cancelled, or its finished model is
        kept as a candidate, that model is current again.
        """
        if not job.model:
            return
        if job.live and job.status not in TERMINAL and not job.activated:
            job.replaced_model = jobs.current_model(space, self.backend.name)
            jobs.set_current_model(space, self.backend.name, job.model)
            job.activated = True
        elif job.status == "succeeded" and not job.activated:
            if job.evaluation is not None and job.evaluation.candidate:
                job.candidate = True
                return
            jobs.set_current_model(space, self.backend.name, job.model)
            job.activated = True
        elif job.live and job.activated and (job.status == "cancelled" or (
                job.status == "succeeded" and job.evaluation is not None and job.evaluation.candidate)):
            job.candidate = job.status == "succeeded"
            job.activated = False
            if jobs.current_model(space, self.backend.name) == job.model:
                jobs.set_current_model(space, self.backend.name, job.replaced_model)

    async def cancel_job(self, space: GuildSpace, job_id: str, *, by: str | None = None) -> Job:
        """Cancel a running job (``by``: who asked, shown in its status); returns the saved job.

        A job that finished before the cancel reached the backend keeps its real outcome.
        """
        job = await asyncio.to_thread(jobs.get_job, space, job_id)
        async with self._job_locks.setdefault(job.id, asyncio.Lock()):
            job = await asyncio.to_thread(jobs.get_job, space, job.id)
            if job.status in TERMINAL:
                raise InvalidInput(f"Job `{job.id}` already {job.status}.")
            upd = await self.backend.cancel(space, job)
            apply_update(job, upd)
            if job.status == "cancelled" and by:
                job.cancelled_by = by
            await saved("the cancellation", self._save, space, job, upd.losses)
            return job

    async def set_status_message(self, space: GuildSpace, job_id: str, message_id: int) -> None:
        """Remember which message the watcher edits for this job (survives restarts)."""
        async with self._job_locks.setdefault(job_id, asyncio.Lock()):
            await saved("the job's status message", jobs.set_status_message, space, job_id, message_id)

    async def unfinished_jobs(self, db: Database, space_of: Callable[[int], GuildSpace],
                              guild_ids: set[int] | None = None) -> list[tuple[int, Job]]:
        """(guild id, job) for every unfinished job of this backend that no other live process watches (of
        ``guild_ids`` only, when given): what the watcher resumes or takes over."""
        def work() -> list[tuple[int, Job]]:
            found = []
            for guild_id in jobs.guilds_with_unfinished_jobs(db):
                if guild_ids is None or guild_id in guild_ids:
                    found += [(guild_id, job) for job in jobs.unfinished_jobs(space_of(guild_id))
                              if self.owns(job) and jobs.free_for(job, self.instance)]
            return found

        return await asyncio.to_thread(work)

    # ------------------------------------------------------------ the evaluation gate

    async def _evaluate(self, space: GuildSpace, job: Job) -> Evaluation:
        """Score a just-trained model and the current one on the evaluation set and the job's held-out pairs.

        The new model is asked by name, so scoring never makes it current. It becomes a ``candidate`` (not
        switched to) when it is more than EVAL_MARGIN worse than the current model on the evaluation set. A
        backend error while scoring is reported in the result and does not hold the model back (the gate
        guards against worse models, not against an unreachable API).
        """
        old = job.replaced_model if job.live else await self.current_model(space)
        new = str(job.model)
        result = Evaluation(old_model=old if old != new else None, margin=EVAL_MARGIN, by_meaning=self.backend.generates)
        cases = await asyncio.to_thread(evaluation.eval_set, space)
        held = await asyncio.to_thread(evaluation.load_holdout, space, job.id)
        try:
            result.eval_set = await self._compare(space, new, result.old_model, cases)
            result.heldout = await self._compare(space, new, result.old_model, held)
        except TrainerError as exc:
            log.warning("guild %s: could not score %s before switching to it: %s", space.guild_id, new, exc)
            result.error = str(exc)
            result.reason = await asyncio.to_thread(self._hold_back, space, job, result)
            result.candidate = result.reason is not None
            return result
        result.reason = await asyncio.to_thread(self._hold_back, space, job, result)
        result.candidate = result.reason is not None
        log.info("guild %s: %s scored %s (candidate: %s)", space.guild_id, new, result, result.candidate)
        return result

    @staticmethod
    def _hold_back(space: GuildSpace, job: Job, result: Evaluation) -> str | None:
        """Why the gate holds the new model back (one clause), or None to switch to it.

        Only a model that would replace another is held back (a server's first model always goes live: with no
        model it answers nothing, so any model is better, and it gives the gate its first comparison):
        - it scored more than EVAL_MARGIN worse than the current one on the evaluation set;
        - it was trained on fewer than FEWER_EXAMPLES of the current one's examples (a dataset emptied by
          mistake, a forgotten big contributor: an admin decides, with ``!model NAME``);
        - there was nothing to score it on (no evaluation set, too few pairs to hold out), unless a backend
          error stopped the scoring (the gate guards against worse models, not against an unreachable API).
        """
        old = result.old_model
        if not old:
            return None
        scored = result.eval_set
        if scored is not None and scored.old is not None and (scored.new - scored.old) / scored.n < -EVAL_MARGIN:
            return (f"it scored more than {round(100 * EVAL_MARGIN)} points worse than `{old}` on the "
                    f"evaluation set")
        new_n = job.estimate.examples if job.estimate is not None else None
        old_job = next((j for j in jobs.list_jobs(space, 0) if j.model == old and j.id != job.id), None)
        old_n = old_job.estimate.examples if old_job is not None and old_job.estimate is not None else None
        if new_n is not None and old_n and new_n < FEWER_EXAMPLES * old_n:
            return (f"it was trained on {new_n:,} example{'s' * (new_n != 1)}, far fewer than the {old_n:,} "
                    f"of `{old}`")
        if result.eval_set is None and result.heldout is None and result.error is None:
            return (f"there is nothing to score it on yet (no test cases, too few pairs to hold out), and "
                    f"`{old}` answers now")
        return None

    async def _compare(self, space: GuildSpace, new: str, old: str | None, cases: list[Case]) -> Score | None:
        """The new model's score on ``cases`` and, when there is one, the current model's; None without cases."""
        if not cases:
            return None
        score = Score(n=len(cases), new=(await self._score(space, new, cases)).correct)
        if old:
            score.old = (await self._score(space, old, cases)).correct
        return score

    def _ask(self, space: GuildSpace, model_name: str | None) -> Callable[[Case], Any]:
        """How a case is asked of ``model_name`` (by name: asking never changes the current model)."""
        async def ask(case: Case) -> str:
            if case.kind == "label":
                return await self.backend.predict_label(space, model_name, case.input)
            return await self.backend.answer(space, model_name, case.input, ())
        return ask

    async def _score(self, space: GuildSpace, model_name: str, cases: list[Case]) -> EvalResult:
        return await run_cases(self._ask(space, model_name), cases, concurrency=TEST_CONCURRENCY,
                               by_meaning=self.backend.generates)

    async def run_tests(self, space: GuildSpace, text: str, *, concurrency: int = TEST_CONCURRENCY,
                        author_id: int | None = None, author_name: str | None = None) -> EvalResult:
        """Run test cases (JSON array or lines) against the current model. Mismatches are kept as training data
        for the next training; the cases that passed join the server's evaluation set (what the evaluation gate
        scores new models on), apart from anything trained on (``evaluation.keep_apart``)."""
        cases = await asyncio.to_thread(parse_cases, text)
        model_name = await self.current_model(space)
        result = await run_cases(self._ask(space, model_name), cases, concurrency=concurrency,
                                 by_meaning=self.backend.generates)
        missed = {(m.kind, m.input, m.expected) for m in result.mismatches}
        failed = [c for c in cases if (c.kind, c.input, c.expected) in missed]
        passed = [c for c in cases if (c.kind, c.input, c.expected) not in missed]
        if result.mismatches:
            rows = [TestError(m.input, m.expected, m.got, m.kind, m.line, model_name) for m in result.mismatches]
            await saved("the mismatches", corrections.add_test_errors, space, rows, author_id=author_id,
                        author_name=author_name)
        await saved("the evaluation set", evaluation.keep_apart, space, passed, failed, author_id=author_id,
                    author_name=author_name)
        return result

    # ------------------------------------------------------------ models

    async def current_model(self, space: GuildSpace) -> str | None:
        """The model this server answers with, None before the first training."""
        return await asyncio.to_thread(jobs.current_model, space, self.backend.name)

    async def answer(self, space: GuildSpace, prompt: str, history: History = ()) -> str:
        """Answer with the server's current model; ``history`` is (role, content) pairs, oldest first."""
        return await self.backend.answer(space, await self.current_model(space), prompt, history)

    async def list_models(self, space: GuildSpace) -> list[str]:
        """Models that can be selected, oldest first."""
        return await asyncio.to_thread(lambda: self.backend.list_models(space, jobs.list_jobs(space, 0)))

    async def set_model(self, space: GuildSpace, name: str) -> str:
        """Switch to ``name`` (must exist) or ``"previous"``; returns the new current model."""
        name = (name or "").strip().strip("`")

        def work() -> str:
            if name.lower() == "previous":
                return jobs.set_current_model(space, self.backend.name, None, back=True) or ""
            if not self.backend.model_exists(space, name, jobs.list_jobs(space, 0)):
                known = self.backend.list_models(space, jobs.list_jobs(space, 0))
                shown = ", ".join(f"`{m}`" for m in known[-5:]) or "none yet"
                raise NotFound(f"There is no model `{name}` on this server. Known: {shown}.")
            return jobs.set_current_model(space, self.backend.name, name) or name

        return await saved("the model switch", work)
