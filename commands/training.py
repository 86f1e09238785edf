"""Training: data in through !train, jobs followed in one edited message, models and tests."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import Any

import discord
from discord.ext import commands

import checks
from commands.data import fmt_bytes, split_flags
from dataset import folder as dataset_folder
from dataset import formats
from errors import BackendError, InvalidInput, NotFound, TooLarge, TrainerError
from storage import GuildSpace
from textsplit import split_message
from training import jobs
from training.backend import TERMINAL

log = logging.getLogger(__name__)

MAX_DATA_UPLOAD = 100 * 1024 * 1024  # a training file bigger than this is refused before download
MAX_TEST_UPLOAD = 5 * 1024 * 1024
STATUS_EDIT_INTERVAL = 2.0  # Discord rate-limits edits; a job's bar need not move faster than this
# Dataset warnings about OpenAI's format that do not matter to the local backend.
OPENAI_ONLY_WARNINGS = frozenset({"missing_system_message", "too_many_tokens"})


class Training(commands.Cog):
    """Train the model, follow jobs, switch and test models."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.watchers: dict[str, asyncio.Task[None]] = {}

    @property
    def model(self) -> Any:
        return self.bot.model

    def space(self, guild_id: int) -> GuildSpace:
        return GuildSpace(guild_id, self.bot.settings.data_dir, self.bot.settings.corrections_dir)

    async def cog_load(self) -> None:
        self._resumer = asyncio.create_task(self._resume_watchers())

    async def cog_unload(self) -> None:
        self._resumer.cancel()
        for task in self.watchers.values():
            task.cancel()

    async def cog_check(self, ctx: commands.Context) -> bool:
        if ctx.guild is None:
            raise commands.NoPrivateMessage("This command only works in a server.")
        return True

    async def cog_command_error(self, ctx: commands.Context, error: commands.CommandError) -> None:
        # discord.py's own text ("Too many people are using this command...") does not say what to do.
        if isinstance(error, commands.MaxConcurrencyReached) and ctx.command is not None:
            ctx.error_handled = True
            what = {"train": "A training is being started", "test": "A test is running"}.get(
                ctx.command.name, f"`{ctx.clean_prefix}{ctx.command.name}` is already running")
            await ctx.send(f"{what} in this server right now; try again when it has finished.")

    # ----------------------------------------------------------------- !train
    @commands.command(usage="[data | path] [positive=yes] [method=supervised|dpo] (+ attached files)")
    @checks.trainer_admin()
    @commands.max_concurrency(1, commands.BucketType.guild, wait=False)
    async def train(self, ctx: commands.Context, *, args: str = "") -> None:
        """Add data (attached files, inline examples or a path), then train a new model."""
        text, flags = split_flags(args, ("positive",))
        method = "supervised"
        words = []
        for word in text.split(" "):
            if word.lower().startswith("method="):
                method = word.split("=", 1)[1].lower()
                if method not in ("supervised", "dpo"):
                    raise InvalidInput("`method=` takes supervised or dpo.")
            else:
                words.append(word)
        text = " ".join(words).strip()
        positive = flags.get("positive", True)
        space = self.space(ctx.guild.id)
        author = f"{ctx.author} ({ctx.author.id})"
        if ctx.message.attachments or text:
            reports = await self._ingest(ctx, space, text, positive, author)
            if len(reports) == 1 and isinstance(reports[0][1], TrainerError):
                raise reports[0][1]  # one source that could not be read: its message says it all
            added = sum(r.added for _, r in reports if isinstance(r, formats.IngestReport))
            lines = []
            for name, r in reports:
                said = r.summary() if isinstance(r, formats.IngestReport) else f"not read: {r}"
                lines.append(f"**{name}**: {said}" if len(reports) > 1 else said)
            lines.append(f"Dataset `{await asyncio.to_thread(dataset_folder.dataset_name, space)}`.")
            if not added:
                # Nothing new: training again would give the same model.
                lines.append("Nothing new was added, so I did not start training.")
            for chunk in split_message("\n".join(lines)):
                await ctx.send(chunk)
            if not added:
                return
        await self._start_job(ctx, method)

    async def _ingest(self, ctx: commands.Context, space: GuildSpace, text: str, positive: bool,
                      author: str) -> list[tuple[str, formats.IngestReport | TrainerError]]:
        """Each attachment, then the inline text or path: its report, or the error that stopped it.

        A bad file does not stop the others (their examples are already in the dataset and must be
        reported); the caller shows every outcome.
        """
        reports: list[tuple[str, formats.IngestReport | TrainerError]] = []
        for att in ctx.message.attachments:
            try:
                reports.append((att.filename, await self._ingest_attachment(space, att, positive, author)))
            except TrainerError as exc:
                reports.append((att.filename, exc))
        if text:
            name = text.split("\n")[0][:40]
            try:
                if self._looks_like_path(text, space):
                    try:
                        report = await asyncio.to_thread(dataset_folder.ingest_path, space, text, positive=positive,
                                                         author=author)
                    except NotFound as exc:
                        raise NotFound(f"{exc} To add examples written in the message instead, put one per "
                                       f"line: `{ctx.clean_prefix}train question => answer`.") from None
                else:
                    report = await asyncio.to_thread(dataset_folder.ingest_text, space, text, positive=positive,
                                                     author=author)
                reports.append((name, report))
            except TrainerError as exc:
                reports.append((name, exc))
        return reports

    @staticmethod
    async def _ingest_attachment(space: GuildSpace, att: discord.Attachment, positive: bool,
                                 author: str) -> formats.IngestReport:
        if att.size > MAX_DATA_UPLOAD:
            raise TooLarge(f"`{att.filename}` is {fmt_bytes(att.size)}; training files are limited to "
                           f"{fmt_bytes(MAX_DATA_UPLOAD)}.")
        if not att.filename.lower().endswith(formats.SUPPORTED):
            # Refused before the download: no point fetching (and storing) a file we cannot read.
            ext = ("." + att.filename.rsplit(".", 1)[1]) if "." in att.filename else "none"
            raise InvalidInput(f"`{att.filename}`: unsupported file type `{ext}`; "
                               "use .jsonl, .json, .csv or .txt.")
        data = await att.read()
        path = await asyncio.to_thread(dataset_folder.store_upload, space, att.filename, data)
        del data
        return await asyncio.to_thread(dataset_folder.ingest_file, space, path, positive=positive, author=author,
                                       source=att.filename)

    @staticmethod
    def _looks_like_path(text: str, space: GuildSpace) -> bool:
        """Is the argument of !train a path (file or folder in the space) rather than inline examples?

        Several lines or a ``=>`` are examples. One word is a path, whether it exists or not, so a
        mistyped name is reported as missing instead of being learnt as a text example; several words
        are a path only when quoted or naming an existing entry (``my data.jsonl``).
        """
        word = text.strip()
        if "\n" in word or "=>" in word:
            return False
        if " " not in word:
            return True
        if word[0] in "`\"'" and word[-1] == word[0]:
            return True
        try:
            return space.resolve(word).exists()
        except TrainerError:
            return False

    async def _start_job(self, ctx: commands.Context, method: str) -> None:
        try:
            async with ctx.typing():
                job, report = await self.model.train(ctx.guild.id, method=method, started_by=str(ctx.author),
                                                     channel_id=ctx.channel.id)
        except InvalidInput as exc:
            text = f"I did not start training: the dataset has problems.\n{exc}"
            for chunk in split_message(text):
                await ctx.send(chunk)
            return
        except BackendError as exc:
            # No job was recorded and the examples stay in the dataset: retrying is all it takes.
            log.warning("guild %s: could not start training: %s", ctx.guild.id, exc)
            text = (f"I could not start training: {exc}\nNothing was lost: the examples stay in this server's "
                    f"dataset. Run `{ctx.clean_prefix}train` again to retry.")
            for chunk in split_message(text):
                await ctx.send(chunk)
            return
        await ctx.send(self._started_text(job, report))
        status = await ctx.send(self.model.render_status(job))
        await self.model.remember_status_message(ctx.guild.id, job["id"], status.id)
        self.watch(ctx.guild.id, job["id"], shown=status.content)

    def _started_text(self, job: dict[str, Any], report: Any) -> str:
        """One line naming the job and what it trains on (tokens and epochs mean something only to OpenAI)."""
        est = job.get("estimate") or {}
        n = est.get("examples", report.n_examples)
        what = f"{n:,} example{'s' * (n != 1)}"
        warnings = list(report.warnings)
        if self.model.backend.name == "openai":
            what += f", ~{est.get('tokens', 0):,} tokens, {est.get('epochs', '?')} epochs"
        else:
            warnings = [w for w in warnings if getattr(w, "code", "") not in OPENAI_ONLY_WARNINGS]
        lines = [f"Started training job `{job['id']}` on the {self.model.backend.name} backend: {what}."]
        if warnings:
            lines.append(f"{len(warnings)} warning(s): " + "; ".join(w.message for w in warnings[:3]))
        return "\n".join(lines)[:2000]

    # ----------------------------------------------------------------- the watcher
    def watch(self, guild_id: int, job_id: str, *, shown: str | None = None) -> None:
        """Follow a job until it ends (one task per job); ``shown`` is what its status message says now."""
        if job_id in self.watchers and not self.watchers[job_id].done():
            return
        task = asyncio.create_task(self._watch(guild_id, job_id, shown), name=f"watch-{job_id}")
        self.watchers[job_id] = task
        task.add_done_callback(lambda t: self.watchers.pop(job_id, None) if self.watchers.get(job_id) is t else None)

    async def _resume_watchers(self) -> None:
        """After a restart, pick up every unfinished job and keep editing its status message."""
        await self.bot.wait_until_ready()
        found = await asyncio.to_thread(self.model.unfinished_jobs)
        for guild_id, job in found:
            # A job of another backend (MODEL_BACKEND changed) cannot be polled from here.
            if self.bot.get_guild(guild_id) is not None and job.get("backend") == self.model.backend.name:
                log.info("resuming watch of job %s in guild %s", job["id"], guild_id)
                self.watch(guild_id, job["id"])

    async def _watch(self, guild_id: int, job_id: str, shown: str | None) -> None:
        poll = self.bot.settings.job_poll_seconds
        if self.model.backend.name == "local":
            poll = min(poll, 0.5)  # local jobs run in this process and finish in seconds
        last_edit = 0.0
        failures = 0
        while True:
            try:
                job = await self.model.poll_job(guild_id, job_id)
                failures = 0
            except asyncio.CancelledError:
                raise
            except TrainerError as exc:
                failures += 1
                log.warning("polling job %s failed (%d): %s", job_id, failures, exc)
                await asyncio.sleep(min(poll * 2 ** failures, 300))
                continue
            except Exception:
                log.exception("watcher for job %s stopped", job_id)
                return
            text = self.model.render_status(job)
            finished = job.get("status") in TERMINAL
            if text != shown and (finished or time.monotonic() - last_edit >= min(STATUS_EDIT_INTERVAL, poll * 4)):
                await self._show_status(guild_id, job, text)
                shown, last_edit = text, time.monotonic()
            if finished:
                await self._announce(guild_id, job)
                return
            await asyncio.sleep(poll)

    def _channel(self, job: dict[str, Any]) -> discord.abc.Messageable | None:
        channel_id = job.get("channel_id")
        return self.bot.get_channel(int(channel_id)) if channel_id else None

    async def _show_status(self, guild_id: int, job: dict[str, Any], text: str) -> None:
        channel = self._channel(job)
        if channel is None:
            return
        message_id = job.get("status_message_id")
        try:
            if message_id:
                await channel.get_partial_message(int(message_id)).edit(content=text)
                return
        except discord.NotFound:
            log.info("status message of job %s is gone; posting a new one", job["id"])
        except discord.HTTPException as exc:
            log.warning("could not edit the status of job %s: %s", job["id"], exc)
            return
        msg = await channel.send(text)
        await self.model.remember_status_message(guild_id, job["id"], msg.id)

    async def _announce(self, guild_id: int, job: dict[str, Any]) -> None:
        channel = self._channel(job)
        if channel is None:
            return
        if job["status"] == "succeeded":
            png = await self.model.loss_curve_png(job)
            text = f"Training job `{job['id']}` succeeded. I now answer with `{job.get('model')}`."
            if png:
                file = discord.File(io.BytesIO(png), filename=f"loss-{job['id']}.png")
                await channel.send(text + " Loss curve attached.", file=file)
            else:
                await channel.send(text + " " + jobs.no_loss_reason(job))
        elif job["status"] == "cancelled":
            who = f" by {job['cancelled_by']}" if job.get("cancelled_by") else " outside the bot"
            reason = f": {job['error']}" if job.get("error") else "."
            await channel.send(f"Training job `{job['id']}` was cancelled{who}{reason}"[:2000])
        else:
            reason = job.get("error") or "the backend gave no reason"
            await channel.send(f"Training job `{job['id']}` {job['status']}: {reason}"[:2000])

    # ----------------------------------------------------------------- jobs and models
    @commands.command()
    async def jobs(self, ctx: commands.Context) -> None:
        """List this server's recent training jobs."""
        found = await asyncio.to_thread(self.model.list_jobs, ctx.guild.id, 10)
        if not found:
            await ctx.send(f"No training jobs yet. An admin can start one with `{ctx.clean_prefix}train`.")
            return
        lines = ["**Recent training jobs**"]
        for job in found:
            when = f"<t:{int(job.get('created_at') or 0)}:R>"
            model = f" → `{job['model']}`" if job.get("model") else ""
            lines.append(f"`{job['id']}` {job.get('status')} {when} by {job.get('started_by', '?')}{model}")
        await ctx.send("\n".join(lines)[:2000])

    @commands.command(usage="<job_id>")
    @checks.trainer_admin()
    async def cancel(self, ctx: commands.Context, job_id: str) -> None:
        """Cancel a running training job."""
        job = await self.model.cancel_job(ctx.guild.id, job_id, by=str(ctx.author))
        if job["status"] == "cancelled":
            await ctx.send(f"Cancelling training job `{job['id']}`: it is now cancelled and will not change "
                           f"the model.")
        else:  # it ended before the cancel reached it
            await ctx.send(f"Training job `{job['id']}` had already {job['status']}; nothing to cancel.")
        self.watch(ctx.guild.id, job["id"])

    @commands.command(name="model", usage="[name | previous]")
    async def model_cmd(self, ctx: commands.Context, name: str | None = None) -> None:
        """Show the current model, or switch to another one (admins)."""
        if name is None:
            current = await asyncio.to_thread(self.model.current_model, ctx.guild.id)
            known = await asyncio.to_thread(self.model.list_models, ctx.guild.id)
            how = await asyncio.to_thread(self.model.backend.describe)
            how = f"\nIt {how}." if how else ""
            if not current:
                await ctx.send(f"No trained model yet ({self.model.backend.name} backend). "
                               f"An admin can train one with `{ctx.clean_prefix}train`.{how}")
                return
            others = ", ".join(f"`{m}`" for m in known[-6:] if m != current)
            await ctx.send(f"Current model: `{current}` ({self.model.backend.name} backend)."
                           + (f" Others: {others}." if others else "") + how)
            return
        await checks.is_trainer_admin(ctx)
        new = await asyncio.to_thread(self.model.set_model, ctx.guild.id, name)
        if not new:
            raise NotFound("There is no earlier model to go back to.")
        await ctx.send(f"Switched to model `{new}`.")

    @commands.command(usage="<json cases> (or an attached .json/.jsonl)")
    @checks.trainer_admin()
    @commands.max_concurrency(1, commands.BucketType.guild, wait=False)
    async def test(self, ctx: commands.Context, *, cases: str = "") -> None:
        """Run test cases against the current model and report accuracy."""
        text = cases.strip().removeprefix("```json").removeprefix("```").removesuffix("```")
        if ctx.message.attachments:
            att = ctx.message.attachments[0]
            if not att.filename.lower().endswith((".json", ".jsonl")):
                raise InvalidInput(f"`{att.filename}` is not a .json or .jsonl file.")
            if att.size > MAX_TEST_UPLOAD:
                raise TooLarge(f"`{att.filename}` is {fmt_bytes(att.size)}; test files are limited to "
                               f"{fmt_bytes(MAX_TEST_UPLOAD)}.")
            try:
                text = (await att.read()).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"`{att.filename}` is not UTF-8 text.") from None
        elif not text.strip():
            raise commands.MissingRequiredArgument(ctx.command.clean_params["cases"])
        async with ctx.typing():
            result = await self.model.run_tests(ctx.guild.id, text)
        lines = [f"**Accuracy: {result.accuracy:.0%}** ({result.correct}/{result.total} correct)"]
        for m in result.mismatches[:5]:
            lines.append(f"- input: {str(m['input'])[:200]!r}\n  expected: {str(m['expected'])[:200]!r}\n"
                         f"  got: {str(m['got'])[:200]!r}")
        if len(result.mismatches) > 5:
            lines.append(f"- … and {len(result.mismatches) - 5} more")
        if result.mismatches:
            lines.append(f"The {len(result.mismatches)} mismatch(es) are kept as training data for the next "
                         f"`{ctx.clean_prefix}train`.")
        for chunk in split_message("\n".join(lines)):
            await ctx.send(chunk)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Training(bot))
