"""The Model: the one door from the cogs to the domain (data in, training jobs, models, tests, answers).

Every public method is async: disk and CPU work runs in a thread inside, so a cog never decides what
blocks. Methods are thin: data is ``dataset``, jobs are ``training.jobs``, training and answering is
a backend (chosen by ``MODEL_BACKEND``, see ``training.backend.BACKENDS``), tests are
``training.evaluation``. ``Model.space`` is the only place a guild's folders are built.

``python model.py check FILE.jsonl`` checks a fine-tuning file (delegates to ``dataset.check``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from dataset import archive, check, corrections, export, forget
from dataset import compile as compiler
from dataset import folder as dataset_folder
from dataset.archive import ArchiveResult
from dataset.corrections import Answer, Correction, Feedback, ReactionCounts, TestError
from dataset.export import DataExport
from dataset.folder import SelectResult
from dataset.formats import SUPPORTED, IngestReport
from errors import Busy, InvalidInput, NotFound, NotSaved, TooLarge, TrainerError
from records import legacy
from records.db import Database, DatabaseUnavailable
from speech.recognize import recognizer_paid
from speech.synthesize import synthesizer_paid
from storage import GuildSpace, fmt_bytes, remove_leftovers
from training import budget, evaluation, jobs, status
from training.backend import METHODS, TERMINAL, History, JobRecord, JobUpdate, TrainingBackend, create_backend
from training.evaluation import EVAL_MARGIN, Case, EvalResult, parse_cases, run_cases

if TYPE_CHECKING:
    import openai

    from config import Settings
    from dataset.check import CheckReport

log = logging.getLogger(__name__)
T = TypeVar("T")

TEST_CONCURRENCY = 4
MAX_DATA_UPLOAD = 100 * 1024 * 1024  # a training file bigger than this is refused before download
MAX_TEST_UPLOAD = 5 * 1024 * 1024


CONTRIBUTORS_KEPT = 10  # contributors named in a job record; the rest are summed under "others"


def _top(counts: dict[str, int], keep: int) -> list[tuple[str, int]]:
    """The ``keep`` largest (name, count) pairs, plus ("others", rest) when there are more."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    top = ranked[:keep]
    rest = sum(n for _, n in ranked[keep:])
    return top + ([("others", rest)] if rest else [])


@dataclass(frozen=True)
class ReactionResult:
    """A 👍/👎 recorded on ``answer``; ``ask``: ask this person for the right answer now."""

    kind: str
    answer: Answer
    ask: bool


