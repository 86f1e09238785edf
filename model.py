"""The Model: the one door from the cogs to the domain (data in, what members give, training jobs, models,
tests, answers, budgets).

Every public method is async (disk, database and CPU work runs in threads inside), so a cog never decides what
blocks, and each is a delegation: data is ``dataset``, records are ``dataset.corrections`` and ``training.jobs``
in the database (``records``), a job's life and the evaluation gate are ``training.lifecycle``, training and
answering is a backend (``MODEL_BACKEND``, see ``training.backend.BACKENDS``). ``Model.space`` is the only place
a server's space is built; the Model keeps the locks and caches that live as long as the bot.

``python model.py check FILE.jsonl`` checks a fine-tuning file (delegates to ``dataset.check``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dataset import archive, check, corrections, export, forget, picks, sources
from dataset import folder as dataset_folder
from dataset.archive import ArchiveResult
from dataset.corrections import Answer, Correction, Feedback, Pick, ReactionCounts, RepliedTo
from dataset.export import DataExport
from dataset.folder import SelectResult
from dataset.formats import SUPPORTED, IngestReport
from dataset.picks import Choice, Group, Offer, Refused
from errors import InvalidInput, NotFound, TooLarge
from records import legacy
from records.db import Database, DatabaseUnavailable
from speech.recognize import recognizer_paid
from speech.synthesize import synthesizer_paid
from storage import GuildSpace, fmt_bytes, remove_leftovers, saved
from training import budget, jobs, status
from training.backend import History, Job, Reply, TrainingBackend, create_backend
from training.evaluation import EvalResult
from training.lifecycle import TEST_CONCURRENCY, JobRunner

if TYPE_CHECKING:
    import openai

    from config import Settings
    from dataset.check import CheckReport, Issue

log = logging.getLogger(__name__)

MAX_DATA_UPLOAD = 100 * 1024 * 1024  # a training file bigger than this is refused before download
MAX_TEST_UPLOAD = 5 * 1024 * 1024


@dataclass(frozen=True)
class ReactionResult:
    """A 👍/👎 recorded on ``answer``; ``ask``: ask this person for the right answer now."""

    kind: str
    answer: Answer
    ask: bool


class Model:
    """Data in, training jobs, the current model per server, tests and answers: one async API for the cogs."""

    def __init__(self, settings: Settings, *, db: Database, openai_client: openai.AsyncOpenAI | None = None,
                 backend: TrainingBackend | None = None) -> None:
        self.settings = settings
        self.db = db
        self.backend = backend if backend is not None else create_backend(settings, openai_client=openai_client)
        self.jobs = JobRunner(settings, self.backend)
        # A cache that makes de-duplication cheap; it lives as long as the bot.
        self._dataset_hashes: dataset_folder.HashCache = {}
        self._forget_notices: list[forget.ForgetNotice] = []  # found at start, told once the bot is ready

    async def start(self) -> None:
        """Bring the database up to date, import an older version's records, clean up after a crash, then start
        the backend (once, from the bot's setup_hook)."""
        data, corr = self.settings.data_dir, self.settings.corrections_dir
        await asyncio.to_thread(self.db.migrate)
        # Records written by a version before the database are imported once (the files are kept, hidden).
        await asyncio.to_thread(legacy.import_legacy, self.db, data, corr)
        # A forget cut short is finished (its journal row was committed) or rolled back (it was not).
        for line in await asyncio.to_thread(forget.recover, self.db, data, corr):
            log.warning("%s (the bot stopped mid-way)", line)
        self._forget_notices = await asyncio.to_thread(forget.pending_notices, self.db)
        for path, size in await asyncio.to_thread(remove_leftovers, data, corr):
            # A hidden temp file is what a write cut short leaves (an upload, an archive, a model version).
            log.warning("removed %s (%s) left by an interrupted write (the bot stopped mid-way; that upload, "
                        "archive or training did not complete)", path, fmt_bytes(size))
        await self.backend.start()

    async def close(self) -> None:
        """Give back this process's job leases, stop local trainings started by it and release the backend."""
        await self.jobs.release_leases(self.db)
        await self.backend.close()

    def space(self, guild_id: int) -> GuildSpace:
        """The server's folders and records: the only place a GuildSpace is built."""
        return GuildSpace(guild_id, self.settings.data_dir, self.settings.corrections_dir, self.db)

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
        """Store an uploaded file and add its examples to the current dataset."""
        return await saved(f"`{filename}`", dataset_folder.add_upload, self.space(guild_id), filename, data,
                           positive=positive, author=author, cache=self._dataset_hashes, author_id=author_id,
                           origin=origin)

    async def add_text(self, guild_id: int, text: str, *, positive: bool, author: str, author_id: int | None = None,
                       origin: str | None = None) -> IngestReport:
        """Add examples written in a message (one per line, ``question => answer`` for pairs)."""
        return await saved("the examples", dataset_folder.ingest_text, self.space(guild_id), text,
                           positive=positive, author=author, cache=self._dataset_hashes, author_id=author_id,
                           origin=origin)

    async def add_path(self, guild_id: int, user_path: str, *, positive: bool, author: str,
                       author_id: int | None = None, origin: str | None = None) -> IngestReport:
        """Add a file or folder of the server's data space (a path the user typed)."""
        return await saved("the examples", dataset_folder.ingest_path, self.space(guild_id), user_path,
                           positive=positive, author=author, cache=self._dataset_hashes, author_id=author_id,
                           origin=origin)

    async def path_exists(self, guild_id: int, user_path: str) -> bool:
        """Whether a typed path names an entry of the server's data space (False when refused)."""
        return await asyncio.to_thread(dataset_folder.path_exists, self.space(guild_id), user_path)

    async def suggest_paths(self, guild_id: int, typed: str, *, folders_only: bool = False) -> list[str]:
        """Paths of the data space that start like ``typed`` (autocomplete), at most 25."""
        return await asyncio.to_thread(dataset_folder.suggest_paths, self.space(guild_id), typed,
                                       folders_only=folders_only)

    async def dataset_name(self, guild_id: int) -> str:
        """The current dataset as users see it, e.g. ``datasets/main``."""
        return await asyncio.to_thread(dataset_folder.dataset_name, self.space(guild_id))

    async def select_dataset(self, guild_id: int, user_dir: str, *, positive: bool) -> SelectResult:
        """Make a folder the dataset for the next training; it is archived first."""
        return await saved("the dataset choice", dataset_folder.select_dataset, self.space(guild_id), user_dir,
                           positive=positive)

    async def archive(self, guild_id: int, user_dir: str, *, read_limit: int) -> tuple[ArchiveResult, str, bytes | None]:
        """Zip a folder of the data space: the result, the folder as stored, the zip's bytes when they fit."""
        return await saved("the archive", archive.archive_for_chat, self.space(guild_id), user_dir,
                           read_limit=read_limit)

    async def list_uploads(self, guild_id: int) -> list[sources.Source]:
        """What the current dataset was given, batch by batch (uploads, examples written in a message, paths),
        newest first, each with its id and count of examples."""
        return await asyncio.to_thread(sources.list_sources, self.space(guild_id))

    async def upload_removal_preview(self, guild_id: int, source_id: str) -> sources.Source:
        """What ``remove_upload`` would take away (nothing is changed): for a confirmation with counts."""
        return await asyncio.to_thread(sources.removal_preview, self.space(guild_id), source_id)

    async def remove_upload(self, guild_id: int, source_id: str) -> sources.Source:
        """Take a source out of the current dataset: its examples and its stored upload; what was removed."""
        return await saved("the removal", sources.remove, self.space(guild_id), source_id)

    async def read_file(self, guild_id: int, user_path: str, *, limit: int) -> tuple[str, str, bytes]:
        """A file of the data space as (path shown, file name, bytes); TooLarge above ``limit`` bytes."""
        return await asyncio.to_thread(dataset_folder.read_user_file, self.space(guild_id), user_path, limit=limit)

    # ------------------------------------------------------------ what members give

    async def record_answer(self, guild_id: int, *, message_ids: Sequence[int], channel_id: int, prompt: str,
                            answer: str, prompt_message_id: int | None, author_id: int | None,
                            author_name: str | None = None) -> None:
        """Log an answer (every message it was sent as) so ``!correct`` can find it; ``author_*`` is who asked."""
        model_name = await self.current_model(guild_id)
        # Any part of a long answer can be the one someone corrects.
        await saved("the answer log", corrections.record_answer, self.space(guild_id),
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
                      trusted: bool = False, question_trusted: bool = False) -> Correction:
        """Store a correction of a logged answer; returns the record (with its ``ref`` and ``approved``).

        It is approved at once when ``trusted`` (an admin wrote it) or REVIEW_CORRECTIONS is off; otherwise it
        waits in the review queue. It is published as written only when an admin wrote both it and the question
        (``question_trusted``); otherwise with markdown and masked links neutralised (``dataset.markdown``).
        """
        approved = trusted or not self.settings.review_corrections
        return await saved(
            "your correction", corrections.add_correction, self.space(guild_id), message_id=answer.message_id,
            prompt=answer.prompt, answer=answer.answer, correction=correction,
            author_id=author_id, author_name=author_name, channel_id=channel_id,
            source_message_id=source_message_id, approved=approved, trusted=trusted and question_trusted,
        )

    async def pending_corrections(self, guild_id: int) -> list[Correction]:
        """Members' corrections waiting for review, oldest first."""
        return await asyncio.to_thread(corrections.pending_corrections, self.space(guild_id))

    async def pending_picks(self, guild_id: int) -> list[Pick]:
        """Members' picks on offers (paraphrases) waiting for review, oldest first."""
        return await asyncio.to_thread(corrections.pending_picks, self.space(guild_id))

    async def review(self, guild_id: int, refs: list[str], *, approve: bool, by_id: int, by_name: str,
                     reason: str = "") -> list[Correction | Pick]:
        """Approve or reject corrections and picks by id (all or none; InvalidInput names the first bad one)."""
        return await saved("the review decision", corrections.review, self.space(guild_id), refs,
                                 approve=approve, by_id=by_id, by_name=by_name, reason=reason)

    async def feedback(self, guild_id: int, text: str, *, author_id: int, author_name: str, channel_id: int,
                       reply_to: RepliedTo | None, source_message_id: int | None = None) -> Feedback:
        """Store feedback; returns the record (with its ``ref``)."""
        return await saved(
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
        ask = await saved("your reaction", corrections.add_reaction, self.space(guild_id),
                                message_id=message_id, channel_id=channel_id, kind=kind, added=added,
                                author_id=user_id, author_name=user_name, model=answer.model)
        return ReactionResult(kind, answer, ask)

    async def record_ask(self, guild_id: int, *, ask_message_id: int, message_id: int, channel_id: int | None,
                         user_id: int, user_name: str) -> None:
        """Remember the bot's ask for the right answer to ``message_id`` (sent after ``user_id``'s 👎)."""
        await saved("the ask", corrections.add_ask, self.space(guild_id), ask_message_id=ask_message_id,
                          message_id=message_id, channel_id=channel_id, author_id=user_id, author_name=user_name)

    async def answer_asked_about(self, guild_id: int, ask_message_id: int) -> Answer | None:
        """The logged answer an ask of the bot is about (a reply to that ask corrects it), or None."""
        ask = await asyncio.to_thread(corrections.find_ask, self.space(guild_id), ask_message_id)
        return None if ask is None else await self.find_answer(guild_id, ask.message_id)

    async def reaction_counts(self, guild_id: int) -> dict[str, ReactionCounts]:
        """model -> {"up": n, "down": n}: the reactions standing now on the answers of each model."""
        return await asyncio.to_thread(corrections.reaction_counts, self.space(guild_id))

    async def people(self, guild_id: int, typed: str = "") -> list[tuple[int, str]]:
        """(id, name) of the people this server keeps something from, whose name contains ``typed``."""
        return await asyncio.to_thread(forget.people, self.space(guild_id), typed)

    async def forget_preview(self, guild_id: int, user_id: int) -> forget.ForgetResult:
        """What ``forget_user`` would remove now (nothing is changed), for a confirm dialog."""
        return await asyncio.to_thread(forget.preview, self.space(guild_id), user_id)

    # ------------------------------------------------------------ "Did you mean" offers, picks, unanswered

    async def add_offer(self, guild_id: int, *, channel_id: int, author_id: int, author_name: str | None,
                        prompt: str, prompt_message_id: int | None, offers: Sequence[tuple[str, str]]) -> Offer:
        """Record a "Did you mean" offer before its buttons are sent (they name its id); they work for
        OFFER_BUTTONS_MINUTES."""
        model_name = await self.current_model(guild_id)
        return await saved("the offer", picks.add_offer, self.space(guild_id), channel_id=channel_id,
                           author_id=author_id, author_name=author_name, prompt=prompt,
                           prompt_message_id=prompt_message_id, options=offers, model=model_name,
                           minutes=self.settings.offer_buttons_minutes)

    async def set_offer_message(self, guild_id: int, offer_id: int, message_id: int) -> None:
        """The message an offer's buttons were sent on."""
        await saved("the offer", picks.set_offer_message, self.space(guild_id), offer_id, message_id)

    async def get_offer(self, guild_id: int, offer_id: int) -> Offer | None:
        """An offer of this server, or None (also for an id of another server's)."""
        return await asyncio.to_thread(picks.get_offer, self.space(guild_id), offer_id)

    async def choose(self, guild_id: int, offer_id: int, choice: int, *, user_id: int, user_name: str,
                     trusted: bool) -> Choice:
        """The asker's click on an offer (``picks.NONE_OF_THESE`` or an option's index), recorded.

        A pick of an admin (``trusted``), or of anyone while REVIEW_CORRECTIONS is off, counts at once; a
        member's waits for review or for PICKS_TO_LEARN members making the same pick. Refused / NotAsker /
        NotFound (nothing recorded) for a click that cannot count.
        """
        return await saved("your choice", picks.choose, self.space(guild_id), offer_id, choice, user_id=user_id,
                           user_name=user_name, trusted=trusted or not self.settings.review_corrections,
                           picks_to_learn=self.settings.picks_to_learn)

    async def expired_offers(self, guild_ids: set[int] | None = None) -> list[tuple[int, Offer]]:
        """(guild id, offer) for expired offers whose buttons are still enabled (oldest first)."""
        return await asyncio.to_thread(picks.expired_open_offers, self.db, guild_ids)

    async def close_offer(self, guild_id: int, offer_id: int) -> None:
        """Note that an offer's buttons were disabled."""
        await saved("the offer", picks.close_offer, self.space(guild_id), offer_id)

    async def unanswered(self, guild_id: int) -> list[Group]:
        """The unanswered questions ("None of these"), grouped by meaning with the backend's embedding model,
        most asked first."""
        space = self.space(guild_id)

        def work() -> list[Group]:
            return picks.group_unanswered(picks.open_unanswered(space), self.backend.embed,
                                          self.backend.same_meaning())

        return await asyncio.to_thread(work)

    async def unanswered_question(self, guild_id: int, row_id: int) -> str:
        """The text of an open unanswered question of this server (cheap: what a button checks before its form
        opens); NotFound, or Refused when it was answered."""
        row = await asyncio.to_thread(picks.unanswered_row, self.space(guild_id), row_id)
        if row is None:
            raise NotFound("That question doesn't exist in this server. Nothing was saved.")
        if row[1] is not None:
            raise Refused(f"That question was already answered (correction `{row[1]}`). Nothing was saved.")
        return row[0].prompt

    async def answer_unanswered(self, guild_id: int, row_id: int, *, question: str, answer: str,
                                author_id: int, author_name: str, channel_id: int | None) -> Correction:
        """An admin's answer to the unanswered question ``row_id`` and those grouped with it now: an approved
        correction (it counts at once), and the group leaves the list. Refused when it was answered meanwhile
        (a form submitted twice), NotFound for a question not of this server."""
        await self.unanswered_question(guild_id, row_id)
        # Grouped again now: questions asked since the list was shown join their group.
        found = next((g for g in await self.unanswered(guild_id) if any(r.id == row_id for r in g.rows)), None)
        if found is None:  # answered between the check and the grouping
            raise Refused("That question was already answered. Nothing was saved.")
        return await saved("the answer", picks.answer_group, self.space(guild_id), found, question=question,
                           answer=answer, author_id=author_id, author_name=author_name, channel_id=channel_id)

    async def forget_user(self, guild_id: int, user_id: int, *, channel_id: int | None = None,
                          requester_id: int | None = None, user_name: str | None = None) -> forget.ForgetResult:
        """Remove everything one person gave in this server, their words in others' records too (see
        ``dataset.forget``); NotFound when nothing. With ``channel_id`` it is journaled until ``forget_told``:
        if the bot stops before, the person who asked is told there after the restart (``forget_notices``)."""
        return await saved("the removal", forget.forget, self.space(guild_id), user_id, channel_id=channel_id,
                           requester_id=requester_id, user_name=user_name)

    async def forget_told(self, journal_id: int | None) -> None:
        """The answer to a forget went out (or a notice after a restart did): its journal row goes."""
        if journal_id is not None:
            await saved("the removal's journal", forget.told, self.db, journal_id)

    async def forget_notices(self, guild_ids: set[int]) -> list[forget.ForgetNotice]:
        """Forgets the bot stopped in (found at start) whose person, in one of ``guild_ids``, was not told how
        they ended; each is handed out once (``forget_told`` when the notice went out)."""
        mine = [n for n in self._forget_notices if n.guild_id in guild_ids]
        self._forget_notices = [n for n in self._forget_notices if n not in mine]
        return mine

    # ------------------------------------------------------------ training (training.lifecycle)

    def check_method(self, method: str) -> None:
        """InvalidInput unless the backend in use trains with ``method`` (pure: checked before any data is added)."""
        self.jobs.check_method(method)

    def relevant_warnings(self, report: CheckReport) -> list[Issue]:
        """The checker's warnings that matter to the backend in use."""
        return self.jobs.relevant_warnings(report)

    async def train(self, guild_id: int, *, method: str = "supervised", started_by: str,
                    channel_id: int) -> tuple[Job, CheckReport]:
        """Compile the server's data, check it, and start a job (Busy while one runs)."""
        return await self.jobs.train(self.space(guild_id), method=method, started_by=started_by,
                                     channel_id=channel_id)

    async def poll_job(self, guild_id: int, job_id: str) -> Job:
        """Refresh a job from its backend and save it (WatchedElsewhere: another process watches it)."""
        return await self.jobs.poll_job(self.space(guild_id), job_id)

    async def cancel_job(self, guild_id: int, job_id: str, *, by: str | None = None) -> Job:
        """Cancel a running job; returns the saved job."""
        return await self.jobs.cancel_job(self.space(guild_id), job_id, by=by)

    async def set_status_message(self, guild_id: int, job_id: str, message_id: int) -> None:
        """Remember which message the watcher edits for this job."""
        await self.jobs.set_status_message(self.space(guild_id), job_id, message_id)

    async def list_jobs(self, guild_id: int, limit: int = 10) -> list[Job]:
        """Newest jobs first."""
        return await asyncio.to_thread(jobs.list_jobs, self.space(guild_id), limit)

    async def unfinished_jobs(self, guild_ids: set[int] | None = None) -> list[tuple[int, Job]]:
        """(guild id, job) for every unfinished job no other process watches: what the watcher resumes."""
        return await self.jobs.unfinished_jobs(self.db, self.space, guild_ids)

    @staticmethod
    def status_text(job: Job) -> str:
        """The text of a job's status message (pure and cheap)."""
        return status.render_status(job)

    @staticmethod
    def no_loss_reason(job: Job) -> str:
        """Why a finished job has no loss curve, in one sentence."""
        return status.no_loss_reason(job)

    async def loss_curve_png(self, guild_id: int, job: Job) -> bytes | None:
        """The loss curve as PNG (rendered in a thread), None without loss points."""
        space = self.space(guild_id)
        return await asyncio.to_thread(lambda: status.loss_curve_png(
            jobs.job_losses(space, job.id), f"{job.id} ({job.status})"))

    # ------------------------------------------------------------ models

    async def current_model(self, guild_id: int) -> str | None:
        """The model this server answers with, None before the first training."""
        return await self.jobs.current_model(self.space(guild_id))

    async def list_models(self, guild_id: int) -> list[str]:
        """Models that can be selected, oldest first."""
        return await self.jobs.list_models(self.space(guild_id))

    async def held_back(self, guild_id: int) -> dict[str, str]:
        """Models the evaluation gate held back (newest first) -> why, one clause each."""
        found = await self.list_jobs(guild_id, 0)
        return {j.model: status.held_back_reason(j.evaluation) for j in found
                if j.candidate and j.model and j.evaluation is not None}

    async def set_model(self, guild_id: int, name: str) -> str:
        """Switch to ``name`` (must exist) or ``"previous"``; returns the new current model."""
        return await self.jobs.set_model(self.space(guild_id), name)

    async def describe_backend(self) -> str:
        """One line on how the backend answers (it may load its model the first time)."""
        return await asyncio.to_thread(self.backend.describe)

    async def export_model(self, guild_id: int, *, read_limit: int) -> tuple[str, str, int, bytes | None]:
        """Export the current model: (model name, the file as shown in the data space, its size, its bytes
        when at most ``read_limit`` so it can be attached, else None)."""
        name = await self.current_model(guild_id)
        if not name:
            raise NotFound("There is no trained model to export yet.", helps=("train", "trains one"))
        space = self.space(guild_id)
        path = await self.backend.export(space, name)
        data = await asyncio.to_thread(archive.read_if_small, path, read_limit)
        return name, space.relative(path), path.stat().st_size, data

    async def export_data(self, guild_id: int, *, read_limit: int) -> tuple[DataExport, list[tuple[str, bytes]],
                                                                          str | None]:
        """Export the compiled dataset: the export, the files to attach, and where a zip of them lies."""
        return await saved("the export", export.export_for_chat, self.space(guild_id), read_limit=read_limit)

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
        except (OSError, DatabaseUnavailable) as exc:
            log.warning("guild %s: could not count a paid %s call of user %s (%s); letting it through",
                        guild_id, kind, user_id, getattr(exc, "strerror", None) or exc)
            return
        if used.total == limit:
            log.info("guild %s: user %s made the last of their %d paid calls today", guild_id, user_id, limit)

    # ------------------------------------------------------------ answering and testing

    async def answer(self, guild_id: int, prompt: str, history: History = ()) -> str:
        """Answer with the server's current model; ``history`` is (role, content) pairs, oldest first."""
        return await self.jobs.answer(self.space(guild_id), prompt, history)

    async def reply(self, guild_id: int, prompt: str, history: History = ()) -> Reply:
        """``answer``, with the questions the model offers instead when it does not know (the chat's buttons)."""
        space = self.space(guild_id)
        return await self.backend.reply(space, await self.jobs.current_model(space), prompt, history)

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
        """Run test cases against the current model (see ``JobRunner.run_tests``)."""
        return await self.jobs.run_tests(self.space(guild_id), text, concurrency=concurrency, author_id=author_id,
                                         author_name=author_name)


if __name__ == "__main__":
    sys.exit(check.main(sys.argv[1:]))
