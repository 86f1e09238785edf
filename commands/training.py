"""Training: data in through !train, jobs followed in one edited message, models and tests."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from commands._dialogs import confirm
from commands._shared import (
    TrainerContext,
    is_admin_or_owner,
    is_trainer_admin,
    listed,
    no_pings,
    split_flags,
    take_option,
    trainer_admin,
)
from dataset.compile import LEFT_OUT_FROM_CHAT
from dataset.corrections import ReactionCounts
from dataset.formats import IngestReport
from errors import BackendError, InvalidInput, NotFound, TrainerError
from storage import fmt_bytes
from training.backend import TERMINAL, Estimate, Job
from training.evaluation import MEANING_RULE
from training.lifecycle import WatchedElsewhere
from training.status import held_back_reason, score_text

if TYPE_CHECKING:
    from bot import TrainerBot
    from dataset.check import CheckReport

log = logging.getLogger(__name__)

STATUS_EDIT_INTERVAL = 2.0  # Discord rate-limits edits; a job's bar need not move faster than this


TOP_SHOWN = 3  # contributors named in the !train reply
# Where a job's status can be posted and edited.
STATUS_CHANNELS = (discord.TextChannel, discord.VoiceChannel, discord.StageChannel, discord.Thread, discord.DMChannel)


class Training(commands.Cog):
    """Train the model, follow jobs, switch and test models."""

    def __init__(self, bot: TrainerBot) -> None:
        self.bot = bot
        self.model = bot.model
        self.watchers: dict[str, asyncio.Task[None]] = {}

    async def cog_load(self) -> None:
        self._resumer = asyncio.create_task(self._resume_watchers())

    async def cog_unload(self) -> None:
        self._resumer.cancel()
        for task in self.watchers.values():
            task.cancel()

    async def cog_check(self, ctx: commands.Context[Any]) -> bool:
        if ctx.guild is None:
            raise commands.NoPrivateMessage()
        return True

    async def cog_command_error(self, ctx: commands.Context[Any], error: Exception) -> None:
        # discord.py's own text ("Too many people are using this command...") does not say what to do.
        if (isinstance(error, commands.MaxConcurrencyReached) and ctx.command is not None
                and isinstance(ctx, TrainerContext)):  # always: TrainerBot.get_context makes every ctx
            ctx.error_handled = True
            what = {"train": "A training is being started", "test": "A test is running"}.get(
                ctx.command.name, f"`{ctx.clean_prefix}{ctx.command.name}` is already running")
            await ctx.send(f"{what} in this server right now; try again when it has finished.")

    # ----------------------------------------------------------------- !train
    @commands.hybrid_command(usage="[data | path] [positive=yes] [method=supervised|dpo] (+ attached files)")
    @app_commands.guild_only()
    @trainer_admin()
    @commands.max_concurrency(1, commands.BucketType.guild, wait=False)
    @app_commands.describe(args="Examples (one per line, question => answer) or a path in the data space",
                           file="A .jsonl, .json, .csv or .txt file of examples",
                           positive="Are they good answers (yes) or answers to avoid (no)?",
                           method="supervised (default) or dpo (preference pairs)")
    @app_commands.rename(args="data")
    async def train(self, ctx: TrainerContext, *, args: str = "", file: discord.Attachment | None = None,
                    positive: bool = True, method: Literal["supervised", "dpo"] | None = None) -> None:
        """Add data (files, examples or a path), then train a new model (scored before it is used)."""
        text: str = args
        if ctx.interaction is None:  # `!train positive=no method=dpo …`: the options are words of the text
            text, method = take_option(args, "method", ("supervised", "dpo"))  # type: ignore[assignment]
            text, flags = split_flags(text, ("positive",))
            positive = flags.get("positive", True)
        ctx.model.check_method(method or "supervised")  # before any data is added: a refusal changes nothing
        await ctx.defer()  # a slash command: "thinking…" now, downloads and training take longer than 3 s
        files = ctx.attachments(file)
        if files or text.strip():
            reports = await self._ingest(ctx, text.strip(), files, positive, f"{ctx.author} ({ctx.author.id})")
            if len(reports) == 1 and isinstance(reports[0][1], TrainerError):
                raise reports[0][1]  # one source that could not be read: its message says it all
            added = sum(r.added for _, r in reports if isinstance(r, IngestReport))
            lines = []
            for name, r in reports:
                said = r.summary() if isinstance(r, IngestReport) else f"not read: {r}"
                lines.append(f"**{name}**: {said}" if len(reports) > 1 else said)
            lines.append(f"Dataset `{await ctx.model.dataset_name(ctx.guild_id)}`.")
            if not added:
                # Nothing new: training again would give the same model.
                lines.append("Nothing new was added, so I did not start training.")
            await ctx.send_long("\n".join(lines))
            if not added:
                return
        await self._start_job(ctx, method or "supervised")

    async def _ingest(self, ctx: TrainerContext, text: str, files: list[discord.Attachment], positive: bool,
                      author: str) -> list[tuple[str, IngestReport | TrainerError]]:
        """Each attachment, then the inline text or path: its report, or the error that stopped it.

        A bad file does not stop the others (their examples are already in the dataset and must be
        reported); the caller shows every outcome.
        """
        reports: list[tuple[str, IngestReport | TrainerError]] = []
        for att in files:
            try:
                ctx.model.check_upload(att.filename, att.size)  # before the download
                data = await att.read()
                reports.append((att.filename, await ctx.model.add_upload(
                    ctx.guild_id, att.filename, data, positive=positive, author=author, author_id=ctx.author.id,
                    origin=ctx.origin)))
            except TrainerError as exc:
                reports.append((att.filename, exc))
            except discord.HTTPException as exc:
                log.warning("could not download attachment %s: %s", att.id, exc)
                reports.append((att.filename, InvalidInput("I couldn't download it from Discord; send it again.")))
        if text:
            name = text.split("\n")[0][:40]
            try:
                if await self._looks_like_path(ctx, text):
                    try:
                        report = await ctx.model.add_path(ctx.guild_id, text, positive=positive, author=author,
                                                          author_id=ctx.author.id, origin=ctx.origin)
                    except NotFound as exc:
                        raise NotFound(f"{exc} To add examples written in the message instead, put one per "
                                       f"line: `{ctx.clean_prefix}train question => answer`.") from None
                else:
                    report = await ctx.model.add_text(ctx.guild_id, text, positive=positive, author=author,
                                                      author_id=ctx.author.id, origin=ctx.origin)
                reports.append((name, report))
            except TrainerError as exc:
                reports.append((name, exc))
        return reports

    @staticmethod
    async def _looks_like_path(ctx: TrainerContext, text: str) -> bool:
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
        return await ctx.model.path_exists(ctx.guild_id, word)

    async def _start_job(self, ctx: TrainerContext, method: str) -> None:
        try:
            async with ctx.typing():
                job, report = await self.model.train(ctx.guild_id, method=method, started_by=str(ctx.author),
                                                     channel_id=ctx.channel.id)
        except InvalidInput as exc:
            await ctx.send_long(f"I did not start training: the dataset has problems.\n{exc}")
            return
        except BackendError as exc:
            # No job was recorded and the examples stay in the dataset: retrying is all it takes.
            log.warning("guild %s: could not start training: %s", ctx.guild_id, exc)
            await ctx.send_long(f"I could not start training: {exc}\nNothing was lost: the examples stay in this "
                                f"server's dataset. Run `{ctx.clean_prefix}train` again to retry.")
            return
        await ctx.send(self._started_text(job, report))
        status = await ctx.send(self.model.status_text(job))
        await self.model.set_status_message(ctx.guild_id, job.id, status.id)
        self.watch(ctx.guild_id, job.id, shown=status.content)

    def _started_text(self, job: Job, report: CheckReport) -> str:
        """One line naming the job and what it trains on (tokens and epochs mean something only when billed)."""
        est = job.estimate or Estimate()
        n = report.n_examples if est.examples is None else est.examples
        what = f"{n:,} example{'s' * (n != 1)}"
        if self.model.backend.bills_tokens:
            what += f", ~{est.tokens or 0:,} tokens, {'?' if est.epochs is None else est.epochs} epochs"
        warnings = self.model.relevant_warnings(report)
        left_out = [w for w in warnings if w.code == LEFT_OUT_FROM_CHAT]
        warnings = [w for w in warnings if w.code != LEFT_OUT_FROM_CHAT]
        lines = [f"Started training job `{job.id}` on the {self.model.backend.name} backend: {what}."]
        lines.extend(w.message[0].upper() + w.message[1:] + "." for w in left_out)
        contributors = job.contributors
        if contributors:
            shown = [f"{discord.utils.escape_markdown(str(name))} {n:,}" for name, n in contributors[:TOP_SHOWN]]
            rest = sum(n for _, n in contributors[TOP_SHOWN:])
            if rest:
                shown.append(f"others {rest:,}")
            lines.append("Examples by contributor: " + ", ".join(shown) + ".")
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
        """After a restart, pick up every unfinished job and keep editing its status message; then keep looking,
        so a job whose watcher (another bot process, perhaps with another shard's servers) died is taken over."""
        await self.bot.wait_until_ready()
        while True:
            try:
                found = await self.model.unfinished_jobs()
            except TrainerError as exc:  # the database is away: look again later
                log.warning("could not look for unfinished jobs: %s", exc)
                found = []
            for guild_id, job in found:
                if job.id not in self.watchers:
                    log.info("watching job %s in guild %s (resumed or taken over)", job.id, guild_id)
                    self.watch(guild_id, job.id)
            await asyncio.sleep(self.bot.settings.job_lease_seconds / 2)

    async def _watch(self, guild_id: int, job_id: str, shown: str | None) -> None:
        poll = self.bot.settings.job_poll_seconds
        if self.model.backend.poll_seconds is not None:
            poll = min(poll, self.model.backend.poll_seconds)
        last_edit = 0.0
        failures = 0
        while True:
            try:
                job = await self.model.poll_job(guild_id, job_id)
                failures = 0
            except asyncio.CancelledError:
                raise
            except WatchedElsewhere:
                log.info("job %s is watched by another bot process", job_id)
                return
            except TrainerError as exc:
                failures += 1
                log.warning("polling job %s failed (%d): %s", job_id, failures, exc)
                await asyncio.sleep(min(poll * 2 ** failures, 300))
                continue
            except Exception:
                log.exception("watcher for job %s stopped", job_id)
                return
            text = self.model.status_text(job)
            finished = job.status in TERMINAL
            if text != shown and (finished or time.monotonic() - last_edit >= min(STATUS_EDIT_INTERVAL, poll * 4)):
                await self._show_status(guild_id, job, text)
                shown, last_edit = text, time.monotonic()
            if finished:
                await self._announce(guild_id, job)
                return
            await asyncio.sleep(poll)

    def _channel(self, job: Job) -> discord.abc.PartialMessageableChannel | discord.PartialMessageable | None:
        channel_id = job.channel_id
        if not channel_id:
            return None
        channel = self.bot.get_channel(channel_id)
        if channel is None:
            # A job taken over from another bot process whose shard has this server: not in this process's
            # cache, but its messages can still be sent and edited by id.
            return self.bot.get_partial_messageable(channel_id)
        # The channel !train ran in: always one of these (not a category or a forum).
        return channel if isinstance(channel, STATUS_CHANNELS) else None

    async def _show_status(self, guild_id: int, job: Job, text: str) -> None:
        channel = self._channel(job)
        if channel is None:
            return
        message_id = job.status_message_id
        try:
            if message_id:
                await channel.get_partial_message(message_id).edit(content=no_pings(text))
                return
        except discord.NotFound:
            log.info("status message of job %s is gone; posting a new one", job.id)
        except discord.HTTPException as exc:
            log.warning("could not edit the status of job %s: %s", job.id, exc)
            return
        msg = await channel.send(no_pings(text))
        await self.model.set_status_message(guild_id, job.id, msg.id)

    async def _announce(self, guild_id: int, job: Job) -> None:
        channel = self._channel(job)
        if channel is None:
            return
        if job.status == "succeeded":
            png = await self.model.loss_curve_png(guild_id, job)
            text = f"Training job `{job.id}` succeeded. I now answer with `{job.model}`."
            if job.candidate and job.evaluation is not None:
                ev = job.evaluation
                scored = ev.eval_set
                if ev.reason is None or ev.reason.startswith("it scored"):
                    why = (f"`{job.model}` scored worse than `{ev.old_model}` on this server's evaluation set "
                           f"({score_text(scored, 'new')} vs {score_text(scored, 'old')}; the margin is "
                           f"{round(100 * ev.margin)} points), so I")
                else:
                    why = f"I held `{job.model}` back: {ev.reason}. I"
                text = (f"Training job `{job.id}` succeeded, but {why} still answer with `{ev.old_model}`. It is "
                        f"kept as a candidate: `{self.bot.settings.prefix}model {job.model}` switches to it anyway.")
            if job.note:  # e.g. Azure: the model needs a deployment first
                text += f" {job.note}"
            if png:
                file = discord.File(io.BytesIO(png), filename=f"loss-{job.id}.png")
                await channel.send(no_pings(text + " Loss curve attached."), file=file)
            else:
                # A candidate's line is about the switch it did not make; the loss note would bury it.
                await channel.send(no_pings(text if job.candidate else text + " " + self.model.no_loss_reason(job)))
        elif job.status == "cancelled":
            who = f" by {job.cancelled_by}" if job.cancelled_by else " outside the bot"
            reason = f": {job.error}" if job.error else "."
            await channel.send(no_pings(f"Training job `{job.id}` was cancelled{who}{reason}")[:2000])
        else:
            reason = job.error or "the backend gave no reason"
            await channel.send(no_pings(f"Training job `{job.id}` {job.status}: {reason}")[:2000])

    # ----------------------------------------------------------------- jobs and models
    @commands.hybrid_command()  # type: ignore[arg-type]  # TrainerContext: see _shared
    @app_commands.guild_only()
    async def jobs(self, ctx: TrainerContext) -> None:
        """List this server's recent training jobs."""
        await ctx.defer()
        found = await ctx.model.list_jobs(ctx.guild_id, 10)
        if not found:
            await ctx.send(f"No training jobs yet. An admin can start one with `{ctx.clean_prefix}train`.")
            return
        current = await ctx.model.current_model(ctx.guild_id)
        lines = ["**Recent training jobs**"]
        for job in found:
            when = discord.utils.format_dt(datetime.fromtimestamp(job.created_at or 0, UTC), "R")
            model = f" → `{job.model}`" if job.model else ""
            if job.candidate and job.model != current and job.evaluation is not None:
                model += f" — **held back**: {held_back_reason(job.evaluation)}"
            who = discord.utils.escape_markdown(job.started_by or "?")[:100]
            lines.append(f"`{job.id}` {job.status} {when} by {who}{model}")
        await ctx.send_long("\n".join(lines))

    @commands.hybrid_command(usage="<job_id>")
    @app_commands.guild_only()
    @trainer_admin()
    @app_commands.describe(job_id="The job to cancel (see /jobs)")
    async def cancel(self, ctx: TrainerContext, job_id: str) -> None:
        """Cancel a running training job (asks you to confirm)."""
        job_id = job_id.strip().strip("`")
        await ctx.defer()
        # A unique prefix of the id is enough (the backend resolves it the same way).
        running = [job for job in await self.model.list_jobs(ctx.guild_id, 50)
                   if job.status not in TERMINAL and job.id.startswith(job_id)]
        shown = running[0] if len(running) == 1 and job_id else None
        if shown is not None:
            job_id = shown.id
            started = f", started by {discord.utils.escape_markdown(shown.started_by)}" if shown.started_by else ""
            if not await confirm(ctx, f"Cancel training job `{job_id}` ({shown.status}{started})? Its work so far "
                                      f"is lost and the model stays as it is."):
                await ctx.send(f"Training job `{job_id}` keeps running; nothing was changed.")
                return
        job = await self.model.cancel_job(ctx.guild_id, job_id, by=str(ctx.author))
        if job.status == "cancelled":
            await ctx.send(f"Cancelling training job `{job.id}`: it is now cancelled and will not change "
                           f"the model.")
        else:  # it ended before the cancel reached it
            await ctx.send(f"Training job `{job.id}` had already {job.status}; nothing to cancel.")
        self.watch(ctx.guild_id, job.id)

    @commands.hybrid_command(name="model", usage="[name | previous]")  # type: ignore[arg-type]  # TrainerContext: see _shared
    @app_commands.guild_only()
    @app_commands.describe(name="Switch to this model, or `previous` (admins); empty: show the current one")
    async def model_cmd(self, ctx: TrainerContext, name: str | None = None) -> None:
        """Show the current model and the 👍/👎 on each model's answers, or switch to another one (admins)."""
        await ctx.defer()
        if name is None:
            current = await ctx.model.current_model(ctx.guild_id)
            known = await ctx.model.list_models(ctx.guild_id)
            how = await ctx.model.describe_backend()
            how = f"\nIt {how}." if how else ""
            if not current:
                await ctx.send(f"No trained model yet ({self.model.backend.name} backend). "
                               f"An admin can train one with `{ctx.clean_prefix}train`.{how}"
                               + _reactions_line(await ctx.model.reaction_counts(ctx.guild_id), ""))
                return
            others = listed([f"`{m}`" for m in reversed(known) if m != current], limit=300)
            held = {m: why for m, why in (await ctx.model.held_back(ctx.guild_id)).items() if m != current}
            held_lines = "".join(f"\nHeld back by the evaluation gate: `{m}` ({why}); `{ctx.clean_prefix}model {m}` "
                                 f"switches to it." for m, why in list(held.items())[:3])
            await ctx.send(f"Current model: `{current}` ({self.model.backend.name} backend)."
                           + (f" Others, newest first: {others}." if others else "") + held_lines + how
                           + _reactions_line(await ctx.model.reaction_counts(ctx.guild_id), current))
            return
        await is_trainer_admin(ctx)
        new = await ctx.model.set_model(ctx.guild_id, name)
        if not new:
            raise NotFound("There is no earlier model to go back to.")
        await ctx.send(f"Switched to model `{new}`.")

    @commands.hybrid_command(name="export", usage="data | model")
    @app_commands.guild_only()
    @trainer_admin()
    @app_commands.describe(what="data: the compiled dataset; model: the current model")
    @app_commands.choices(what=[app_commands.Choice(name="data", value="data"),
                                app_commands.Choice(name="model", value="model")])
    async def export_cmd(self, ctx: TrainerContext, what: str) -> None:
        """Export the dataset as OpenAI chat JSONL (data), or the current model with a README on serving it."""
        if what.lower() == "data":
            await ctx.defer()
            await self._export_data(ctx)
            return
        if what.lower() != "model":
            raise InvalidInput(f"I can export `data` (the compiled dataset) or `model` (the current model): "
                               f"`{ctx.clean_prefix}export data`.")
        await ctx.defer()
        async with ctx.typing():
            name, shown, size, data = await ctx.model.export_model(ctx.guild_id, read_limit=ctx.upload_limit)
        text = f"Model `{name}` exported as `{shown}` ({fmt_bytes(size)}), with a README on serving it elsewhere."
        if data is not None:
            await ctx.send(text, file=discord.File(io.BytesIO(data), filename=shown.rsplit("/", 1)[-1]))
        else:
            await ctx.send(f"{text} It is over this server's upload limit ({fmt_bytes(ctx.upload_limit)}), so it "
                           "stays in the server's data folder.")

    async def _export_data(self, ctx: TrainerContext) -> None:
        async with ctx.typing():
            result, attach, zipped = await ctx.model.export_data(ctx.guild_id, read_limit=ctx.upload_limit)
        n, pairs = result.examples, result.pairs
        text = (f"Exported {n:,} training line{'s' * (n != 1)} (OpenAI chat format)"
                + (f" and {pairs:,} DPO pair{'s' * (pairs != 1)}" if pairs else "")
                + ", with who gave each example in `provenance.jsonl`.")
        if zipped is None:
            text += " Files attached."
        elif attach:
            text += f" Zipped ({fmt_bytes(result.bytes)} unzipped) and attached; also kept as `{zipped}`."
        else:
            text += (f" Even zipped it is over this server's upload limit ({fmt_bytes(ctx.upload_limit)}): "
                     f"it is kept as `{zipped}` in the server's data folder.")
        await ctx.send(text, files=[discord.File(io.BytesIO(data), filename=name) for name, data in attach])

    @commands.hybrid_command(usage="<json cases> (or an attached .json/.jsonl)")
    @app_commands.guild_only()
    @trainer_admin()
    @commands.max_concurrency(1, commands.BucketType.guild, wait=False)
    @app_commands.describe(cases='Cases as JSON: [{"input": "…", "expected": "…"}, …]',
                           file="A .json or .jsonl file of cases")
    async def test(self, ctx: TrainerContext, *, cases: str = "", file: discord.Attachment | None = None) -> None:
        """Run test cases against the current model and report accuracy; they join the evaluation set."""
        text = cases.strip().removeprefix("```json").removeprefix("```").removesuffix("```")
        files = ctx.attachments(file)
        if files:
            att = files[0]
            ctx.model.check_test_upload(att.filename, att.size)
            try:
                text = (await att.read()).decode("utf-8")
            except discord.HTTPException as exc:
                log.warning("could not download attachment %s: %s", att.id, exc)
                raise InvalidInput(f"I couldn't download `{att.filename}` from Discord; send it again.") from None
            except UnicodeDecodeError:
                raise InvalidInput(f"`{att.filename}` is not UTF-8 text.") from None
        elif not text.strip():
            assert ctx.command is not None  # set while a command runs
            raise commands.MissingRequiredArgument(ctx.command.clean_params["cases"])
        await ctx.defer()
        async with ctx.typing():
            result = await ctx.model.run_tests(ctx.guild_id, text, author_id=ctx.author.id,
                                               author_name=str(ctx.author))
        lines = [f"**Accuracy: {result.accuracy:.0%}** ({result.correct}/{result.total} correct)"]
        if result.by_meaning:  # a generative model words answers its own way
            lines.append(f"-# Answers {MEANING_RULE}.")
        for m in result.mismatches[:5]:
            lines.append(f"- input: {m.input[:200]!r}\n  expected: {m.expected[:200]!r}\n  got: {m.got[:200]!r}")
        if len(result.mismatches) > 5:
            lines.append(f"- … and {len(result.mismatches) - 5} more")
        if result.mismatches:
            lines.append(f"The {len(result.mismatches)} mismatch(es) are kept as training data for the next "
                         f"`{ctx.clean_prefix}train`.")
        await ctx.send_long("\n".join(lines))

    # ----------------------------------------------------------------- autocomplete
    @cancel.autocomplete("job_id")
    async def _running_jobs(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        if interaction.guild_id is None or not await is_admin_or_owner(self.bot, interaction.user):
            return []
        jobs = [job for job in await self.model.list_jobs(interaction.guild_id, 50) if job.status not in TERMINAL]
        return [app_commands.Choice(name=f"{job.id} ({job.status})"[:100], value=job.id)
                for job in jobs if current.lower() in job.id.lower()][:25]

    @model_cmd.autocomplete("name")
    async def _model_names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        if interaction.guild_id is None:
            return []
        names = ["previous", *reversed(await self.model.list_models(interaction.guild_id))]
        return [app_commands.Choice(name=n[:100], value=n[:100]) for n in names if current.lower() in n.lower()][:25]


REACTION_MODELS_SHOWN = 4  # models whose 👍/👎 counts !model shows (the current one first)


def _reactions_line(counts: dict[str, ReactionCounts], current: str) -> str:
    """"\nReactions on answers: `v2` 👍 3 👎 1, …" (the current model first, then the most reacted), or ""."""
    if not counts:
        return ""
    order = sorted(counts, key=lambda m: (m != current, -(counts[m].up + counts[m].down), m))[:REACTION_MODELS_SHOWN]
    shown = ", ".join(f"`{m}` 👍 {counts[m].up} 👎 {counts[m].down}" for m in order)
    return f"\nReactions on answers: {shown}."


async def setup(bot: TrainerBot) -> None:
    await bot.add_cog(Training(bot))
