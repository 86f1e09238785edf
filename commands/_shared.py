"""What every cog shares: the command Context, the admin check, flags, message splitting, error reports.

Discord glue only: domain work goes through ``ctx.model`` (the one door, see ``model.py``).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from errors import InvalidInput, OverBudget, TrainerError

if TYPE_CHECKING:
    from bot import TrainerBot  # noqa: F401 (named in TrainerContext's base)
    from model import Model

log = logging.getLogger(__name__)


class TrainerContext(commands.Context["TrainerBot"]):
    """``ctx`` in every command: the model, the guild id, long-message sending and the replied-to message.

    (mypy infers ``Never`` for ``commands.hybrid_command`` on a callback taking this subclass, unless it also
    has a check decorator typed ``Any``: those decorator lines carry a ``type: ignore``.)"""

    error_handled: bool = False  # a cog's error handler answered already; the bot's global one stays silent
    @property
    def model(self) -> Model:
        return self.bot.model

    @property
    def guild_id(self) -> int:
        """The server this command runs in (commands that use it are guild-only)."""
        if self.guild is None:
            raise commands.NoPrivateMessage("This command only works in a server.")
        return self.guild.id

    @property
    def replied_message(self) -> discord.Message | None:
        """The message this command replies to, when discord.py resolved it."""
        ref = self.message.reference
        return ref.resolved if ref is not None and isinstance(ref.resolved, discord.Message) else None

    async def send(self, content: Any = None, **kwargs: Any) -> discord.Message:
        """Every command reply leaves here (``reply`` and ``send_long`` too): mentions in it never ping, even on
        a server that ignores ``allowed_mentions`` (see :func:`no_pings`)."""
        return await super().send(no_pings(str(content)) if content is not None else None, **kwargs)

    async def send_long(self, text: str, **kwargs: Any) -> list[discord.Message]:
        """Send ``text`` in as many messages as Discord's 2000-character limit needs."""
        return [await self.send(chunk, **kwargs) for chunk in split_message(text)]

    async def send_page(self, header: str, blocks: Sequence[str], page: int, *, more: str,
                        footer: str = "") -> None:
        """Send page ``page`` (from 1) of a listing: ``header``, the blocks of that page (:func:`paginate`),
        ``footer``, and where there are more pages the command that shows the next (``more`` formats the page
        number). Each page is at most :data:`PAGE_MESSAGES` messages, however many blocks there are."""
        pages = paginate(blocks)
        if page > len(pages):
            raise InvalidInput(f"There {'is' if len(pages) == 1 else 'are'} only {len(pages)} "
                               f"page{'s' * (len(pages) != 1)}.")
        lines = [header, *pages[page - 1]]
        if len(pages) > 1:
            after = f" — `{more.format(page + 1)}` for the next" if page < len(pages) else ""
            lines.append(f"*Page {page} of {len(pages)}{after}.*")
        if footer:
            lines.append(footer)
        await self.send_long("\n".join(lines))

    @property
    def origin(self) -> str:
        """Where what this command adds came from (provenance): the message, or the slash command."""
        if self.interaction is not None:
            return f"/{self.command.qualified_name if self.command else '?'} (interaction {self.interaction.id})"
        return f"message {self.message.id}"

    def attachments(self, *picked: discord.Attachment | None) -> list[discord.Attachment]:
        """The files given: a slash command's attachment options, or the message's attachments."""
        if self.interaction is not None:
            return [a for a in picked if a is not None]
        return list(self.message.attachments)

    @property
    def upload_limit(self) -> int:
        """The largest file the bot may attach here."""
        return self.guild.filesize_limit if self.guild else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES


# ---------------------------------------------------------------- who may train

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
    if admin_member(ctx.bot, ctx.author):
        return True
    raise NotTrainerAdmin(ctx.bot.settings.trainer_role)


def _has_role(member: Any, role: str | None) -> bool:
    """Whether ``member`` has the role named ``role`` (its name or id), as settings name roles."""
    return bool(role) and any(r.name == role or str(r.id) == role for r in getattr(member, "roles", []))


