"""The Model: the one object cogs talk to for training, job tracking, testing and answering.

Methods are thin: compiling is ``datasets``, jobs are ``jobs``, training/answering is a backend
(``backends.local`` or ``backends.openai_backend``, chosen by ``MODEL_BACKEND``), tests are
``evaluation``. Async methods never block the loop with CPU or big-disk work; the sync ones
only read or write small JSON files.

``python model.py check FILE.jsonl`` checks a fine-tuning file (delegates to ``datasets``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dataset import check
from dataset import compile as compiler
from dataset import corrections as records
from errors import Busy, InvalidInput, NotFound
from storage import GuildSpace
from training import jobs
from training.backend import METHODS, TERMINAL, History, JobRecord, JobUpdate, TrainingBackend
from training.evaluation import Case, EvalResult, parse_cases, run_cases

if TYPE_CHECKING:
    import openai

    from config import Settings
    from dataset.check import CheckReport

log = logging.getLogger(__name__)

TEST_CONCURRENCY = 4


class Model:
    """Training backends, job records, the current model per guild, tests and answers."""

    def __init__(self, settings: Settings, *, openai_client: openai.AsyncOpenAI | None = None,
                 backend: TrainingBackend | None = None) -> None:
        self.settings = settings
        if backend is not None:
            self.backend = backend
        elif settings.model_backend == "openai":
            from training.openai_api import OpenAIBackend

            self.backend = OpenAIBackend(settings, client=openai_client)
        else:
            from training.local import LocalBackend

            self.backend = LocalBackend(settings)
        self._train_locks: dict[int, asyncio.Lock] = {}
        # poll_job and cancel_job read a record, await the backend, then save it: without a lock per job
        # a poll started before a cancel could save its stale copy over the cancelled one.
        self._job_locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        """Open the backend's connections (the AsyncOpenAI client) once."""
        await self.backend.start()

    async def close(self) -> None:
        """Close connections and stop local trainings started by this process."""
        await self.backend.close()

    def space(self, guild_id: int) -> GuildSpace:
        """The guild's folders."""
        return GuildSpace(guild_id, self.settings.data_dir, self.settings.corrections_dir)

    # ------------------------------------------------------------ training

    async def train(
        self, guild_id: int, *, method: str = "supervised", started_by: str, channel_id: int
    ) -> tuple[JobRecord, CheckReport]:
        """Compile the guild's data, check it, and start a job; InvalidInput (the report) before any upload.

        Busy if a job of this guild is still running.
        """
        if method not in METHODS:
            raise InvalidInput(f"Unknown training method `{method}`: use one of {', '.join(METHODS)}.")
        lock = self._train_locks.setdefault(guild_id, asyncio.Lock())
        if lock.locked():
            raise Busy("A training is being started for this server right now; wait a moment.")
        async with lock:
            space = self.space(guild_id).ensure()
            for job in await asyncio.to_thread(jobs.unfinished_jobs, space):
                job = await self.poll_job(guild_id, job["id"])
                if job["status"] not in TERMINAL:
                    raise Busy(f"Training job `{job['id']}` is still {job['status']}; wait for it or cancel it.")

            # OpenAI needs 10 examples; the local backend learns from any number.
            min_examples = 10 if self.backend.name == "openai" else 1
            compiled = await asyncio.to_thread(compiler.compile_guild, space, min_examples=min_examples)
            report = compiled.report
            if method == "dpo" and getattr(compiled, "preference_report", None) is not None:
                report = compiled.preference_report  # DPO uploads the preference lines, so check those
            if not report.ok:
                raise InvalidInput(report.format())
            started = time.time()
            record = await self.backend.start_job(space, compiled, method=method,  # type: ignore[arg-type]
                                                  suffix=f"g{guild_id}")
            record.update({
                "created_at": started, "started_by": started_by, "channel_id": channel_id,
                "status_message_id": None, "model": None, "losses": [], "events": [], "error": None,
                "finished_at": None,
                "estimate": {"examples": report.n_examples, "tokens": report.est_tokens,
                             "epochs": report.epochs, "billed_tokens": report.billed_tokens},
            })
            record.setdefault("step", 0)
            await asyncio.to_thread(jobs.save_job, space, record)
            log.info("guild %s: %s started %s job %s", guild_id, started_by, self.backend.name, record["id"])
            return record, report

    def _apply(self, space: GuildSpace, job: dict[str, Any], upd: JobUpdate) -> bool:
        """Merge an update into the record; True if anything changed."""
        before = dict(job)
        job["status"] = upd.status
        if upd.step is not None:
            job["step"] = upd.step
        if upd.total_steps:
            job["total_steps"] = upd.total_steps
        if upd.losses:
            job["losses"] = jobs.merge_losses(job.get("losses") or [], upd.losses)
        if upd.events:
            job["events"] = (list(job.get("events") or []) + upd.events)[-jobs.KEEP_EVENTS:]
        if upd.fine_tuned_model:
            job["model"] = upd.fine_tuned_model
        if upd.error:
            job["error"] = upd.error
        job.update(upd.extra)
        if upd.status in TERMINAL and not job.get("finished_at"):
            job["finished_at"] = time.time()
        return job != before

    async def poll_job(self, guild_id: int, job_id: str) -> dict[str, Any]:
        """Refresh a job from its backend and save it; on success the guild switches to the new model."""
        space = self.space(guild_id)
        # The jobs log is read and written off the loop: it grows with every status change.
        job = await asyncio.to_thread(jobs.get_job, space, job_id)
        if job.get("status") in TERMINAL:
            return job
        async with self._job_locks.setdefault(job["id"], asyncio.Lock()):
            job = await asyncio.to_thread(jobs.get_job, space, job["id"])  # fresh: a cancel may have saved it
            if job.get("status") in TERMINAL:
                return job
            if job.get("backend") != self.backend.name:
                return job  # another backend's job (MODEL_BACKEND changed): nothing can poll it here
            upd = await self.backend.poll(space, job)
            if self._apply(space, job, upd):
                await asyncio.to_thread(self._save, space, job)
            return job

    def _save(self, space: GuildSpace, job: dict[str, Any]) -> None:
        self._activate(space, job)
        jobs.save_job(space, job)

    def _activate(self, space: GuildSpace, job: dict[str, Any]) -> None:
        """A job that just succeeded makes its model the guild's current one."""
        if job["status"] == "succeeded" and job.get("model") and not job.get("activated"):
            jobs.set_current_model(space, self.backend.name, job["model"])
            job["activated"] = True

    async def cancel_job(self, guild_id: int, job_id: str, *, by: str | None = None) -> dict[str, Any]:
        """Cancel a running job (``by``: who asked, shown in its status); returns the saved record.

        A job that finished before the cancel reached the backend keeps its real outcome.
        """
        space = self.space(guild_id)
        job = await asyncio.to_thread(jobs.get_job, space, job_id)
        async with self._job_locks.setdefault(job["id"], asyncio.Lock()):
            job = await asyncio.to_thread(jobs.get_job, space, job["id"])
            if job.get("status") in TERMINAL:
                raise InvalidInput(f"Job `{job['id']}` already {job['status']}.")
            upd = await self.backend.cancel(space, job)
            self._apply(space, job, upd)
            if job["status"] == "cancelled" and by:
                job["cancelled_by"] = by
            await asyncio.to_thread(self._save, space, job)
            return job

    def set_status_message(self, guild_id: int, job_id: str, message_id: int) -> dict[str, Any]:
        """Remember which message the watcher edits for this job (survives restarts)."""
        space = self.space(guild_id)
        job = jobs.get_job(space, job_id)
        job["status_message_id"] = message_id
        return jobs.save_job(space, job)

    async def remember_status_message(self, guild_id: int, job_id: str, message_id: int) -> dict[str, Any]:
        """``set_status_message`` under the job's lock, so a concurrent poll or cancel cannot undo it."""
        async with self._job_locks.setdefault(job_id, asyncio.Lock()):
            return await asyncio.to_thread(self.set_status_message, guild_id, job_id, message_id)

    def list_jobs(self, guild_id: int, limit: int = 10) -> list[dict[str, Any]]:
        """Newest jobs first."""
        return jobs.list_jobs(self.space(guild_id), limit)

    def get_job(self, guild_id: int, job_id: str) -> dict[str, Any]:
        """A job by id or unique id prefix; NotFound otherwise."""
        return jobs.get_job(self.space(guild_id), job_id)

    def unfinished_jobs(self) -> list[tuple[int, dict[str, Any]]]:
        """(guild_id, job) for every unfinished job on disk: what the watcher resumes at start-up."""
        found: list[tuple[int, dict[str, Any]]] = []
        try:
            entries = list(self.settings.data_dir.iterdir())
        except FileNotFoundError:
            return found
        for entry in entries:
            if entry.name.isdigit() and int(entry.name) > 0 and (entry / "jobs.jsonl").is_file():
                guild_id = int(entry.name)
                found.extend((guild_id, job) for job in jobs.unfinished_jobs(self.space(guild_id)))
        return found

    @staticmethod
    def render_status(job: dict[str, Any]) -> str:
        """The text of a job's status message."""
        return jobs.render_status(job)

    @staticmethod
    async def loss_curve_png(job: dict[str, Any]) -> bytes | None:
        """The loss curve as PNG (rendered in a thread), None without loss points."""
        return await asyncio.to_thread(jobs.loss_curve_png, job)

    # ------------------------------------------------------------ models

    def current_model(self, guild_id: int) -> str | None:
        """The model this guild answers with, None before the first training."""
        return jobs.current_model(self.space(guild_id), self.backend.name)

    def list_models(self, guild_id: int) -> list[str]:
        """Models that can be selected, oldest first."""
        space = self.space(guild_id)
        return self.backend.list_models(space, jobs.list_jobs(space, 0))

    def set_model(self, guild_id: int, name: str) -> str:
        """Switch to ``name`` (must exist) or ``"previous"``; returns the new current model."""
        space = self.space(guild_id)
        name = (name or "").strip().strip("`")
        if name.lower() == "previous":
            new = jobs.set_current_model(space, self.backend.name, None, back=True)
            return new or ""
        if not self.backend.model_exists(space, name, jobs.list_jobs(space, 0)):
            known = ", ".join(f"`{m}`" for m in self.list_models(guild_id)[-5:]) or "none yet"
            raise NotFound(f"There is no model `{name}` on this server. Known: {known}.")
        return jobs.set_current_model(space, self.backend.name, name) or name

    # ------------------------------------------------------------ answering and testing

    async def answer(self, guild_id: int, prompt: str, history: History = ()) -> str:
        """Answer with the guild's current model; ``history`` is (role, content) pairs, oldest first."""
        space = self.space(guild_id)
        return await self.backend.answer(space, self.current_model(guild_id), prompt, history)

    async def run_tests(self, guild_id: int, text: str, *, concurrency: int = TEST_CONCURRENCY) -> EvalResult:
        """Run test cases (JSON array or lines) against the current model; mismatches are kept as errors."""
        cases = parse_cases(text)
        space = self.space(guild_id)
        model_name = self.current_model(guild_id)

        async def ask(case: Case) -> str:
            if case.kind == "label":
                return await self.backend.predict_label(space, model_name, case.input)
            return await self.backend.answer(space, model_name, case.input, ())

        result = await run_cases(ask, cases, concurrency=concurrency)
        if result.mismatches:
            await self._keep_mismatches(space, result.mismatches, model_name)
        return result

    async def _keep_mismatches(self, space: GuildSpace, mismatches: Sequence[dict[str, Any]],
                               model_name: str | None) -> None:
        rows = [dict(m, model=model_name) for m in mismatches]
        await asyncio.to_thread(records.add_test_errors, space, rows)


if __name__ == "__main__":
    sys.exit(check.main(sys.argv[1:]))
