"""What members give back: corrections of the bot's answers and feedback for the admins."""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from commands._dialogs import confirm
from commands._shared import (
    TrainerContext,
    admin_member,
    is_admin,
    is_admin_or_owner,
    listed,
    no_pings,
    page_number,
    quote,
    report_unexpected,
    trainer_admin,
    user_line,
)
from dataset.corrections import Answer, Correction, Pick, RepliedTo
from dataset.forget import ForgetNotice, ForgetResult
from errors import InvalidInput, NotFound, TrainerError

if TYPE_CHECKING:
    from bot import TrainerBot

log = logging.getLogger(__name__)


class Feedback(commands.Cog):
    """Correct my answers (or reply to my ask after a 👎) and tell the admins what works (or react 👍/👎)."""

    def __init__(self, bot: TrainerBot) -> None:
        self.bot = bot
        # "Correct this answer" forms open on someone's screen, by nonce; and those already submitted (-> ref).
        self.forms: dict[str, OpenForm] = {}
        self.submitted: dict[str, tuple[str, float]] = {}  # nonce -> (correction ref, when)
        self.correct_menu = app_commands.ContextMenu(name=CORRECT_MENU, callback=self._correct_menu)
        self.correct_menu.guild_only = True

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.correct_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(CORRECT_MENU, type=discord.AppCommandType.message)

    # ------------------------------------------------------------ "Correct this answer" (message menu + modal)

    async def _correct_menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Open a form for the right answer to one of my answers. The target message comes with the
        interaction: this works without the Message Content intent."""
        assert interaction.guild_id is not None  # guild-only command
        answer = await self.bot.model.find_answer(interaction.guild_id, message.id)
        if answer is None:
            await interaction.response.send_message(
                "That message isn't one of my answers here; use this on my answer to correct it.", ephemeral=True)
            return
        now = time.monotonic()
        for nonce in [n for n, f in self.forms.items() if now - f.opened > FORM_SECONDS]:
            del self.forms[nonce]
        for nonce in [n for n, (_, when) in self.submitted.items() if now - when > FORM_SECONDS]:
            del self.submitted[nonce]
        nonce = secrets.token_hex(8)
        self.forms[nonce] = OpenForm(interaction.guild_id, message.id, interaction.user.id, now)
        modal = CorrectForm(f"{FORM_PREFIX}{nonce}", answer.prompt)
        await interaction.response.send_modal(modal)
        # Its submit comes to on_interaction (below), which also refuses a second submit of the same form
        # clearly; a modal left in discord.py's store would answer the first and drop the second unanswered.
        modal.stop()

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        if not custom_id.startswith(FORM_PREFIX):
            return
        try:
            await self._form_submitted(interaction, custom_id.removeprefix(FORM_PREFIX))
        except TrainerError as exc:
            await self._tell(interaction, user_line(exc, self.bot.settings.prefix))
        except Exception as exc:
            error_id = report_unexpected(f"saving a correction form ({interaction.id})", exc)
            await self._tell(interaction, f"Something went wrong on my side (error id `{error_id}`); the correction "
                                          f"was not saved.")

    async def _form_submitted(self, interaction: discord.Interaction, nonce: str) -> None:
        form = self.forms.get(nonce)
        if form is None or form.user_id != interaction.user.id or form.guild_id != interaction.guild_id:
            ref = self.submitted.get(nonce, (None, 0.0))[0]
            await self._tell(interaction, f"You already sent this form: correction `{ref}` was saved once, and "
                                          f"nothing more was saved." if ref else
                             f"This form has expired; nothing was saved. Open it again on my answer: "
                             f"Apps → {CORRECT_MENU}.")
            return
        del self.forms[nonce]  # before any await: a second submit arriving meanwhile is refused above
        text = _field(interaction.data or {}, "correction").strip()
        if not text:
            raise InvalidInput("The right answer is empty; nothing was saved.")
        answer = await self.bot.model.find_answer(form.guild_id, form.message_id)
        if answer is None:  # forgotten meanwhile
            raise NotFound("That answer is no longer in my records; nothing was saved.")
        admin = await is_admin_or_owner(self.bot, interaction.user)
        asker = (interaction.guild.get_member(answer.author_id)
                 if interaction.guild is not None and answer.author_id is not None else None)
        asked_by_admin = answer.author_id == interaction.user.id or (asker is not None and admin_member(self.bot, asker))
        record = await self.bot.model.correct(
            form.guild_id, answer, text, author_id=interaction.user.id, author_name=str(interaction.user),
            channel_id=interaction.channel_id or 0, source_message_id=None, trusted=admin,
            question_trusted=admin and asked_by_admin)
        self.submitted[nonce] = (record.ref, time.monotonic())
        await self._tell(interaction, self._saved_text(record, "/"))

    @staticmethod
    async def _tell(interaction: discord.Interaction, text: str) -> None:
        """One line for the person who submitted (only they see it)."""
        if interaction.response.is_done():
            await interaction.followup.send(text[:2000], ephemeral=True)
        else:
            await interaction.response.send_message(text[:2000], ephemeral=True)

    @commands.hybrid_command(usage="[message_id] <correction...>")  # type: ignore[arg-type]  # TrainerContext: see _shared
    @commands.guild_only()
    @app_commands.guild_only()
    @commands.cooldown(10, 60.0, commands.BucketType.user)
    @app_commands.describe(text="The right answer",
                           message="The id or link of my answer (empty: my last answer to you in this channel)")
    async def correct(self, ctx: TrainerContext, *, text: str, message: str | None = None) -> None:
        """Correct my last answer to you here, a reply's answer, or the answer with that message id."""
        ref = ctx.message.reference
        if ctx.interaction is not None and message:
            # A typed option: an id, or a message link (…/channels/guild/channel/message).
            given = message.strip().rstrip("/").rsplit("/", 1)[-1]
            if not (given.isdigit() and len(given) >= 15):
                raise InvalidInput(f"`{discord.utils.escape_markdown(message[:40])}` is not a message id or link: "
                                   f"use Copy Message ID (or Copy Message Link) on my answer, or leave it empty.")
            text = f"{given} {text}"
        await ctx.defer()  # finding the answer and saving the correction are database writes
        first, _, rest = text.partition(" ")
        if first.isdigit() and len(first) >= 15 and rest.strip():
            message_id, correction = int(first), rest.strip()
        elif ref is not None and ref.message_id:
            message_id, correction = ref.message_id, text.strip()
        elif first.isdigit() and len(first) >= 15:
            raise commands.BadArgument("Give the correction after the message id")
        elif first.isdigit():
            raise InvalidInput(f"`{first}` is not a message id (they are long numbers: use Copy Message ID "
                               f"on my answer), or reply to my answer with "
                               f"`{ctx.clean_prefix}correct <correction>`.")
        else:
            await self._correct_latest(ctx, text.strip())
            return
        answer = await ctx.model.find_answer(ctx.guild_id, message_id)
        if answer is None:
            resolved = ctx.replied_message if ref is not None and ref.message_id == message_id else None
            if resolved is None:
                resolved = await self._fetch(ctx, message_id)
            assert self.bot.user is not None  # logged in: commands are running
            if resolved is not None and resolved.author.id != self.bot.user.id:
                await ctx.send("That message isn't one of my answers: reply to my answer to correct it.")
            else:
                await ctx.send(f"I have no answer with id `{message_id}` in this server. "
                               "Reply to my answer with the correction instead.")
            return
        await self._save(ctx, answer, correction)

    async def _correct_latest(self, ctx: TrainerContext, correction: str) -> None:
        """``!correct <text>`` with no reply and no id: my latest answer to the author in this channel."""
        answer = await ctx.model.latest_answer(ctx.guild_id, ctx.channel.id, ctx.author.id)
        if answer is None:
            raise InvalidInput(f"I haven't answered you in this channel yet. Reply to one of my answers with "
                               f"`{ctx.clean_prefix}correct <the right answer>`, or give its message id first.")
        question = discord.utils.escape_markdown(answer.prompt)[:120]
        await ctx.send(f"Correcting my last answer to you here (to “{question}”).")
        await self._save(ctx, answer, correction)

    async def _save(self, ctx: TrainerContext, answer: Answer, correction: str) -> None:
        admin = await is_admin(ctx)
        record = await ctx.model.correct(ctx.guild_id, answer, correction, author_id=ctx.author.id,
                                         author_name=str(ctx.author), channel_id=ctx.channel.id,
                                         source_message_id=ctx.message.id, trusted=admin,
                                         question_trusted=admin and self._asked_by_admin(ctx, answer))
        # A reply to an ask has no prefix of its own.
        await ctx.send(self._saved_text(record, ctx.clean_prefix or self.bot.settings.prefix))

    def _saved_text(self, record: Correction, p: str) -> str:
        """What the author of a correction is told once it is saved (the same for every way of correcting).
        With TRAIN_FROM_CHAT=off only a trusted one (an admin's, of an admin's question) is training data."""
        trained = self.bot.settings.train_from_chat or record.trusted
        if not record.approved:
            return (f"Thanks — correction `{record.ref}` saved. It awaits review: an admin approves it "
                    f"(`{p}review`) before I use it.")
        if self.bot.model.backend.applies_corrections_now:
            return (f"Thanks — correction `{record.ref}` saved. I'll answer that question (or one "
                    f"that means the same) with it from now on" + (", and it is training data for next time."
                                                                  if trained else "."))
        if trained:
            return f"Thanks — correction `{record.ref}` saved. It will be used the next time I'm trained."
        return (f"Thanks — correction `{record.ref}` saved and kept for review and export; it is not training data "
                f"here (this server trains on admins' data only: TRAIN_FROM_CHAT is off).")

    def _asked_by_admin(self, ctx: TrainerContext, answer: Answer) -> bool:
        """Whether an admin wrote the question ``answer`` answers (the corrector, or a member with admin rights
        now): only then is it published as written in answers and offers."""
        if answer.author_id is None or answer.author_id == ctx.author.id:
            return answer.author_id is not None
        member = ctx.guild.get_member(answer.author_id) if ctx.guild is not None else None
        return member is not None and admin_member(self.bot, member)

    @staticmethod
    async def _fetch(ctx: TrainerContext, message_id: int) -> discord.Message | None:
        """The message with this id in this channel, if it is there and readable (for a precise refusal)."""
        try:
            return await ctx.channel.fetch_message(message_id)
        except discord.HTTPException:
            return None

    @commands.hybrid_command(usage="<text...>")  # type: ignore[arg-type]  # TrainerContext: see _shared
    @commands.guild_only()
    @app_commands.guild_only()
    @commands.cooldown(5, 60.0, commands.BucketType.user)
    @app_commands.describe(text="What works, what doesn't, what you'd like")
    async def feedback(self, ctx: TrainerContext, *, text: str) -> None:
        """Tell the admins what works and what doesn't."""
        reply_to: RepliedTo | None = None
        ref = ctx.message.reference
        if ref is not None and ref.message_id:
            resolved = ctx.replied_message
            reply_to = {"message_id": ref.message_id,
                        "author_id": resolved.author.id if resolved else None,
                        "content": resolved.content if resolved else None}
        record = await ctx.model.feedback(ctx.guild_id, text, author_id=ctx.author.id, author_name=str(ctx.author),
                                          channel_id=ctx.channel.id, reply_to=reply_to,
                                          source_message_id=ctx.message.id)
        await ctx.send(f"Thanks for the feedback! Reference: `{record.ref}`.")


    # ------------------------------------------------------------ 👍 / 👎 on my answers

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload, added=True)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload, added=False)

    async def _reaction(self, payload: discord.RawReactionActionEvent, *, added: bool) -> None:
        """Record 👍/👎 on one of my answers; after a new 👎, ask in a reply for the right answer.

        Silently ignored: DMs, my own reactions, bots', other emoji, messages that are not my answers.
        """
        me = self.bot.user
        if payload.guild_id is None or me is None or payload.user_id == me.id:
            return
        if payload.message_author_id is not None and payload.message_author_id != me.id:
            return  # someone else's message (only known for an added reaction; a removal is looked up)
        if payload.member is not None and payload.member.bot:
            return
        guild = self.bot.get_guild(payload.guild_id)
        member = payload.member or (guild.get_member(payload.user_id) if guild is not None else None)
        name = str(member) if member is not None else f"user {payload.user_id}"
        try:
            outcome = await self.bot.model.react(payload.guild_id, payload.message_id, str(payload.emoji),
                                                 added=added, user_id=payload.user_id, user_name=name,
                                                 channel_id=payload.channel_id)
        except TrainerError as exc:  # a full disk: nobody asked for a reply to a reaction, the log says it
            log.warning("guild %s: reaction on %s not recorded: %s", payload.guild_id, payload.message_id, exc)
            return
        if outcome is None or not outcome.ask:
            return
        channel = self.bot.get_channel(payload.channel_id)
        if channel is None or not hasattr(channel, "get_partial_message"):
            return
        shown = discord.utils.escape_markdown(member.display_name if member is not None else name)
        review = (" (an admin reviews members' corrections before I use them)"
                  if self.bot.settings.review_corrections else "")
        text = (f"Thanks for the 👎, {shown}. What should I have answered? Reply to this message with the right "
                f"answer and it becomes a correction{review}.")
        try:
            ask = await channel.get_partial_message(payload.message_id).reply(
                no_pings(text), mention_author=False, allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as exc:
            log.warning("could not ask for the right answer to %s: %s", payload.message_id, exc)
            return
        try:
            await self.bot.model.record_ask(payload.guild_id, ask_message_id=ask.id, message_id=payload.message_id,
                                            channel_id=payload.channel_id, user_id=payload.user_id, user_name=name)
        except TrainerError as exc:
            log.warning("guild %s: ask %s not recorded: %s", payload.guild_id, ask.id, exc)

    @commands.Cog.listener()
    async def on_ask_reply(self, message: discord.Message, answer: Answer) -> None:
        """A reply to my ask for the right answer (after a 👎) is a correction of that answer, as `!correct`.

        The chat cog finds such replies (it reads every message anyway) and dispatches them here.
        """
        ctx = await self.bot.get_context(message)
        try:
            await self._save(ctx, answer, message.content)
        except TrainerError as exc:
            await message.reply(no_pings(user_line(exc, self.bot.settings.prefix)), mention_author=False)

    # ------------------------------------------------------------ the review queue

    @commands.hybrid_command(usage="[page]")
    @commands.guild_only()
    @app_commands.guild_only()
    @trainer_admin()
    @app_commands.describe(page="Which page of the list (1 is the oldest)")
    async def review(self, ctx: TrainerContext, page: str = "") -> None:
        """★ List members' corrections and paraphrases (picks on my offers) waiting for review, whole and exactly
        as they will be published."""
        number = page_number(page)
        await ctx.defer()
        pending: list[Correction | Pick] = [*await ctx.model.pending_corrections(ctx.guild_id),
                                            *await ctx.model.pending_picks(ctx.guild_id)]
        if not pending:
            await ctx.send("No corrections are waiting for review.")
            return
        pending.sort(key=lambda r: r.time)
        p = ctx.clean_prefix
        n_picks = sum(isinstance(r, Pick) for r in pending)
        what = f"{len(pending) - n_picks} correction(s)" if not n_picks else (
            f"{len(pending) - n_picks} correction(s) and {n_picks} paraphrase(s)")
        header = (f"**{what} waiting for review** — `{p}approve ID…` or `{p}reject ID… [reason]`. Each is shown "
                  f"as answers will show it:")
        await ctx.send_page(header, [_pick_block(c) if isinstance(c, Pick) else _review_block(c) for c in pending],
                            number, more=f"{p}review {{}}")

    @commands.hybrid_command(usage="<id...>")
    @commands.guild_only()
    @app_commands.guild_only()
    @trainer_admin()
    @app_commands.describe(ids="One or more ids from /review, separated by spaces")
    async def approve(self, ctx: TrainerContext, *, ids: str) -> None:
        """★ Approve members' corrections (or paraphrases, `P-…`) by id: they count in answers and the next
        training."""
        done = await ctx.model.review(ctx.guild_id, ids.split(), approve=True, by_id=ctx.author.id,
                                      by_name=str(ctx.author))
        shown = listed([f"`{c.ref}`" for c in done])
        when = "now and in" if ctx.model.backend.applies_corrections_now else "in"
        what = f"{len(done):,} corrections: " if len(done) > 1 else ""
        await ctx.send(f"Approved {what}{shown}: {'they count' if len(done) > 1 else 'it counts'} {when} "
                       f"the next training.")

    @commands.hybrid_command(usage="<id...> [reason]")
    @commands.guild_only()
    @app_commands.guild_only()
    @trainer_admin()
    @app_commands.describe(text="One or more ids from /review, separated by spaces",
                           reason="Why (kept with the decision)")
    @app_commands.rename(text="ids")
    async def reject(self, ctx: TrainerContext, *, text: str, reason: str | None = None) -> None:
        """★ Reject members' corrections by id (a reason after the ids is kept): they are never used."""
        if ctx.interaction is not None and reason:
            text = f"{text} {reason}"  # the ids first, then the reason: the same parsing as the prefix form
        words = text.split()
        # The ids come first; everything from the first word that is not an id on is the reason
        # (a word starting with C- is taken as an id, so a mistyped one is refused, not kept as a reason).
        first_other = next((i for i, w in enumerate(words)
                            if not (_looks_like_ref(w) or w.strip("`").lower()[:2] in ("c-", "p-"))), len(words))
        ids, reason = words[:first_other], " ".join(words[first_other:])
        if not ids:
            raise InvalidInput(f"Give the ids first: `{ctx.clean_prefix}reject C-7f3a2b [reason]` "
                               f"(`{ctx.clean_prefix}review` lists them). Nothing was changed.")
        done = await ctx.model.review(ctx.guild_id, ids, approve=False, by_id=ctx.author.id,
                                      by_name=str(ctx.author), reason=reason)
        shown = listed([f"`{c.ref}`" for c in done])
        what = f"{len(done):,} corrections: " if len(done) > 1 else ""
        note = f" Reason kept: {_quote(reason)}" if reason else ""
        await ctx.send(f"Rejected {what}{shown}: never used for answers or training.{note}")


    # ------------------------------------------------------------ forget-me

    @commands.hybrid_command(usage="me | @user")  # type: ignore[arg-type]  # TrainerContext: see _shared
    @commands.guild_only()
    @app_commands.guild_only()
    @commands.cooldown(3, 60.0, commands.BucketType.user)
    @app_commands.describe(who="`me`, or (admins) a member's @mention or id")
    async def forget(self, ctx: TrainerContext, *, who: str = "") -> None:
        """Remove everything you gave in this server (`me`), or a member's (`@user`, admins)."""
        p = ctx.clean_prefix
        target = who.strip()
        if target.lower() == "me":
            user_id, name = ctx.author.id, str(ctx.author)
        else:
            found = re.fullmatch(r"<@!?(\d+)>|(\d{15,25})", target)
            if found is None:
                raise InvalidInput(f"Say who: `{p}forget me`, or (admins) `{p}forget @user`.")
            user_id = int(found.group(1) or found.group(2))
            if user_id != ctx.author.id and not await is_admin(ctx):
                await ctx.send(f"Only admins can make me forget someone else; `{p}forget me` forgets what you gave.")
                return
            assert ctx.guild is not None  # @guild_only
            member = ctx.guild.get_member(user_id) or next((u for u in ctx.message.mentions if u.id == user_id), None)
            name = str(member) if member is not None else f"user {user_id}"
        shown = discord.utils.escape_markdown(name)
        await ctx.defer()  # counting what will go reads the server's dataset files
        coming = await ctx.model.forget_preview(ctx.guild_id, user_id)
        if coming.total > FORGET_WITHOUT_ASKING:
            mine = user_id == ctx.author.id
            listed = ", ".join(f"{n:,} {kind}" for kind, n in coming.counts.items())
            if not await confirm(ctx, f"Forget everything {'you' if mine else shown} gave in this server? This "
                                      f"removes {listed}, for good."):
                await ctx.send("Nothing was forgotten; everything stays as it was.")
                return
        try:
            result = await ctx.model.forget_user(ctx.guild_id, user_id, channel_id=ctx.channel.id,
                                                 requester_id=ctx.author.id, user_name=name)
        except NotFound:
            await ctx.send(f"I have nothing stored from {shown} in this server; nothing was changed.")
            return
        lines = [f"Forgot everything {shown} gave in this server: {_counts(result.counts)}."]
        lines += await self._after_forget(ctx.guild_id, p, result)
        await ctx.send_long("\n".join(lines))
        await ctx.model.forget_told(result.journal_id)

    async def _after_forget(self, guild_id: int, p: str, result: ForgetResult) -> list[str]:
        """What a forget leaves, truthfully: the models trained before, and the archives and exports made before."""
        model = self.bot.model
        kept = result.archives
        lines = []
        if model.backend.applies_corrections_now and any("correction" in kind for kind in result.counts):
            lines.append("Their corrections no longer change my answers.")
        current = await model.current_model(guild_id)
        if current:
            lines.append(f"Models trained before now learnt from their words and keep them: `{current}` answers "
                         f"with them until an admin trains a new model without them (`{p}train`) and it goes live "
                         f"(if it was trained on far fewer examples, the evaluation gate holds it back until an "
                         f"admin switches to it with `{p}model NAME`); older models `{p}model` can switch back to "
                         f"keep them too.")
        if kept:
            lines.append(f"Archives and exports made before keep their contents: {listed([f'`{a}`' for a in kept])}. "
                         f"An admin can delete them from the server's data folder.")
        return lines

    # ------------------------------------------------------------ a forget the bot stopped in

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        """After a restart, tell whoever asked for a forget the bot stopped in how it ended, in their channel."""
        for notice in await self.bot.model.forget_notices({g.id for g in self.bot.guilds}):
            channel = self.bot.get_channel(notice.channel_id)
            if not isinstance(channel, discord.abc.Messageable):
                log.warning("guild %s: channel %s of an interrupted forget is gone; nobody to tell",
                            notice.guild_id, notice.channel_id)
                await self.bot.model.forget_told(notice.journal_id)
                continue
            try:
                await channel.send(**self._notice(notice))
            except discord.HTTPException as exc:
                log.warning("guild %s: could not tell about an interrupted forget: %s", notice.guild_id, exc)
                continue  # told at the next start
            await self.bot.model.forget_told(notice.journal_id)

    def _notice(self, notice: ForgetNotice) -> dict[str, Any]:
        """The message about a forget the bot stopped in (pinging only the person who asked)."""
        p = self.bot.settings.prefix
        who = "you" if notice.user_id == notice.requester_id else no_pings(discord.utils.escape_markdown(
            notice.user_name or f"user {notice.user_id}"))
        to = f"<@{notice.requester_id}> " if notice.requester_id else ""
        if not notice.finished:
            text = (f"{to}I was restarted in the middle of the `{p}forget` you asked for, before anything was "
                    f"removed: nothing of what {who} gave was forgotten. Ask again with `{p}forget`.")
        else:
            gave = "you gave" if who == "you" else f"{who} gave"
            text = (f"{to}I was restarted while forgetting what {gave}; that is done now. Forgot: "
                    f"{_counts(notice.counts)}.")
            if notice.kept:
                text += (f"\nArchives and exports made before keep their contents: "
                         f"{listed([f'`{a}`' for a in notice.kept])}. An admin can delete them from the server's "
                         f"data folder.")
            text += f"\nModels trained before keep what they learnt until an admin trains a new one (`{p}train`)."
        users = [discord.Object(notice.requester_id)] if notice.requester_id else []
        return {"content": text[:2000], "allowed_mentions": discord.AllowedMentions(users=users)}

    @forget.autocomplete("who")
    async def _whom(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        """`me`, and for admins the people this server keeps something from, by name (the value is their id)."""
        found = [app_commands.Choice(name="me", value="me")] if "me".startswith(current.lower()) else []
        if interaction.guild_id is not None and await is_admin_or_owner(self.bot, interaction.user):
            found += [app_commands.Choice(name=name[:100], value=str(user_id))
                      for user_id, name in await self.bot.model.people(interaction.guild_id, current)
                      if user_id != interaction.user.id]
        return found[:25]


CORRECT_MENU = "Correct this answer"
FORM_PREFIX = "trainer:correct:"
FORM_SECONDS = 15 * 60.0  # a form open longer than an interaction token lives is expired
FORGET_WITHOUT_ASKING = 3  # a !forget that removes more than this many items asks to confirm first


def _counts(counts: dict[str, int]) -> str:
    """"3 corrections, 1 feedback": what a forget removed."""
    return ", ".join(f"{n:,} {kind}" for kind, n in counts.items()) or "nothing"


def _review_block(c: Correction) -> str:
    """One pending correction for !review: its question and text whole, as answers and offers will publish them
    (a member's markdown and masked links neutralised), quoted so nothing in them can end the quote."""
    who = discord.utils.escape_markdown(str(c.author_name or c.author_id or "someone"))
    return "\n".join([f"`{c.ref}` by {who} ({c.time[:16].replace('T', ' ')} UTC)",
                      _quoted("Q", c.published_prompt), _quoted("was", c.answer),
                      _quoted("now", c.published_correction)])


def _pick_block(c: Pick) -> str:
    """One pending paraphrase (a member's pick on an offer) for !review."""
    who = quote(c.author_name or c.author_id or "someone", 80)
    return (f"`{c.ref}` paraphrase by {who} ({c.time[:16].replace('T', ' ')} UTC): asked\n> {quote(c.prompt)}\n"
            f"and chose “{quote(c.question)}” (answer: {quote(c.answer, 120)})")


def _quoted(label: str, text: str) -> str:
    """``> label: text``, every further line of ``text`` quoted too."""
    first, *rest = (text.strip() or "(empty)").split("\n")
    return "\n".join([f"> {label}: {first}", *(f"> {line}" for line in rest)])


@dataclass
class OpenForm:
    """A "Correct this answer" form open on someone's screen."""

    guild_id: int
    message_id: int  # the answer it corrects
    user_id: int
    opened: float  # time.monotonic()


class CorrectForm(discord.ui.Modal):
    """The form for the right answer (its submit is handled by Feedback.on_interaction)."""

    def __init__(self, custom_id: str, question: str) -> None:
        super().__init__(title="Correct my answer", custom_id=custom_id, timeout=None)
        asked = " ".join(question.split())
        self.correction: discord.ui.TextInput[CorrectForm] = discord.ui.TextInput(
            label="The right answer", custom_id="correction", style=discord.TextStyle.paragraph,
            max_length=4000, placeholder=(f"To: {asked}" if asked else "What should I have answered?")[:100])
        self.add_item(self.correction)


def _field(data: Any, custom_id: str) -> str:
    """The value of a modal's text input, wherever Discord nests it (action rows, labels)."""
    if isinstance(data, dict):
        if data.get("custom_id") == custom_id and "value" in data:
            return str(data.get("value") or "")
        children = [data.get("components"), data.get("component")]
    elif isinstance(data, list):
        children = data
    else:
        return ""
    for child in children:
        found = _field(child, custom_id)
        if found:
            return found
    return ""


def _looks_like_ref(word: str) -> bool:
    """``C-7f3a2b`` or ``P-7f3a2b`` (any case, with or without ``C-``, backticks or a trailing comma)."""
    word = word.strip("`,")
    tail = word[2:] if word[:2].lower() in ("c-", "p-") else word
    return len(tail) == 6 and all(ch in "0123456789abcdefABCDEF" for ch in tail) and (
        word[:2].lower() in ("c-", "p-") or any(ch.isdigit() for ch in tail))


def _quote(text: object, limit: int = 200) -> str:
    """User text shown on one line of a list, shortened, markdown escaped (mentions never ping)."""
    flat = " ".join(str(text or "").split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return discord.utils.escape_markdown(flat) or "(empty)"


async def setup(bot: TrainerBot) -> None:
    await bot.add_cog(Feedback(bot))