def admin_member(bot: TrainerBot, member: Any) -> bool:
    """Manage Server (or Administrator) or the TRAINER_ROLE role in the member's server."""
    perms = getattr(member, "guild_permissions", None)
    if perms is not None and (perms.manage_guild or perms.administrator):
        return True
    return _has_role(member, bot.settings.trainer_role)


async def is_admin_or_owner(bot: TrainerBot, user: discord.abc.User) -> bool:
    """Whether ``user`` (an interaction's member) is a trainer admin in their server, or the bot owner."""
    return await bot.is_owner(user) or admin_member(bot, user)


async def is_admin(ctx: commands.Context) -> bool:
    """Whether the author is a trainer admin here (no error: for commands anyone may use)."""
    try:
        return await is_trainer_admin(ctx)
    except commands.CheckFailure:
        return False


def trainer_admin() -> Any:
    """Decorator: only trainer admins may run the command; as a slash command, members don't see it
    (Manage Server by default; a server can change that in its Integrations settings, and the check still holds)."""
    def decorate(func: Any) -> Any:
        return app_commands.default_permissions(manage_guild=True)(commands.check(is_trainer_admin)(func))
    return decorate


# ---------------------------------------------------------------- budgets on paid calls

async def budget_exempt(bot: TrainerBot, guild: discord.Guild, user: discord.User | discord.Member) -> bool:
    """Whether ``user`` is never limited in ``guild``: the bot owner, an admin (Manage Server, TRAINER_ROLE) or a
    member of BUDGET_EXEMPT_ROLE. In a DM the author is looked up as a member of the server that answers."""
    if await bot.is_owner(user):
        return True
    member: Any = user if isinstance(user, discord.Member) and user.guild.id == guild.id else guild.get_member(user.id)
    if member is None:
        try:
            member = await guild.fetch_member(user.id)
        except discord.HTTPException:
            return False  # not (or no longer) a member there: no role can exempt them
    return admin_member(bot, member) or _has_role(member, bot.settings.budget_exempt_role)


def user_line(exc: TrainerError, prefix: str) -> str:
    """The one line that tells a user about ``exc``: its text, the command that helps with this bot's
    ``prefix``, times as Discord timestamps (each reader sees them in their own time zone)."""
    if isinstance(exc, OverBudget):
        reset = discord.utils.format_dt(datetime.fromtimestamp(exc.resets_at, UTC), "R")
        return (f"You've used your {exc.limit} paid calls for today (OpenAI answers, transcriptions and spoken "
                f"answers); they reset {reset}.")
    text = str(exc)
    if exc.helps is not None:
        command, what = exc.helps
        text += f" `{prefix}{command}` {what}."
    return text[:2000]


async def charge(bot: TrainerBot, guild: discord.Guild, user: discord.User | discord.Member, kind: str) -> None:
    """Count a paid call of ``kind`` by ``user`` before it is made; OverBudget when they are over today's limit.

    Exemption (which may need a member lookup) is only worked out when the call is paid at all.
    """
    if bot.model.paid(kind):
        await bot.model.charge(guild.id, user.id, kind, exempt=await budget_exempt(bot, guild, user))


# ---------------------------------------------------------------- arguments

def parse_flag(value: str, name: str = "positive") -> bool:
    """yes/no style flags: ``positive=no``."""
    lowered = value.strip().lower()
    if lowered in ("yes", "y", "true", "1", "on", "positive"):
        return True
    if lowered in ("no", "n", "false", "0", "off", "negative"):
        return False
    raise InvalidInput(f"`{name}=` takes yes or no, not `{value}`.")


def split_flags(text: str, names: tuple[str, ...] = ("positive",)) -> tuple[str, dict[str, bool]]:
    """Take ``name=value`` yes/no words out of ``text``; return the rest and the flags."""
    rest, flags = [], {}
    for word in text.split(" "):
        key, sep, value = word.partition("=")
        if sep and key.lower() in names:
            flags[key.lower()] = parse_flag(value, key.lower())
        else:
            rest.append(word)
    return " ".join(rest).strip(), flags


