"""Buttons: "Did you mean …?" offers (one button per offered question, and "None of these") and ``!unanswered``
(the questions nobody's pick answered, grouped by meaning, each with a button that opens a modal for the answer).

Discord glue only: the records, and every check of a click, are ``ctx.model`` (``dataset.picks``). The buttons are
``DynamicItem``s: their custom id names the server, the asker (or the question) and the record, so a click works
after a restart; nothing in it is trusted (the record must be this server's and belong to the clicked message).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands, tasks

from commands._shared import (
    TrainerContext,
    is_admin_user,
    quote,
    report_unexpected,
    split_message,
    trainer_admin,
    user_line,
)
from dataset.picks import MAX_ANSWER, NONE_OF_THESE, UNANSWERED_SHOWN, Choice, NotAsker, Offer
from errors import NotFound, NotSaved, TrainerError

if TYPE_CHECKING:
    from bot import TrainerBot

log = logging.getLogger(__name__)

LABEL_LIMIT = 80  # Discord's limit on a button's label
SWEEP_SECONDS = 30.0  # how often expired offers get their buttons disabled
NOT_RECORDED = "That button isn't valid here. Nothing was recorded."


def short(text: str, limit: int = LABEL_LIMIT) -> str:
    """``text`` on one line, cut to ``limit`` characters (with an ellipsis)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


class OfferButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                  template=r"tb:offer:(?P<guild>[0-9]{1,20}):(?P<asker>[0-9]{1,20}):(?P<offer>[0-9]{1,20}):"
                           r"(?P<choice>-1|[0-9]{1,2})"):
    """One choice of an offer: an offered question, or "None of these" (choice -1)."""

    def __init__(self, guild_id: int, asker_id: int, offer_id: int, choice: int, *, label: str = "…",
                 disabled: bool = False, chosen: bool = False) -> None:
        style = discord.ButtonStyle.success if chosen else (
            discord.ButtonStyle.secondary if choice == NONE_OF_THESE else discord.ButtonStyle.primary)
        super().__init__(discord.ui.Button(label=short(label), style=style, disabled=disabled,
                                           custom_id=f"tb:offer:{guild_id}:{asker_id}:{offer_id}:{choice}"))
        self.guild_id, self.asker_id, self.offer_id, self.choice = guild_id, asker_id, offer_id, choice

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str]) -> OfferButton:
        label = getattr(item, "label", None) or "…"
        return cls(int(match["guild"]), int(match["asker"]), int(match["offer"]), int(match["choice"]), label=label)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = interaction.client.get_cog("Offers")
        if isinstance(cog, Offers):
            await cog.offer_clicked(interaction, self)


class AnswerButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                   template=r"tb:unans:(?P<guild>[0-9]{1,20}):(?P<row>[0-9]{1,20})"):
    """``!unanswered``'s button for one group of questions: opens the modal for its answer."""

    def __init__(self, guild_id: int, row_id: int, *, label: str = "Answer") -> None:
        super().__init__(discord.ui.Button(label=short(label), style=discord.ButtonStyle.primary,
                                           custom_id=f"tb:unans:{guild_id}:{row_id}"))
        self.guild_id, self.row_id = guild_id, row_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str]) -> AnswerButton:
        return cls(int(match["guild"]), int(match["row"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = interaction.client.get_cog("Offers")
        if isinstance(cog, Offers):
            await cog.answer_clicked(interaction, self)


MODAL_ID = re.compile(r"tb:unans-modal:(?P<guild>[0-9]{1,20}):(?P<row>[0-9]{1,20})")


class AnswerModal(discord.ui.Modal):
    """The answer to a group of unanswered questions. Its submit is handled by ``Offers.on_interaction`` (by its
    custom id, so a second submit or one after a restart is answered too), never by discord.py's modal store."""

    def __init__(self, guild_id: int, row_id: int, question: str) -> None:
        super().__init__(title="Answer a question", custom_id=f"tb:unans-modal:{guild_id}:{row_id}", timeout=900)
        self.question: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label="Question (as most asked; you may tidy it)", style=discord.TextStyle.paragraph,
            default=question[:MAX_ANSWER], max_length=MAX_ANSWER, custom_id="question")
        self.answer: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label="Answer", style=discord.TextStyle.paragraph, max_length=MAX_ANSWER, custom_id="answer",
            placeholder="The answer I should give from now on")
        self.add_item(self.question)
        self.add_item(self.answer)

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        return False  # Offers.on_interaction answers every submit of this modal


def offer_view(guild_id: int, offer: Offer, *, disabled: bool = False, chosen: int | None = None) -> discord.ui.View:
    """The offer's buttons: one per question, then "None of these" (all disabled once used or expired)."""
    view = discord.ui.View(timeout=None)
    for i, (question, _) in enumerate(offer.options):
        view.add_item(OfferButton(guild_id, offer.author_id, offer.id, i, label=question, disabled=disabled,
                                  chosen=chosen == i))
    view.add_item(OfferButton(guild_id, offer.author_id, offer.id, NONE_OF_THESE, label="None of these",
                              disabled=disabled, chosen=chosen == NONE_OF_THESE))
    return view


def _text_values(components: Sequence[Any]) -> Iterator[tuple[str, str]]:
    """(custom_id, value) of every text input of a modal submit (in action rows or labels)."""
    for c in components:
        if not isinstance(c, dict):
            continue
        if "custom_id" in c and "value" in c:
            yield str(c["custom_id"]), str(c["value"] or "")
        yield from _text_values(c.get("components") or [])
        if isinstance(c.get("component"), dict):
            yield from _text_values([c["component"]])


class Offers(commands.Cog):
    """Did-you-mean buttons, and questions waiting for an answer."""

    def __init__(self, bot: TrainerBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(OfferButton, AnswerButton)
        self.sweep.start()

    async def cog_unload(self) -> None:
        self.sweep.cancel()
        self.bot.remove_dynamic_items(OfferButton, AnswerButton)

    # ------------------------------------------------------------ sending an offer

    async def send_offer(self, message: discord.Message, guild: discord.Guild, prompt: str, text: str,
                         offers: Sequence[tuple[str, str]]) -> discord.Message | None:
        """Reply to ``message`` with ``text`` and a button per offered question; None when the offer could not
        be recorded (the caller sends the plain "ask me that" text instead)."""
        try:
            offer = await self.bot.model.add_offer(
                guild.id, channel_id=message.channel.id, author_id=message.author.id,
                author_name=str(message.author), prompt=prompt, prompt_message_id=message.id, offers=offers)
        except TrainerError as exc:  # NotSaved: the database is away; the text offer still helps
            log.warning("guild %s: offer not recorded (%s); sent as text", guild.id, exc)
            return None
        sent = await message.reply(text, view=offer_view(guild.id, offer), mention_author=False)
        try:
            await self.bot.model.set_offer_message(guild.id, offer.id, sent.id)
        except NotSaved as exc:  # the buttons still work (a click checks the offer); only the expiry edit needs it
            log.warning("guild %s: offer %s message id not saved (%s)", guild.id, offer.id, exc)
        return sent

    # ------------------------------------------------------------ clicks on an offer

    async def _refuse(self, interaction: discord.Interaction[Any], line: str) -> None:
        """One ephemeral line (pinging nobody) as the interaction's response or a follow-up."""
        none = discord.AllowedMentions.none()
        if interaction.response.is_done():
            await interaction.followup.send(line, ephemeral=True, allowed_mentions=none)
        else:
            await interaction.response.send_message(line, ephemeral=True, allowed_mentions=none)

    async def offer_clicked(self, interaction: discord.Interaction[Any], button: OfferButton) -> None:
        model = self.bot.model
        message = interaction.message
        # Forged ids: the server in the id must be where the click happened (or, in a DM, the offer's own
        # channel), and the offer must be the one this very message carries.
        if interaction.guild_id is not None and interaction.guild_id != button.guild_id:
            await self._refuse(interaction, NOT_RECORDED)
            return
        offer = await model.get_offer(button.guild_id, button.offer_id)
        if (offer is None or message is None or offer.message_id not in (None, message.id)
                or offer.channel_id != interaction.channel_id or offer.author_id != button.asker_id):
            await self._refuse(interaction, "That offer doesn't exist here. Nothing was recorded.")
            return
        user = interaction.user
        if user.id != offer.author_id:
            await self._refuse(interaction, f"Only <@{offer.author_id}> can choose: ask me yourself and I'll "
                                            f"offer you buttons of your own.")
            return
        trusted = await self.bot.is_owner(user) or is_admin_user(self.bot, user)
        try:
            choice = await model.choose(button.guild_id, offer.id, button.choice, user_id=user.id,
                                        user_name=str(user), trusted=trusted)
        except NotAsker as exc:
            await self._refuse(interaction, f"Only <@{exc.asker_id}> can choose.")
            return
        except NotFound as exc:
            await self._refuse(interaction, str(exc))
            return
        except TrainerError as exc:
            # Used or expired: the buttons are disabled now (the message may still show them enabled).
            if offer.choice is not None or offer.expired():
                await interaction.response.edit_message(view=offer_view(button.guild_id, offer, disabled=True,
                                                                        chosen=offer.choice))
                if offer.choice is None:
                    await self._close(button.guild_id, offer)
            await self._refuse(interaction, user_line(exc, self.bot.settings.prefix))
            return
        await interaction.response.edit_message(view=offer_view(button.guild_id, offer, disabled=True,
                                                                chosen=button.choice))
        try:
            await self._after_choice(interaction, button.guild_id, choice)
        except discord.HTTPException as exc:
            log.warning("guild %s: answer to offer %s not sent: %s", button.guild_id, offer.id, exc)

    async def _after_choice(self, interaction: discord.Interaction[Any], guild_id: int, choice: Choice) -> None:
        """Answer in the channel as a reply to the asker's question, and tell the asker what was learned."""
        p = self.bot.settings.prefix
        offer = choice.offer
        if choice.option is None:
            await interaction.followup.send(
                f"Noted: I don't know that one yet, and I've kept your question for the admins (`{p}unanswered`). "
                f"When one of them answers it, I'll answer it from then on.", ephemeral=True)
            return
        question, answer = choice.option
        channel = interaction.channel
        assert isinstance(channel, discord.abc.Messageable)
        ref = None if offer.prompt_message_id is None else discord.MessageReference(
            message_id=offer.prompt_message_id, channel_id=offer.channel_id, guild_id=interaction.guild_id,
            fail_if_not_exists=False)
        sent: list[discord.Message] = []
        for chunk in split_message(answer) or ["…"]:
            if not sent and ref is not None:
                sent.append(await channel.send(chunk, reference=ref, mention_author=False))
            else:
                sent.append(await channel.send(chunk))
        try:
            await self.bot.model.record_answer(
                guild_id, message_ids=[m.id for m in sent], channel_id=offer.channel_id, prompt=offer.prompt,
                answer=answer,
                prompt_message_id=offer.prompt_message_id, author_id=offer.author_id, author_name=offer.author_name)
        except NotSaved:
            log.warning("guild %s: answer to offer %s not logged", guild_id, offer.id)
        pick = choice.pick
        assert pick is not None
        if choice.counted and choice.agreed > 1 and pick.author_id == offer.author_id and pick.status == "approved":
            note = (f"Thanks! {choice.agreed} members chose this for the same words, so I've learned them: "
                    f"I'll answer them directly from now on.")
        elif choice.counted:
            note = "Thanks! I've learned your wording: I'll answer it directly from now on."
        else:
            note = (f"Thanks! Your pick (`{pick.ref}`) teaches me your wording once an admin approves it "
                    f"(`{p}review`).")
        await interaction.followup.send(note, ephemeral=True)

    # ------------------------------------------------------------ expiry

    async def _close(self, guild_id: int, offer: Offer) -> None:
        try:
            await self.bot.model.close_offer(guild_id, offer.id)
        except NotSaved as exc:
            log.warning("guild %s: offer %s not closed: %s", guild_id, offer.id, exc)

    async def sweep_expired(self) -> int:
        """Disable the buttons of offers past OFFER_BUTTONS_MINUTES (after a restart too); how many."""
        done = 0
        # This process's servers only: with shards, each process disables its own servers' buttons.
        for guild_id, offer in await self.bot.model.expired_offers({g.id for g in self.bot.guilds}):
            if offer.message_id is not None:
                partial = self.bot.get_partial_messageable(offer.channel_id, guild_id=guild_id)
                try:
                    await partial.get_partial_message(offer.message_id).edit(
                        view=offer_view(guild_id, offer, disabled=True))
                except discord.NotFound:
                    pass  # the message is gone: nothing to disable
                except discord.HTTPException as exc:
                    log.warning("guild %s: could not disable offer %s: %s", guild_id, offer.id, exc)
                    if exc.status >= 500 or exc.status == 429:
                        continue  # try again next sweep
            await self._close(guild_id, offer)
            done += 1
        return done

    @tasks.loop(seconds=SWEEP_SECONDS)
    async def sweep(self) -> None:
        try:
            await self.sweep_expired()
        except Exception as exc:  # the loop must survive one bad sweep (e.g. the database away)
            report_unexpected("disabling expired offers", exc)

    @sweep.before_loop
    async def _before_sweep(self) -> None:
        await self.bot.wait_until_ready()

    # ------------------------------------------------------------ !unanswered

    @commands.hybrid_command()
    @commands.guild_only()
    @app_commands.guild_only()
    @trainer_admin()
    async def unanswered(self, ctx: TrainerContext) -> None:
        """★ The most asked questions I couldn't answer ("None of these"), grouped by meaning; a button answers
        one."""
        await ctx.defer()  # grouping by meaning runs the embedding model
        groups = await ctx.model.unanswered(ctx.guild_id)
        if not groups:
            await ctx.send("No unanswered questions: every offer so far found its question.")
            return
        shown = groups[:UNANSWERED_SHOWN]
        lines = [f"**{len(groups)} unanswered question(s)**, most asked first (grouped by meaning). Press a "
                 f"button to answer one: your answer counts at once, as your correction."]
        view = discord.ui.View(timeout=None)
        for n, g in enumerate(shown, 1):
            others = {" ".join(r.prompt.split()) for r in g.rows[1:]} - {" ".join(g.question.split())}
            also = f"\n  also: {'; '.join(quote(o, 80) for o in sorted(others)[:3])}" if others else ""
            people = len(g.askers)
            lines.append(f"`{n}.` {quote(g.question)} — asked {g.count}× by {people} member"
                         f"{'s' * (people != 1)}{also}")
            view.add_item(AnswerButton(ctx.guild_id, g.id, label=f"{n}. {g.question}"))
        if len(groups) > len(shown):
            lines.append(f"…and {len(groups) - len(shown)} more; answer these first.")
        await ctx.send("\n".join(lines)[:2000], view=view)

    async def answer_clicked(self, interaction: discord.Interaction[Any], button: AnswerButton) -> None:
        if interaction.guild_id != button.guild_id:
            await self._refuse(interaction, NOT_RECORDED)
            return
        if not (await self.bot.is_owner(interaction.user) or is_admin_user(self.bot, interaction.user)):
            await self._refuse(interaction, "Only admins can answer these questions.")
            return
        try:
            question = await self.bot.model.unanswered_question(button.guild_id, button.row_id)
        except TrainerError as exc:
            await self._refuse(interaction, user_line(exc, self.bot.settings.prefix))
            return
        await interaction.response.send_modal(AnswerModal(button.guild_id, button.row_id, question))

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        if not isinstance(interaction.data, dict):
            return
        if interaction.type is discord.InteractionType.component:
            await self._forged_click(interaction, str(interaction.data.get("custom_id", "")))
            return
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        found = MODAL_ID.fullmatch(str(interaction.data.get("custom_id", "")))
        if found is None:
            return
        guild_id, row_id = int(found["guild"]), int(found["row"])
        try:
            await self._answer_submitted(interaction, guild_id, row_id)
        except Exception as exc:
            error_id = report_unexpected(f"answering unanswered question {row_id}", exc)
            await self._refuse(interaction, f"Something went wrong (error id `{error_id}`); nothing was saved.")

    async def _forged_click(self, interaction: discord.Interaction[Any], custom_id: str) -> None:
        """A click on one of our custom ids that its message does not hold (only a modified client sends one):
        discord.py drops it silently, so it is refused here with one line."""
        if not custom_id.startswith("tb:") or interaction.message is None:
            return
        held = {getattr(child, "custom_id", None) for row in interaction.message.components
                for child in getattr(row, "children", [row])}
        if custom_id not in held:
            await self._refuse(interaction, NOT_RECORDED)

    async def _answer_submitted(self, interaction: discord.Interaction[Any], guild_id: int, row_id: int) -> None:
        if interaction.guild_id != guild_id:
            await self._refuse(interaction, NOT_RECORDED)
            return
        user = interaction.user
        if not (await self.bot.is_owner(user) or is_admin_user(self.bot, user)):
            await self._refuse(interaction, "Only admins can answer these questions. Nothing was saved.")
            return
        rows = interaction.data.get("components") if isinstance(interaction.data, dict) else None
        values = dict(_text_values(rows if isinstance(rows, list) else []))
        # Grouping embeds the open questions: more than Discord's 3 seconds for a first response on a big list.
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            fix = await self.bot.model.answer_unanswered(
                guild_id, row_id, question=values.get("question", ""), answer=values.get("answer", ""),
                author_id=user.id, author_name=str(user), channel_id=interaction.channel_id)
        except TrainerError as exc:
            await self._refuse(interaction, user_line(exc, self.bot.settings.prefix))
            return
        await interaction.followup.send(
            f"Saved as correction `{fix.ref}`: I'll answer “{quote(fix.prompt, 150)}” with it from now on "
            f"(and the next training includes it).", ephemeral=True, allowed_mentions=discord.AllowedMentions.none())


async def setup(bot: TrainerBot) -> None:
    await bot.add_cog(Offers(bot))
