"""Confirm / Cancel dialogs before destructive actions (``!forget``, ``!cancel``).

Only the person who asked can press the buttons; a dialog expires after CONFIRM_SECONDS (its buttons are
disabled and it says nothing was changed). The buttons are a :class:`discord.ui.DynamicItem`, so a click on a
dialog the bot no longer waits for (expired, already answered, or from before a restart) still gets a clear
answer instead of Discord's "This interaction failed".
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord

if TYPE_CHECKING:
    from commands._shared import TrainerContext

log = logging.getLogger(__name__)

CONFIRM_TEMPLATE = r"trainer:confirm:(?P<nonce>[0-9a-f]{16}):(?P<choice>yes|no)"


@dataclass
class PendingConfirm:
    """A dialog waiting for its asker's click."""

    user_id: int
    answer: asyncio.Future[bool]


class Dialogs:
    """The dialogs one bot is waiting on (kept on the bot: ``bot.dialogs``)."""

    def __init__(self) -> None:
        self.confirms: dict[str, PendingConfirm] = {}


class ConfirmButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=CONFIRM_TEMPLATE):
    """Confirm (yes) or Cancel (no) of one dialog, found again by its custom_id."""

    def __init__(self, nonce: str, choice: str, *, disabled: bool = False) -> None:
        yes = choice == "yes"
        super().__init__(discord.ui.Button(
            label="Confirm" if yes else "Cancel", disabled=disabled,
            style=discord.ButtonStyle.danger if yes else discord.ButtonStyle.secondary,
            custom_id=f"trainer:confirm:{nonce}:{choice}"))
        self.nonce, self.choice = nonce, choice

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: Any) -> ConfirmButton:
        return cls(match["nonce"], match["choice"])

    async def callback(self, interaction: discord.Interaction) -> None:
        dialogs: Dialogs | None = getattr(interaction.client, "dialogs", None)
        pending = dialogs.confirms.get(self.nonce) if dialogs is not None else None
        if pending is None:
            await interaction.response.send_message(
                "This dialog has expired or was already answered; your click changed nothing.", ephemeral=True)
            return
        if interaction.user.id != pending.user_id:
            # A mention in an ephemeral message pings nobody (and the bot's allowed_mentions are none).
            await interaction.response.send_message(f"Only <@{pending.user_id}> can answer this.", ephemeral=True)
            return
        assert dialogs is not None  # pending was found in it
        del dialogs.confirms[self.nonce]
        yes = self.choice == "yes"
        try:
            await interaction.response.edit_message(view=_buttons(self.nonce, disabled=True))
        finally:
            if not pending.answer.done():
                pending.answer.set_result(yes)


def _buttons(nonce: str, *, disabled: bool = False) -> discord.ui.View:
    view = discord.ui.View(timeout=None)  # stateless: clicks reach ConfirmButton through its template
    view.add_item(ConfirmButton(nonce, "yes", disabled=disabled))
    view.add_item(ConfirmButton(nonce, "no", disabled=disabled))
    return view


async def confirm(ctx: TrainerContext, text: str, *, timeout: float | None = None) -> bool:
    """Ask ``ctx.author`` to confirm with buttons; True only on their Confirm. Cancel or no answer within
    ``timeout`` (CONFIRM_SECONDS) is False, and the dialog then says that nothing was changed."""
    dialogs: Dialogs = ctx.bot.dialogs
    timeout = ctx.bot.settings.confirm_seconds if timeout is None else timeout
    nonce = secrets.token_hex(8)
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    dialogs.confirms[nonce] = PendingConfirm(ctx.author.id, answer)
    try:
        message = await ctx.send(text[:2000], view=_buttons(nonce))
        try:
            yes = await asyncio.wait_for(asyncio.shield(answer), timeout)
        except asyncio.TimeoutError:
            yes = None
    finally:
        dialogs.confirms.pop(nonce, None)
    if yes is None:
        note = "\n*This dialog expired: nothing was changed.*"
        try:
            await message.edit(content=(text[: 2000 - len(note)] + note), view=_buttons(nonce, disabled=True))
        except discord.HTTPException as exc:
            log.info("could not mark dialog %s expired: %s", nonce, exc)
        return False
    return yes