def take_option(text: str, name: str, choices: tuple[str, ...]) -> tuple[str, str | None]:
    """Take one ``name=value`` word out of ``text`` (value one of ``choices``); return the rest and the value."""
    rest, found = [], None
    for word in text.split(" "):
        key, sep, value = word.partition("=")
        if sep and key.lower() == name:
            found = value.lower()
            if found not in choices:
                raise InvalidInput(f"`{name}=` takes {' or '.join(choices)}.")
        else:
            rest.append(word)
    return " ".join(rest).strip(), found


# ---------------------------------------------------------------- members' text shown back

_LINK = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*)://")


def quote(text: object, limit: int = 200) -> str:
    """Text a member wrote, shown on one line of a list: shortened, markdown escaped, and no URL in it is a live
    link. Mentions are shown as written: the bot's AllowedMentions.none() keeps them from pinging anyone."""
    flat = " ".join(str(text or "").split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    flat = discord.utils.escape_markdown(flat)
    return _LINK.sub(lambda m: f"{m.group(1)}:⁠//", flat) or "(empty)"


def is_admin_user(bot: TrainerBot, user: discord.User | discord.Member) -> bool:
    """Whether ``user`` (a member, e.g. who clicked a button) is a trainer admin of their server: Manage Server,
    Administrator or TRAINER_ROLE (the bot owner is checked apart: ``bot.is_owner`` is async)."""
    return isinstance(user, discord.Member) and admin_member(bot, user)


# ---------------------------------------------------------------- errors nobody expected

class CannotPostHere(commands.CheckFailure):
    """I may not post in the channel a command came from: it is not run (the log says it once)."""


def may_post(channel: Any) -> bool:
    """Whether my permissions (as the cache knows them) let me post in ``channel``; DMs: yes."""
    guild = getattr(channel, "guild", None)
    if guild is None or not hasattr(channel, "permissions_for"):
        return True
    perms = channel.permissions_for(guild.me)
    send = perms.send_messages_in_threads if isinstance(channel, discord.Thread) else perms.send_messages
    return bool(perms.view_channel and send)


def refused_post(error: discord.HTTPException, channel: Any) -> bool:
    """Whether ``error`` is Discord refusing a message or typing indicator of mine in ``channel``."""
    response = error.response
    path = getattr(getattr(response, "url", None), "path", "")
    return (error.status == 403 and getattr(response, "method", "") == "POST"
            and path.endswith((f"/channels/{channel.id}/messages", f"/channels/{channel.id}/typing")))


def report_unexpected(what: str, exc: BaseException | None = None) -> str:
    """Log an unexpected failure with a short error id and return the id to show the user."""
    error_id = secrets.token_hex(3)
    log.error("error %s %s", error_id, what, exc_info=exc if exc is not None else True)
    return error_id


# ---------------------------------------------------------------- what leaves for the channel

_PING = re.compile(r"@(everyone|here|[!&]?\d+>)")


def no_pings(text: str) -> str:
    """``text`` with every mention broken by a zero-width space after its ``@`` (``@everyone``, ``@here``,
    ``<@id>``, ``<@!id>``, ``<@&id>``): shown as written, pinging nobody.

    The bot sends with ``allowed_mentions`` none, but some Discord-compatible servers (Spacebar) ignore it:
    this is the second guard, applied where text leaves (``TrainerContext.send``, the chat cog's answers, the
    feedback cog's ask, the training cog's status messages). Channel mentions (``<#id>``) ping nobody and stay.
    """
    return _PING.sub("@\u200b\\1", text)


def listed(items: Sequence[str], *, limit: int = 600, sep: str = ", ") -> str:
    """``items`` joined, as many as fit in ``limit`` characters, then "and N more": a list of ids or names that
    stays short whatever its length (a reply that names what a command did to 200 things)."""
    shown: list[str] = []
    size = 0
    for i, item in enumerate(items):
        rest = len(items) - i
        tail = len(f" and {rest:,} more")
        if shown and size + len(sep) + len(item) + (tail if rest > 1 else 0) > limit:
            return f"{sep.join(shown)} and {rest:,} more"
        shown.append(item)
        size += len(item) + (len(sep) if len(shown) > 1 else 0)
    return sep.join(shown)


PAGE_MESSAGES = 3  # messages one page of a listing may fill
PAGE_CHARS = PAGE_MESSAGES * 2000 - 400  # room for the header and the footer


def paginate(blocks: Sequence[str], *, page_chars: int = PAGE_CHARS) -> list[list[str]]:
    """Blocks (one listed item each, several lines perhaps) grouped into pages of at most ``page_chars``
    characters; a block longer than a page is a page of its own (``send_long`` splits it into messages). Always
    at least one page."""
    pages: list[list[str]] = [[]]
    size = 0
    for block in blocks:
        if pages[-1] and size + len(block) + 1 > page_chars:
            pages.append([])
            size = 0
        pages[-1].append(block)
        size += len(block) + 1
    return pages


def page_number(text: str) -> int:
    """A page number a user typed (``2``, ``page 2``, ``p2``); InvalidInput otherwise."""
    word = text.strip().lower().removeprefix("page").removeprefix("p").strip()
    if not word:
        return 1
    if not word.isdigit() or int(word) < 1:
        raise InvalidInput(f"`{text.strip()[:40]}` is not a page number: give 1, 2, … Nothing was changed.")
    return int(word)


# ---------------------------------------------------------------- long messages

DISCORD_LIMIT = 2000


_HEADING = re.compile(r"^(__[^_].*__|\*\*[^*].*\*\*|#{1,3} .+)$")


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Split ``text`` into messages of at most ``limit`` characters, whole sections together when they fit.

    A section starts at a heading line (``__Title__``, ``**Title**`` or ``# Title``) outside code blocks.
    Sections are packed into as few messages as possible; one longer than a message is split by lines
    (:func:`split_lines`).
    """
    text = text.strip("\n")
    if len(text) <= limit:
        return [text] if text else []
    sections: list[list[str]] = [[]]
    in_code = False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and _HEADING.match(line.strip()) and sections[-1]:
            sections.append([])
        sections[-1].append(line)
    chunks: list[str] = []
    current = ""
    for section in ("\n".join(s) for s in sections):
        joined = f"{current}\n{section}" if current else section
        if len(joined.strip("\n")) <= limit:
            current = joined
            continue
        if current.strip("\n"):
            chunks.append(current.strip("\n"))
        if len(section.strip("\n")) <= limit:
            current = section
        else:
            *whole, current = split_lines(section, limit)
            chunks.extend(whole)
    if current.strip("\n"):
        chunks.append(current.strip("\n"))
    return chunks


def split_lines(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Split ``text`` at line boundaries into chunks of at most ``limit`` characters.

    A chunk that ends inside a fenced code block is closed with ``` and the next chunk reopens
    the fence (with its language), so every chunk renders on its own. Lines longer than a chunk
    are cut hard, as a last resort.
    """
    if limit < 20:
        raise ValueError("limit too small")
    text = text.strip("\n")
    if not text:
        return []
    if len(text) <= limit:
        return [text]

    chunks: list[str] = []
    current: list[str] = []
    size = 0
    fence: str | None = None  # the opening fence line of the block we are inside, e.g. "```py"

    def room() -> int:
        # Reserve space for a closing fence when we are inside a block.
        return limit - (4 if fence else 0)

    def flush() -> None:
        nonlocal current, size
        body = "\n".join(current)
        if fence:
            body += "\n```"
        if body.strip() and body.strip() != "```":
            chunks.append(body)
        current = [fence] if fence else []
        size = len(fence) if fence else 0

    for line in text.split("\n"):
        pieces = [line]
        max_line = limit - 8 - (len(fence) + 1 if fence else 0)
        if len(line) > max_line:
            pieces = [line[i:i + max_line] for i in range(0, len(line), max_line)]
        for piece in pieces:
            extra = len(piece) + (1 if current else 0)
            if size + extra > room():
                flush()
                extra = len(piece) + (1 if current else 0)
            current.append(piece)
            size += extra
            stripped = piece.strip()
            if stripped.startswith("```"):
                # A fence line toggles the block; "```py" opens, a bare "```" closes.
                if fence is None:
                    if stripped.count("```") == 1:
                        fence = stripped
                elif stripped == "```" or stripped.endswith("```"):
                    fence = None
    if current and "\n".join(current).strip() not in ("", fence or ""):
        body = "\n".join(current)
        if fence:
            body += "\n```"
        chunks.append(body)
    return chunks