class Model:
    """Data in, training jobs, the current model per guild, tests and answers: one async API for the cogs."""

    def __init__(self, settings: Settings, *, db: Database, openai_client: openai.AsyncOpenAI | None = None,
                 backend: TrainingBackend | None = None) -> None:
        self.settings = settings
        self.db = db
        self.backend = backend if backend is not None else create_backend(settings, openai_client=openai_client)
        self._train_locks: dict[int, asyncio.Lock] = {}
        # poll_job and cancel_job read a record, await the backend, then save it: without a lock per job
        # a poll started before a cancel could save its stale copy over the cancelled one.
        self._job_locks: dict[str, asyncio.Lock] = {}
        # A cache that makes de-duplication cheap; it lives as long as the bot.
        self._dataset_hashes: dataset_folder.HashCache = {}

    async def start(self) -> None:
        """Clean up after a crash, then start the backend (once, from the bot's setup_hook)."""
        data, corr = self.settings.data_dir, self.settings.corrections_dir
        await asyncio.to_thread(self.db.migrate)
        # Records written by a version before the database are imported once (the files are kept, hidden).
        await asyncio.to_thread(legacy.import_legacy, self.db, data, corr)
        # A forget cut short is finished (its journal row was committed) or rolled back (it was not).
        for line in await asyncio.to_thread(forget.recover, self.db, data, corr):
            log.warning("%s (the bot stopped mid-way)", line)
        removed = await asyncio.to_thread(remove_leftovers, self.settings.data_dir, self.settings.corrections_dir)
        for path, size in removed:
            # A hidden temp file is what a write cut short leaves (an upload, an archive, a model version).
            log.warning("removed %s (%s) left by an interrupted write (the bot stopped mid-way; that upload, "
                        "archive or training did not complete)", path, fmt_bytes(size))
        await self.backend.start()

    async def close(self) -> None:
        """Stop local trainings started by this process and release the backend."""
        await self.backend.close()

    def space(self, guild_id: int) -> GuildSpace:
        """The guild's folders: the only place a GuildSpace is built."""
        return GuildSpace(guild_id, self.settings.data_dir, self.settings.corrections_dir, self.db)

    @staticmethod
    async def _write(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a write in a thread; a refused write (read-only folder, full disk) becomes one plain NotSaved line."""
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

    # ------------------------------------------------------------ data in

    @staticmethod
    def check_upload(filename: str, size: int) -> None:
        """Refuse a training file before it is downloaded: too big, or a type we cannot read."""
        if size > MAX_DATA_UPLOAD:
            raise TooLarge(f"`{filename}` is {fmt_bytes(size)}; training files are limited to "
                           f"{fmt_bytes(MAX_DATA_UPLOAD)}.")
        if not filename.lower().endswith(SUPPORTED):
            ext = ("." + filename.rsplit(".", 1)[1]) if "." in filename else "none"
            raise InvalidInput(f"`{filename}`: unsupported file type `{ext}`; use .jsonl, .json, .csv or .txt.")

    async def add_upload(self, guild_id: int, filename: str, data: bytes, *, positive: bool,
                         author: str, author_id: int | None = None, origin: str | None = None) -> IngestReport:
        """Store an uploaded file and add its examples to the current dataset (their ``origin`` names the
        stored upload, so forgetting a person finds both)."""
        space = self.space(guild_id)

        def work() -> IngestReport:
            path = dataset_folder.store_upload(space, filename, data)
            where = f"{origin}, upload {space.relative(path)}" if origin else f"upload {space.relative(path)}"
            try:
                report = dataset_folder.ingest_file(space, path, positive=positive, author=author, source=filename,
                                                    cache=self._dataset_hashes, author_id=author_id, origin=where)
            except BaseException:
                path.unlink(missing_ok=True)  # a refused upload is not kept
                raise
            if not report.added:
                path.unlink(missing_ok=True)  # nothing from it went into the dataset: nothing to keep
            return report

        return await self._write(f"`{filename}`", work)

    async def add_text(self, guild_id: int, text: str, *, positive: bool, author: str, author_id: int | None = None,
                       origin: str | None = None) -> IngestReport:
        """Add examples written in a message (one per line, ``question => answer`` for pairs)."""
        return await self._write("the examples", dataset_folder.ingest_text, self.space(guild_id), text,
                                 positive=positive, author=author, cache=self._dataset_hashes, author_id=author_id,
                                 origin=origin)

    async def add_path(self, guild_id: int, user_path: str, *, positive: bool, author: str,
                       author_id: int | None = None, origin: str | None = None) -> IngestReport:
        """Add a file or folder of the guild's data space (a path the user typed)."""
        return await self._write("the examples", dataset_folder.ingest_path, self.space(guild_id), user_path,
                                 positive=positive, author=author, cache=self._dataset_hashes, author_id=author_id,
                                 origin=origin)

    async def path_exists(self, guild_id: int, user_path: str) -> bool:
        """Whether a typed path names an entry of the guild's data space (False when refused)."""
        space = self.space(guild_id)

        def exists() -> bool:
            try:
                return space.resolve(user_path).exists()
            except (TrainerError, OSError):
                return False

        return await asyncio.to_thread(exists)

    async def dataset_name(self, guild_id: int) -> str:
        """The current dataset as users see it, e.g. ``datasets/main``."""
        return await asyncio.to_thread(dataset_folder.dataset_name, self.space(guild_id))

    async def select_dataset(self, guild_id: int, user_dir: str, *, positive: bool) -> SelectResult:
        """Make a folder the dataset for the next training; it is archived first."""
        return await self._write("the dataset choice", dataset_folder.select_dataset, self.space(guild_id), user_dir,
                                 positive=positive)

    async def archive(self, guild_id: int, user_dir: str, *, read_limit: int) -> tuple[ArchiveResult, str, bytes | None]:
        """Zip a folder of the data space; returns the result, the folder as stored, and the zip's bytes
        when it is at most ``read_limit`` bytes (to attach), else None."""
        space = self.space(guild_id)

        def work() -> tuple[ArchiveResult, str, bytes | None]:
            result = archive.archive_folder(space, user_dir)
            shown = space.relative(space.resolve(user_dir))  # as stored, not as typed (quotes, trailing slash)
            data = result.path.read_bytes() if result.bytes <= read_limit else None
            return result, shown, data

        return await self._write("the archive", work)

    async def read_file(self, guild_id: int, user_path: str, *, limit: int) -> tuple[str, str, bytes]:
        """A file of the data space as (path shown, file name, bytes); TooLarge above ``limit`` bytes."""
        space = self.space(guild_id)

        def work() -> tuple[str, str, bytes]:
            target = space.resolve(user_path, must_exist=True)
            shown = space.relative(target)
            if not target.is_file():
                raise InvalidInput(f"`{shown}` is a folder; `{self.settings.prefix}archive {shown}` zips it.")
            size = target.stat().st_size
            if size > limit:
                said, cap = fmt_bytes(size), fmt_bytes(limit)
                if said == cap:  # "10.0 MB, over the limit of 10.0 MB" would make no sense
                    said, cap = f"{size:,} bytes", f"{limit:,} bytes"
                raise TooLarge(f"`{shown}` is {said}, over this server's upload limit of {cap}.")
            try:
                return shown, target.name, target.read_bytes()
            except FileNotFoundError:
                raise NotFound(f"`{shown}` does not exist in this server's data folder.") from None
            except OSError as exc:
                raise InvalidInput(f"`{shown}` can't be read: {exc.strerror or type(exc).__name__}.") from None

        return await asyncio.to_thread(work)

    # ------------------------------------------------------------ what members give

    async def record_answer(self, guild_id: int, *, message_ids: Sequence[int], channel_id: int, prompt: str,
                            answer: str, prompt_message_id: int | None, author_id: int | None,
                            author_name: str | None = None) -> None:
        """Log an answer (every message it was sent as) so ``!correct`` can find it; ``author_*`` is who asked."""
        model_name = await self.current_model(guild_id)
        # Any part of a long answer can be the one someone corrects.
        await self._write("the answer log", corrections.record_answer, self.space(guild_id),
                          message_ids=list(message_ids), channel_id=channel_id, prompt=prompt, answer=answer,
                          prompt_message_id=prompt_message_id, author_id=author_id, author_name=author_name,
                          model=model_name)

    async def find_answer(self, guild_id: int, message_id: int | str) -> Answer | None:
        """The logged answer for one of the bot's message ids (or one a user typed), or None."""
        return await asyncio.to_thread(corrections.find_answer, self.space(guild_id), message_id)

    async def latest_answer(self, guild_id: int, channel_id: int, author_id: int) -> Answer | None:
        """The bot's latest answer to ``author_id`` in ``channel_id``, or None."""
        return await asyncio.to_thread(corrections.latest_answer, self.space(guild_id), channel_id, author_id)

    async def correct(self, guild_id: int, answer: Answer, correction: str, *, author_id: int,
                      author_name: str, channel_id: int, source_message_id: int | None = None,
                      trusted: bool = False) -> Correction:
        """Store a correction of a logged answer; returns the record (with its ``ref`` and ``approved``).

        It is approved at once when ``trusted`` (an admin wrote it) or REVIEW_CORRECTIONS is off; otherwise it
        waits in the review queue.
        """
        approved = trusted or not self.settings.review_corrections
        return await self._write(
            "your correction", corrections.add_correction, self.space(guild_id), message_id=answer.message_id,
            prompt=answer.prompt, answer=answer.answer, correction=correction,
            author_id=author_id, author_name=author_name, channel_id=channel_id,
            source_message_id=source_message_id, approved=approved,
        )

    async def pending_corrections(self, guild_id: int) -> list[Correction]:
        """Members' corrections waiting for review, oldest first."""
        return await asyncio.to_thread(corrections.pending_corrections, self.space(guild_id))

    async def review(self, guild_id: int, refs: list[str], *, approve: bool, by_id: int, by_name: str,
                     reason: str = "") -> list[Correction]:
        """Approve or reject corrections by id (all or none; InvalidInput names the first bad one)."""
        return await self._write("the review decision", corrections.review, self.space(guild_id), refs,
                                 approve=approve, by_id=by_id, by_name=by_name, reason=reason,
                                 prefix=self.settings.prefix)

    async def feedback(self, guild_id: int, text: str, *, author_id: int, author_name: str, channel_id: int,
                       reply_to: dict[str, Any] | None, source_message_id: int | None = None) -> Feedback:
        """Store feedback; returns the record (with its ``ref``)."""
        return await self._write(
            "your feedback", corrections.add_feedback, self.space(guild_id), text=text, author_id=author_id,
            author_name=author_name, channel_id=channel_id, reply_to=reply_to, source_message_id=source_message_id,
        )

    async def react(self, guild_id: int, message_id: int, emoji: str, *, added: bool, user_id: int,
                    user_name: str, channel_id: int | None) -> ReactionResult | None:
        """Record a 👍/👎 put on or taken off one of the bot's answers (with the model that answered).

        Returns None (nothing recorded) for any other emoji or a message that is not a logged answer; else
        what was recorded, with ``ask``: the bot should ask this person for the right answer (a new 👎, asked
        once per person and answer).
        """
        kind = corrections.reaction_kind(emoji)
        if kind is None:
            return None
        answer = await self.find_answer(guild_id, message_id)
        if answer is None:
            return None
        ask = await self._write("your reaction", corrections.add_reaction, self.space(guild_id),
                                message_id=message_id, channel_id=channel_id, kind=kind, added=added,
                                author_id=user_id, author_name=user_name, model=answer.model)
        return ReactionResult(kind, answer, ask)

    async def record_ask(self, guild_id: int, *, ask_message_id: int, message_id: int, channel_id: int | None,
                         user_id: int, user_name: str) -> None:
        """Remember the bot's ask for the right answer to ``message_id`` (sent after ``user_id``'s 👎)."""
        await self._write("the ask", corrections.add_ask, self.space(guild_id), ask_message_id=ask_message_id,
                          message_id=message_id, channel_id=channel_id, author_id=user_id, author_name=user_name)

    async def answer_asked_about(self, guild_id: int, ask_message_id: int) -> Answer | None:
        """The logged answer an ask of the bot is about (a reply to that ask corrects it), or None."""
        ask = await asyncio.to_thread(corrections.find_ask, self.space(guild_id), ask_message_id)
        return None if ask is None else await self.find_answer(guild_id, ask.message_id)

    async def reaction_counts(self, guild_id: int) -> dict[str, ReactionCounts]:
        """model -> {"up": n, "down": n}: the reactions standing now on the answers of each model."""
        return await asyncio.to_thread(corrections.reaction_counts, self.space(guild_id))

    async def forget_user(self, guild_id: int, user_id: int) -> forget.ForgetResult:
        """Remove everything one person gave in this server (see ``dataset.forget``); NotFound when nothing."""
        return await self._write("the removal", forget.forget, self.space(guild_id), user_id)

    # ------------------------------------------------------------ training

    async def train(
        self, guild_id: int, *, method: str = "supervised", started_by: str, channel_id: int
    ) -> tuple[JobRecord, CheckReport]:
        """Compile the guild's data, check it, and start a job; InvalidInput (the report) before any upload.

        Busy if a job of this guild is still running.
        """
        self.check_method(method)
        lock = self._train_locks.setdefault(guild_id, asyncio.Lock())
        if lock.locked():
            raise Busy("A training is being started for this server right now; wait a moment.")
        async with lock:
            space = await self._write("the training job", self.space(guild_id).ensure)
            for job in await asyncio.to_thread(jobs.unfinished_jobs, space):
                job = await self.poll_job(guild_id, job["id"])
                if job["status"] not in TERMINAL:
                    raise Busy(f"Training job `{job['id']}` is still {job['status']}; wait for it or cancel it.")
            compiled = await asyncio.to_thread(compiler.compile_guild, space, min_examples=self.backend.min_examples,
                                               trainer=self.backend.trainer_title)
            report = compiled.report
            if method == "dpo" and compiled.preference_report is not None:
                report = compiled.preference_report  # DPO uploads the preference lines, so check those
            if not report.ok:
                raise InvalidInput(report.format(billed=self.backend.bills_tokens,
                                                 ignore=self.backend.ignored_check_codes))
            started = time.time()
            record = await self.backend.start_job(space, compiled, method=method,  # type: ignore[arg-type]
                                                  suffix=f"g{guild_id}")
            record.update({
                "created_at": started, "started_by": started_by, "channel_id": channel_id,
                "status_message_id": None, "model": None, "events": [], "error": None,
                "finished_at": None,
                "estimate": {"examples": report.n_examples, "tokens": report.est_tokens,
                             "epochs": report.epochs, "billed_tokens": report.billed_tokens},
                # Who the examples came from (top few, then the rest counted): provenance for !train and !jobs.
                "contributors": _top(compiled.contributors, CONTRIBUTORS_KEPT),
            })
            record.setdefault("step", 0)
            if self.settings.eval_gate:
                held = evaluation.holdout(compiled.supervised)
                if held:
                    await self._write("the held-out pairs", evaluation.save_holdout, space, record["id"], held)
            await self._write("the training job", jobs.save_job, space, record)
            log.info("guild %s: %s started %s job %s", guild_id, started_by, self.backend.name, record["id"])
            return record, report

    def check_method(self, method: str) -> None:
        """InvalidInput unless the backend in use trains with ``method`` (pure: checked before any data is added)."""
        if method not in METHODS:
            raise InvalidInput(f"Unknown training method `{method}`: use one of {', '.join(METHODS)}.")
        if method not in self.backend.methods:
            raise InvalidInput(self.backend.method_refusal(method))

    def relevant_warnings(self, report: CheckReport) -> list[Any]:
        """The checker's warnings that matter to the backend in use."""
        return [w for w in report.warnings if getattr(w, "code", "") not in self.backend.ignored_check_codes]

    def _apply(self, job: dict[str, Any], upd: JobUpdate) -> bool:
        """Merge an update into the record; True if anything changed."""
        before = dict(job)
        job["status"] = upd.status
        if upd.step is not None:
            job["step"] = upd.step
        if upd.total_steps:
            job["total_steps"] = upd.total_steps
        if upd.losses:
            step, loss = max(upd.losses)
            if not job.get("last_loss") or step >= job["last_loss"][0]:
                job["last_loss"] = [int(step), float(loss)]
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

    def owns(self, job: dict[str, Any]) -> bool:
        """Whether this process's backend can follow ``job`` (MODEL_BACKEND may have changed since)."""
        return job.get("backend") == self.backend.name

    async def poll_job(self, guild_id: int, job_id: str) -> dict[str, Any]:
        """Refresh a job from its backend and save it; on success the guild switches to the new model."""
        space = self.space(guild_id)
        # The jobs log is read and written off the loop: it grows with every status change.
        job = await asyncio.to_thread(jobs.get_job, space, job_id)
        if job.get("status") in TERMINAL:
            return job
        async with self._job_locks.setdefault(job["id"], asyncio.Lock()):
            job = await asyncio.to_thread(jobs.get_job, space, job["id"])  # fresh: a cancel may have saved it
            if job.get("status") in TERMINAL or not self.owns(job):
                return job  # another backend's job: nothing can poll it here
            upd = await self.backend.poll(space, job)
            if self._apply(job, upd):
                if (self.settings.eval_gate and job["status"] == "succeeded" and job.get("model")
                        and not job.get("activated") and "evaluation" not in job):
                    job["evaluation"] = await self._evaluate(space, job)
                await self._write("the job's progress", self._save, space, job, upd.losses)
            return job

    def _save(self, space: GuildSpace, job: dict[str, Any], losses: Sequence[tuple[int, float]] = ()) -> None:
        self._activate(space, job)
        jobs.save_job(space, job, losses)
        if job.get("status") in TERMINAL:
            evaluation.drop_holdout(space, job["id"])

    def _activate(self, space: GuildSpace, job: dict[str, Any]) -> None:
        """A job that just succeeded makes its model the guild's current one, unless the evaluation gate kept it
        as a candidate (then ``!model <name>`` switches to it)."""
        if job["status"] == "succeeded" and job.get("model") and not job.get("activated"):
            if (job.get("evaluation") or {}).get("candidate"):
                job["candidate"] = True
                return
            jobs.set_current_model(space, self.backend.name, job["model"])
            job["activated"] = True

    async def _evaluate(self, space: GuildSpace, job: dict[str, Any]) -> dict[str, Any]:
        """Score a just-trained model and the current one on the evaluation set and the job's held-out pairs.

        The new model is asked by name, so scoring never makes it current. It becomes a ``candidate`` (not
        switched to) when it is more than EVAL_MARGIN worse than the current model on the evaluation set. A
        backend error while scoring is reported in the result and does not hold the model back (the gate
        guards against worse models, not against an unreachable API).
        """
        old = await self.current_model(space.guild_id)
        new = str(job["model"])
        result: dict[str, Any] = {"old_model": old if old != new else None, "margin": EVAL_MARGIN}
        cases = await asyncio.to_thread(evaluation.eval_set, space)
        held = await asyncio.to_thread(evaluation.load_holdout, space, job["id"])
        try:
            for part, chosen in (("set", cases), ("heldout", held)):
                if not chosen:
                    continue
                score = {"n": len(chosen), "new": (await self._score(space, new, chosen)).correct}
                if result["old_model"]:
                    score["old"] = (await self._score(space, result["old_model"], chosen)).correct
                result[part] = score
        except TrainerError as exc:
            log.warning("guild %s: could not score %s before switching to it: %s", space.guild_id, new, exc)
            return {**result, "error": str(exc), "candidate": False}
        scored = result.get("set")
        result["candidate"] = bool(scored and "old" in scored
                                   and (scored["new"] - scored["old"]) / scored["n"] < -EVAL_MARGIN)
        log.info("guild %s: %s scored %s (candidate: %s)", space.guild_id, new, result, result["candidate"])
        return result

    def _ask(self, space: GuildSpace, model_name: str | None) -> Callable[[Case], Any]:
        """How a case is asked of ``model_name`` (by name: asking never changes the current model)."""
        async def ask(case: Case) -> str:
            if case.kind == "label":
                return await self.backend.predict_label(space, model_name, case.input)
            return await self.backend.answer(space, model_name, case.input, ())
        return ask

    async def _score(self, space: GuildSpace, model_name: str, cases: list[Case]) -> EvalResult:
        return await run_cases(self._ask(space, model_name), cases, concurrency=TEST_CONCURRENCY)

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
            self._apply(job, upd)
            if job["status"] == "cancelled" and by:
                job["cancelled_by"] = by
            await self._write("the cancellation", self._save, space, job, upd.losses)
            return job

    async def set_status_message(self, guild_id: int, job_id: str, message_id: int) -> dict[str, Any]:
        """Remember which message the watcher edits for this job (survives restarts), under the job's lock
        so a concurrent poll or cancel cannot undo it."""
        space = self.space(guild_id)

        def work() -> dict[str, Any]:
            job = jobs.get_job(space, job_id)
            job["status_message_id"] = message_id
            return jobs.save_job(space, job)

        async with self._job_locks.setdefault(job_id, asyncio.Lock()):
            return await self._write("the job's status message", work)

    async def list_jobs(self, guild_id: int, limit: int = 10) -> list[dict[str, Any]]:
        """Newest jobs first."""
        return await asyncio.to_thread(jobs.list_jobs, self.space(guild_id), limit)

    async def unfinished_jobs(self) -> list[tuple[int, dict[str, Any]]]:
        """(guild_id, job) for every unfinished job of this backend on disk: what the watcher resumes."""
        def work() -> list[tuple[int, dict[str, Any]]]:
            return [(guild_id, job) for guild_id in jobs.guilds_with_unfinished_jobs(self.db)
                    for job in jobs.unfinished_jobs(self.space(guild_id)) if self.owns(job)]

        return await asyncio.to_thread(work)

    @staticmethod
    def status_text(job: dict[str, Any]) -> str:
        """The text of a job's status message (pure and cheap)."""
        return status.render_status(job)

    @staticmethod
    def no_loss_reason(job: dict[str, Any]) -> str:
        """Why a finished job has no loss curve, in one sentence."""
        return status.no_loss_reason(job)

    async def loss_curve_png(self, guild_id: int, job: dict[str, Any]) -> bytes | None:
        """The loss curve as PNG (rendered in a thread), None without loss points."""
        space = self.space(guild_id)
        return await asyncio.to_thread(lambda: status.loss_curve_png(
            jobs.job_losses(space, job["id"]), f"{job.get('id')} ({job.get('status')})"))

    # ------------------------------------------------------------ models

    async def current_model(self, guild_id: int) -> str | None:
        """The model this guild answers with, None before the first training."""
        return await asyncio.to_thread(jobs.current_model, self.space(guild_id), self.backend.name)

    async def list_models(self, guild_id: int) -> list[str]:
        """Models that can be selected, oldest first."""
        space = self.space(guild_id)
        return await asyncio.to_thread(lambda: self.backend.list_models(space, jobs.list_jobs(space, 0)))

    async def set_model(self, guild_id: int, name: str) -> str:
        """Switch to ``name`` (must exist) or ``"previous"``; returns the new current model."""
        space = self.space(guild_id)
        name = (name or "").strip().strip("`")

        def work() -> str:
            if name.lower() == "previous":
                return jobs.set_current_model(space, self.backend.name, None, back=True) or ""
            if not self.backend.model_exists(space, name, jobs.list_jobs(space, 0)):
                known = self.backend.list_models(space, jobs.list_jobs(space, 0))
                shown = ", ".join(f"`{m}`" for m in known[-5:]) or "none yet"
                raise NotFound(f"There is no model `{name}` on this server. Known: {shown}.")
            return jobs.set_current_model(space, self.backend.name, name) or name

        return await self._write("the model switch", work)

    async def describe_backend(self) -> str:
        """One line on how the backend answers (it may load its model the first time)."""
        return await asyncio.to_thread(self.backend.describe)

    async def export_model(self, guild_id: int, *, read_limit: int) -> tuple[str, str, int, bytes | None]:
        """Export the current model: (model name, the file as shown in the data space, its size, its bytes
        when at most ``read_limit`` so it can be attached, else None)."""
        name = await self.current_model(guild_id)
        if not name:
            raise NotFound(f"There is no trained model to export yet; train one with `{self.settings.prefix}train`.")
        space = self.space(guild_id)
        path = await self.backend.export(space, name)

        def read() -> tuple[str, str, int, bytes | None]:
            size = path.stat().st_size
            return name, space.relative(path), size, path.read_bytes() if size <= read_limit else None

        return await asyncio.to_thread(read)

    async def export_data(self, guild_id: int, *, read_limit: int) -> tuple[DataExport, list[tuple[str, bytes]],
                                                                          str | None]:
        """Export the compiled dataset. Returns the export, the files to attach as (name, bytes) when they fit
        in ``read_limit`` bytes together (else one zip of them when it fits, else none), and where the zip
        lies in the data space when one was made."""
        space = self.space(guild_id)

        def work() -> tuple[DataExport, list[tuple[str, bytes]], str | None]:
            result = export.export_data(space)
            if result.bytes <= read_limit:
                return result, [(f.name, f.read_bytes()) for f in result.files], None
            zipped = archive.archive_folder(space, space.relative(result.folder))
            shown = f"archives/{zipped.name}"
            fits = zipped.bytes <= read_limit
            return result, ([(zipped.name, zipped.path.read_bytes())] if fits else []), shown

        return await self._write("the export", work)

    # ------------------------------------------------------------ budgets on paid calls

    def paid(self, kind: str) -> bool:
        """Whether a call of ``kind`` (``chat``, ``transcription``, ``speech``) costs money with the backends in
        use, as their ``paid`` class attributes say (pure and cheap: a cog asks before working out exemption)."""
        if kind == "chat":
            return self.backend.paid
        if kind == "transcription":
            return recognizer_paid(self.settings)
        if kind == "speech":
            return synthesizer_paid(self.settings)
        raise ValueError(f"unknown paid call kind {kind!r}")

    async def charge(self, guild_id: int, user_id: int, kind: str, *, exempt: bool = False) -> None:
        """Count one paid call of ``kind`` by a member before it is made; OverBudget (whose text is the line to
        show, with the reset time) when they already made PAID_CALLS_PER_USER_PER_DAY today in this server.

        Free calls (local backends), exempt members and a limit of 0 are not counted. A count that cannot be
        written lets the call through (logged): a full disk should not silence the bot.
        """
        limit = self.settings.paid_calls_per_user_per_day
        if exempt or limit == 0 or not self.paid(kind):
            return
        try:
            used = await asyncio.to_thread(budget.charge, self.space(guild_id), user_id, kind, limit=limit)
        except OSError as exc:
            log.warning("guild %s: could not count a paid %s call of user %s (%s); letting it through",
                        guild_id, kind, user_id, exc.strerror or type(exc).__name__)
            return
        if used.total == limit:
            log.info("guild %s: user %s made the last of their %d paid calls today", guild_id, user_id, limit)

    # ------------------------------------------------------------ answering and testing

    async def answer(self, guild_id: int, prompt: str, history: History = ()) -> str:
        """Answer with the guild's current model; ``history`` is (role, content) pairs, oldest first."""
        return await self.backend.answer(self.space(guild_id), await self.current_model(guild_id), prompt, history)

    @staticmethod
    def check_test_upload(filename: str, size: int) -> None:
        """Refuse a test file before it is downloaded."""
        if not filename.lower().endswith((".json", ".jsonl")):
            raise InvalidInput(f"`{filename}` is not a .json or .jsonl file.")
        if size > MAX_TEST_UPLOAD:
            raise TooLarge(f"`{filename}` is {fmt_bytes(size)}; test files are limited to "
                           f"{fmt_bytes(MAX_TEST_UPLOAD)}.")

    async def run_tests(self, guild_id: int, text: str, *, concurrency: int = TEST_CONCURRENCY,
                        author_id: int | None = None, author_name: str | None = None) -> EvalResult:
        """Run test cases (JSON array or lines) against the current model; mismatches are kept as errors and
        the cases join the server's evaluation set (what the evaluation gate scores new models on)."""
        cases = await asyncio.to_thread(parse_cases, text)
        space = self.space(guild_id)
        model_name = await self.current_model(guild_id)
        result = await run_cases(self._ask(space, model_name), cases, concurrency=concurrency)
        await self._write("the evaluation set", evaluation.add_to_eval_set, space, cases, author_id=author_id,
                          author_name=author_name)
        if result.mismatches:
            rows = [TestError(m["input"], m["expected"], m.get("got"), m.get("kind", "answer"), m.get("line"),
                              model_name) for m in result.mismatches]
            await self._write("the mismatches", corrections.add_test_errors, space, rows)
        return result


if __name__ == "__main__":
    sys.exit(check.main(sys.argv[1:]))
