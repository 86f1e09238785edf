"""Small command checks used as decorators by the cogs."""

from __future__ import annotations

import logging

from discord.ext import commands

log = logging.getLogger(__name__)


class NotTrainerAdmin(commands.CheckFailure):
    """The author is not an admin of the trainer in this server."""

    def __init__(self, role: str | None) -> None:
        needed = "the **Manage Server** permission"
        if role:
            needed += f" or the **{role}** role"
        super().__init__(f"You need {needed} to use this command.")


async def is_trainer_admin(ctx: commands.Context) -> bool:
    """Manage Server permission, the TRAINER_ROLE role, or the bot owner."""
    if await ctx.bot.is_owner(ctx.author):
        return True
    if ctx.guild is None:
        raise commands.NoPrivateMessage("This command only works in a server.")
    perms = ctx.author.guild_permissions
    if perms.manage_guild or perms.administrator:
        return True
    role = ctx.bot.settings.trainer_role
    if role and any(r.name == role or str(r.id) == role for r in getattr(ctx.author, "roles", [])):
        return True
    raise NotTrainerAdmin(role)


def trainer_admin():
    """Decorator: only trainer admins may run the command."""
    return commands.check(is_trainer_admin)
