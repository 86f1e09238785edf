"""A small Discord-compatible server on 127.0.0.1 that the real discord.py client logs into.

It speaks the parts of Discord's REST API (``/api/v10/...``), gateway websocket and CDN that the
bot uses, holds one guild with text and voice channels and users with roles, and stores every
message and attachment. Anything it does not implement answers 404 and is recorded in
:attr:`Sandbox.unimplemented`, so tests can fail on it.

Users act through methods (:meth:`Sandbox.post_message`, :meth:`Sandbox.set_voice`), which
dispatch the same gateway events Discord would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import aiohttp
from aiohttp import WSMsgType, web

from sandbox.world import FORMAT, WorldFile, WorldUnreadable

if TYPE_CHECKING:
    from sandbox.voice import VoiceServer

log = logging.getLogger(__name__)

DISCORD_EPOCH_MS = 1420070400000
API_PREFIX = "/api/v10"

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
CONNECT = 1 << 20
SPEAK = 1 << 21
USE_VAD = 1 << 25
MANAGE_GUILD = 1 << 5
ADMINISTRATOR = 1 << 3
MANAGE_MESSAGES = 1 << 13
MENTION_EVERYONE = 1 << 17
ALL_PERMISSIONS = (1 << 53) - 1
EVERYONE_PERMISSIONS = (
    ADD_REACTIONS | VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY
    | CONNECT | SPEAK | USE_VAD
)

# Message flags.
IS_VOICE_MESSAGE = 1 << 13

# discord.py's heartbeat thread records its send time only after the event loop has written the
# heartbeat; an ACK that arrives first (an in-process server on a busy machine answers within
# microseconds) is measured against the previous send, one whole interval earlier, and discord.py
# warns "Can't keep up, websocket is 41.3s behind". Measured with a 20 ms interval: about 1% of
# beats on an idle 2-core machine and 26% with the CPUs busy. Discord's ACK crosses the network;
# the sandbox answers after a short, LAN-like round trip instead. A bot whose loop really stalls
# still measures the stall: the delay only moves the ACK later, never earlier.
HEARTBEAT_ACK_DELAY = 0.05

# A world file is rewritten at most this often (seconds): a burst of messages is one write.
SAVE_DELAY = 0.5

# Gateway intents that gate reaction events (https://discord.com/developers/docs/events/gateway#gateway-intents).
GUILD_MESSAGE_REACTIONS = 1 << 10
DIRECT_MESSAGE_REACTIONS = 1 << 13
MAX_REACTIONS = 20  # distinct emojis on one message
# A few shortcodes for people typing in a terminal (/react ID :+1:); any Unicode emoji works as is.
EMOJI_SHORTCODES = {
    ":+1:": "👍", ":thumbsup:": "👍", ":-1:": "👎", ":thumbsdown:": "👎", ":heart:": "❤️",
    ":white_check_mark:": "✅", ":x:": "❌", ":eyes:": "👀", ":tada:": "🎉", ":smile:": "😄",
    ":thinking:": "🤔", ":fire:": "🔥", ":100:": "💯", ":question:": "❓", ":warning:": "⚠️",
}
KEYCAP = re.compile("^[0-9#*]\ufe0f?\u20e3$")


class ReactionError(ValueError):
    """A reaction Discord would refuse; ``code`` and ``status`` are Discord's."""

    def __init__(self, message: str, code: int, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.status = code, status


def parse_emoji(text: str) -> str:
    """The emoji a reaction names, as Discord keys it: the Unicode emoji itself.

    Accepts the emoji, a shortcode from :data:`EMOJI_SHORTCODES`, or what discord.py puts in a
    URL. Custom emojis (``name:id``) are refused as unknown: the sandbox guild has none."""
    emoji = EMOJI_SHORTCODES.get(text.strip(), text.strip())
    if emoji and (KEYCAP.match(emoji) or (len(emoji) <= 16 and all(ord(c) > 0x7F for c in emoji))):
        return emoji
    raise ReactionError("Unknown Emoji", 10014)


# Mentions in message content, as Discord's server parses them (it ignores markdown).
USER_MENTION = re.compile(r"<@!?(\d{15,21})>")
ROLE_MENTION = re.compile(r"<@&(\d{15,21})>")
EVERYONE_MENTION = re.compile(r"@(everyone|here)")
ALLOWED_PARSE = ("users", "roles", "everyone")

# Gateway opcodes.
OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_PRESENCE, OP_VOICE_STATE = 0, 1, 2, 3, 4
OP_RESUME, OP_RECONNECT, OP_REQUEST_MEMBERS, OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK = 6, 7, 8, 9, 10, 11


def _json(data: Any, status: int = 200) -> web.Response:
    # discord.py only parses bodies whose Content-Type is exactly application/json.
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def _iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(ts if ts is not None else time.time(), timezone.utc).isoformat()


class Snowflakes:
    """Discord-style ids: milliseconds since the Discord epoch shifted left by 22 bits.

    Strictly increasing, within a run and across runs: ``last`` is the highest id a saved world
    holds, and an id is never below it even if the clock stepped back."""

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def next(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        self.last = max(ms << 22, self.last + 1)
        return self.last


@dataclass
class User:
    id: int
    name: str
    bot: bool = False
    roles: list[int] = field(default_factory=list)
    in_guild: bool = True  # False: a Discord user who is not a member of the sandbox guild
    joined: float = field(default_factory=time.time)

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "username": self.name, "discriminator": "0", "global_name": self.name,
            "avatar": None, "bot": self.bot, "public_flags": 0, "flags": 0,
        }

    def member_payload(self, with_user: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(r) for r in self.roles], "joined_at": _iso(self.joined), "deaf": False, "mute": False,
            "flags": 0, "nick": None, "avatar": None, "premium_since": None, "pending": False,
        }
        if with_user:
            data["user"] = self.payload()
        return data


class Attachment:
    """A file on a message. Its bytes are in memory (posted during this run) or, for a world
    loaded from disk, read from the world's attachment folder when asked for (``loader``)."""

    def __init__(self, id: int, filename: str, data: bytes | None, content_type: str | None, url: str,
                 duration_secs: float | None = None, *, size: int | None = None,
                 loader: Callable[[], bytes] | None = None) -> None:
        self.id = id
        self.filename = filename
        self.content_type = content_type
        self.url = url
        self.duration_secs = duration_secs
        self._data = data
        self._loader = loader
        self.size = len(data) if data is not None else int(size or 0)
        self.saved = loader is not None  # its bytes are in the world's attachment folder

    @property
    def data(self) -> bytes:
        """The file's bytes (a blocking read for one loaded from disk: use :meth:`read`)."""
        if self._data is not None:
            return self._data
        assert self._loader is not None
        return self._loader()

    async def read(self) -> bytes:
        if self._data is not None:
            return self._data
        return await asyncio.to_thread(lambda: self.data)

    def __repr__(self) -> str:
        return f"Attachment(id={self.id}, filename={self.filename!r}, size={self.size})"

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id), "filename": self.filename, "size": self.size, "url": self.url,
            "proxy_url": self.url,
        }
        if self.content_type:
            data["content_type"] = self.content_type
        if self.duration_secs is not None:
            data["duration_secs"] = self.duration_secs
            data["waveform"] = "AAAAAAAAAAAA"
        return data


@dataclass
class Message:
    id: int
    channel_id: int
    guild_id: int | None
    author: User
    content: str
    attachments: list[Attachment] = field(default_factory=list)
    embeds: list[dict[str, Any]] = field(default_factory=list)
    reference_id: int | None = None
    flags: int = 0
    timestamp: float = field(default_factory=time.time)
    edited: float | None = None
    deleted: bool = False
    edits: int = 0
    # Mentions as Discord resolved them for the current content (allowed_mentions applied):
    mentions: list[int] = field(default_factory=list)  # user ids, in order of appearance
    mention_roles: list[int] = field(default_factory=list)
    mention_everyone: bool = False
    notifies: set[int] = field(default_factory=set)  # who the current version pings
    # Everyone the message ever pinged: at creation, plus anyone an edit newly mentions (Discord
    # sends no push for an edit, but the mention still lands in that person's mentions).
    notified: set[int] = field(default_factory=set)
    pinged: set[int] = field(default_factory=set)  # who the last creation/edit newly pinged
    allowed_mentions: dict[str, Any] | None = None  # as the sender gave it (None: not given)
    # Reactions: emoji -> ids of the users who reacted, both in the order they came.
    reactions: dict[str, list[int]] = field(default_factory=dict)

    @property
    def files(self) -> list[Attachment]:
        return self.attachments


@dataclass
class Channel:
    id: int
    name: str
    type: int  # 0 text, 2 voice, 1 DM
    guild_id: int | None
    position: int = 0
    recipient: User | None = None
    # Discord's permission overwrites: {"id": role/user id, "type": 0 role | 1 member, "allow", "deny"}.
    overwrites: list[dict[str, Any]] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        if self.type == 1:
            return {"id": str(self.id), "type": 1, "last_message_id": None,
                    "recipients": [self.recipient.payload()] if self.recipient else []}
        data: dict[str, Any] = {
            "id": str(self.id), "type": self.type, "guild_id": str(self.guild_id), "name": self.name,
            "position": self.position, "permission_overwrites": [
                {"id": str(o["id"]), "type": o.get("type", 0), "allow": str(o.get("allow", 0)),
                 "deny": str(o.get("deny", 0))} for o in self.overwrites
            ], "nsfw": False, "parent_id": None,
        }
        if self.type == 0:
            data.update(topic=None, last_message_id=None, rate_limit_per_user=0)
        else:
            data.update(bitrate=64000, user_limit=0, rtc_region=None)
        return data


@dataclass
class Role:
    id: int
    name: str
    permissions: int
    position: int = 0
    mentionable: bool = False  # anyone may ping it; otherwise only with Mention Everyone

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "name": self.name, "color": 0, "colors": {"primary_color": 0},
            "hoist": False, "position": self.position, "permissions": str(self.permissions),
            "managed": False, "mentionable": self.mentionable, "flags": 0, "icon": None, "unicode_emoji": None,
        }


class _Session:
    """One bot gateway session: survives a dropped websocket so it can RESUME."""

    def __init__(self, session_id: str, user: User):
        self.id = session_id
        self.user = user
        self.seq = 0
        self.backlog: list[dict[str, Any]] = []  # sent events kept for RESUME
        self.ws: web.WebSocketResponse | None = None
        self.intents = 0  # from IDENTIFY: Discord only sends the events a client asked for


class Sandbox:
    """The server: state, REST, gateway and CDN."""

    def __init__(self, *, guild_name: str = "Sandbox", heartbeat_interval_ms: int = 41250,
                 heartbeat_ack_delay: float = HEARTBEAT_ACK_DELAY, world_file: str | Path | None = None) -> None:
        """``world_file``: keep the world (server, roles, channels, users, ids, messages, reactions,
        attachments) in this JSON file between runs, loading it now if it exists; without it every
        sandbox is a new world. The first start saves a new world; changes are saved within
        :data:`SAVE_DELAY` and on :meth:`close`. An unreadable file is set aside and a new world
        begins; :attr:`world_note` then says so (and the log)."""
        self.ids = Snowflakes()
        self.heartbeat_interval_ms = heartbeat_interval_ms
        # Discord's ACK crosses the network, so it reaches the client well after the client's
        # heartbeat thread has recorded its send time; see HEARTBEAT_ACK_DELAY.
        self.heartbeat_ack_delay = heartbeat_ack_delay
        self.heartbeats: list[tuple[float, Any]] = []  # (monotonic time, d) of every op 1 the bot sent
        self._background: set[asyncio.Task[None]] = set()
        self.host = "127.0.0.1"
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.unimplemented: list[str] = []
        self.sessions: dict[str, _Session] = {}
        self.identify_count = 0
        self.resume_count = 0
        self.messages: dict[int, Message] = {}
        self.channels: dict[int, Channel] = {}
        self.roles: dict[int, Role] = {}
        self.users: dict[int, User] = {}
        self.voice_states: dict[int, int] = {}  # user id -> voice channel id
        self.bot_voice_requests: list[dict[str, Any]] = []
        self.typing: list[int] = []  # channel ids of the bot's typing indicators, in order
        self.downloads: list[int] = []  # attachment ids fetched from the CDN, in order
        # The loopback voice server (opt-in: start(voice=True) or enable_voice()) takes the bot's
        # voice connection; without it the endpoint points at this HTTP server and joining fails.
        self.voice_endpoint: str | None = None
        self.voice_token: str = secrets.token_hex(8)
        self.voice_server: VoiceServer | None = None
        self.voice_unavailable: str | None = None  # why enable_voice() could not start it
        self._listeners: list[Callable[[str, Message], None]] = []
        self._reaction_listeners: list[Callable[[str, Message, User, str], None]] = []
        self._cond = asyncio.Condition()
        self.bot_token = "sandbox." + secrets.token_urlsafe(24)
        self.second_guild_id: int | None = None

        self.world = WorldFile(Path(world_file)) if world_file is not None else None
        self.world_note: str | None = None  # what happened to a saved world that could not be loaded
        self.world_loaded = False  # True: this run continues a saved world
        self._dirty = False
        self._save_task: asyncio.Task[None] | None = None
        self._save_lock = asyncio.Lock()
        self._flush = asyncio.Event()
        self._new_world(guild_name)
        if self.world is not None:
            self._load_world(guild_name)

    def _new_world(self, guild_name: str = "Sandbox") -> None:
        """A new server with its roles, users (owner, admin, member, the bot, another bot) and
        channels (#general, Voice), all with new ids."""
        self.messages = {}
        self.channels = {}
        self.users = {}
        self.voice_states = {}
        self.application_id = self.ids.next()
        self.guild_id = self.ids.next()
        self.guild_name = guild_name
        everyone = Role(self.guild_id, "@everyone", EVERYONE_PERMISSIONS, 0)
        admin_role = Role(self.ids.next(), "Admins", EVERYONE_PERMISSIONS | MANAGE_GUILD, 1)
        self.roles = {everyone.id: everyone, admin_role.id: admin_role}
        self.owner = self.add_user("owner", roles=[admin_role.id])
        self.admin = self.add_user("admin", roles=[admin_role.id])
        self.member = self.add_user("member")
        self.bot_user = self.add_user("trainer", bot=True)
        self.other_bot = self.add_user("otherbot", bot=True)
        self.text_channel = self.add_channel("general", 0)
        self.voice_channel = self.add_channel("Voice", 2)

    # ----------------------------------------------------------------- state helpers
    def add_user(self, name: str, *, bot: bool = False, roles: list[int] | None = None,
                 in_guild: bool = True) -> User:
        user = User(self.ids.next(), name, bot=bot, roles=list(roles or []), in_guild=in_guild)
        self.users[user.id] = user
        self._changed()
        return user

    def add_channel(self, name: str, type_: int, guild_id: int | None = None, *,
                    overwrites: list[dict[str, Any]] | None = None) -> Channel:
        """A channel (0 text, 2 voice); ``overwrites`` as Discord's, e.g. ``[{"id": sandbox.guild_id,
        "deny": CONNECT}]`` locks it for @everyone. Add channels before the bot logs in."""
        channel = Channel(self.ids.next(), name, type_, guild_id or self.guild_id, position=len(self.channels),
                          overwrites=list(overwrites or []))
        self.channels[channel.id] = channel
        self._changed()
        return channel

    def user_named(self, name: str) -> User:
        for user in self.users.values():
            if user.name == name:
                return user
        raise KeyError(name)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    def guild_payload(self) -> dict[str, Any]:
        members = [u for u in self.users.values() if u.in_guild]
        return {
            "id": str(self.guild_id), "name": self.guild_name, "icon": None, "splash": None,
            "discovery_splash": None, "owner_id": str(self.owner.id), "afk_channel_id": None,
            "afk_timeout": 300, "verification_level": 0, "default_message_notifications": 0,
            "explicit_content_filter": 0, "roles": [r.payload() for r in self.roles.values()],
            "emojis": [], "stickers": [], "features": [], "mfa_level": 0, "application_id": None,
            "system_channel_id": None, "system_channel_flags": 0, "rules_channel_id": None,
            "max_members": 500000, "vanity_url_code": None, "description": None, "banner": None,
            "premium_tier": 0, "premium_subscription_count": 0, "preferred_locale": "en-US",
            "public_updates_channel_id": None, "nsfw_level": 0, "premium_progress_bar_enabled": False,
            "joined_at": _iso(), "large": False, "unavailable": False, "member_count": len(members),
            "voice_states": [self._voice_state_payload(uid, cid, with_member=False)
                             for uid, cid in self.voice_states.items()],
            "members": [u.member_payload() for u in members],
            "channels": [c.payload() for c in self.channels.values() if c.guild_id == self.guild_id and c.type != 1],
            "threads": [], "presences": [], "stage_instances": [], "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def message_payload(self, msg: Message, *, with_reference: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(msg.id), "channel_id": str(msg.channel_id), "author": msg.author.payload(),
            "content": msg.content, "timestamp": _iso(msg.timestamp),
            "edited_timestamp": _iso(msg.edited) if msg.edited else None, "tts": False,
            "mention_everyone": msg.mention_everyone, "mentions": [], "mention_roles": [str(r) for r in msg.mention_roles],
            "attachments": [a.payload() for a in msg.attachments], "embeds": msg.embeds,
            "pinned": False, "type": 19 if msg.reference_id else 0, "flags": msg.flags, "components": [],
        }
        if msg.guild_id:
            data["guild_id"] = str(msg.guild_id)
            data["member"] = msg.author.member_payload(with_user=False)
        if msg.reactions:  # Discord leaves the key out when there are none
            data["reactions"] = [self._reaction_payload(emoji, users) for emoji, users in msg.reactions.items()]
        for user_id in msg.mentions:
            user = self.users[user_id]
            mention = user.payload()
            if msg.guild_id and user.in_guild:  # Discord adds the partial member in servers
                mention["member"] = user.member_payload(with_user=False)
            data["mentions"].append(mention)
        if msg.reference_id:
            data["message_reference"] = {
                "type": 0, "message_id": str(msg.reference_id), "channel_id": str(msg.channel_id),
                **({"guild_id": str(msg.guild_id)} if msg.guild_id else {}),
            }
            ref = self.messages.get(msg.reference_id)
            if with_reference:
                data["referenced_message"] = (
                    self.message_payload(ref, with_reference=False) if ref and not ref.deleted else None
                )
        return data

    # ----------------------------------------------------------------- permissions and mentions
    def permissions_for(self, user: User, channel: Channel) -> int:
        """``user``'s permissions in ``channel``, computed as Discord does: @everyone and the user's
        roles, all for the owner and Administrator, then the channel's @everyone, role and member
        overwrites in that order. In a DM its two participants can talk, nobody else can see it."""
        if channel.type == 1:
            if channel.recipient is not None and user.id in (channel.recipient.id, self.bot_user.id):
                return (VIEW_CHANNEL | SEND_MESSAGES | READ_MESSAGE_HISTORY | ADD_REACTIONS | ATTACH_FILES
                        | EMBED_LINKS)
            return 0
        if not user.in_guild:
            return 0
        if user.id == self.owner.id:
            return ALL_PERMISSIONS
        perms = self.roles[self.guild_id].permissions
        for role_id in user.roles:
            if role_id in self.roles:
                perms |= self.roles[role_id].permissions
        if perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        roles_allow = roles_deny = 0
        member_overwrite: dict[str, Any] | None = None
        for ow in channel.overwrites:
            target, kind = int(ow["id"]), ow.get("type", 0)
            if kind == 0 and target == self.guild_id:
                perms = (perms & ~int(ow.get("deny", 0))) | int(ow.get("allow", 0))
            elif kind == 0 and target in user.roles:
                roles_allow |= int(ow.get("allow", 0))
                roles_deny |= int(ow.get("deny", 0))
            elif kind == 1 and target == user.id:
                member_overwrite = ow
        perms = (perms & ~roles_deny) | roles_allow
        if member_overwrite is not None:
            perms = (perms & ~int(member_overwrite.get("deny", 0))) | int(member_overwrite.get("allow", 0))
        return perms

    def can_see(self, user: User, channel: Channel) -> bool:
        return bool(self.permissions_for(user, channel) & VIEW_CHANNEL)

    @staticmethod
    def _allowed_mentions_error(allowed: Any) -> dict[str, Any] | None:
        """Discord's 400 for an allowed_mentions object it refuses, or None when it is valid."""
        def invalid(code: str, message: str) -> dict[str, Any]:
            return {"message": "Invalid Form Body", "code": 50035,
                    "errors": {"allowed_mentions": {"_errors": [{"code": code, "message": message}]}}}

        if not isinstance(allowed, dict):
            return invalid("MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType")
        parse = allowed.get("parse") or []
        if not isinstance(parse, list) or any(p not in ALLOWED_PARSE for p in parse):
            return invalid("BASE_TYPE_CHOICES", f"Value must be one of {set(ALLOWED_PARSE)}.")
        for kind in ("users", "roles"):
            ids = allowed.get(kind) or []
            if kind in parse and ids:
                return invalid("MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                               f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.')
            if not isinstance(ids, list) or len(ids) > 100 or not all(str(i).isdigit() for i in ids):
                return invalid("BASE_TYPE_MAX_LENGTH", f"{kind}: must be at most 100 snowflakes.")
        return None

    def _resolve_mentions(self, msg: Message, allowed: dict[str, Any] | None) -> None:
        """Set who ``msg`` mentions and pings, as Discord does for its current content.

        No ``allowed_mentions`` (``None``): every mention in the content counts and a reply pings
        the replied-to author. Given: only the ``parse`` kinds and the listed ``users``/``roles``
        that the content also mentions (no phantom pings), and the replied-to author only with
        ``replied_user``. Roles ping only when mentionable or the author may Mention Everyone;
        @everyone/@here only with Mention Everyone. Only people who can see the channel are
        pinged, never the author."""
        channel = self.channels[msg.channel_id]
        author = msg.author
        if allowed is None:
            parse, users_ok, roles_ok, replied = set(ALLOWED_PARSE), set(), set(), True
        else:
            parse = set(allowed.get("parse") or ())
            users_ok = {int(u) for u in allowed.get("users") or ()}
            roles_ok = {int(r) for r in allowed.get("roles") or ()}
            replied = bool(allowed.get("replied_user", False))
        in_guild = channel.type != 1
        may_mention_everyone = bool(self.permissions_for(author, channel) & MENTION_EVERYONE) if in_guild else False
        mentions: list[int] = []
        for match in USER_MENTION.finditer(msg.content):
            user_id = int(match.group(1))
            if user_id in self.users and user_id not in mentions and ("users" in parse or user_id in users_ok):
                mentions.append(user_id)
        roles: list[int] = []
        if in_guild:
            for match in ROLE_MENTION.finditer(msg.content):
                role = self.roles.get(int(match.group(1)))
                if (role is not None and role.id != self.guild_id and role.id not in roles
                        and ("roles" in parse or role.id in roles_ok)
                        and (role.mentionable or may_mention_everyone)):
                    roles.append(role.id)
        everyone = (in_guild and "everyone" in parse and may_mention_everyone
                    and EVERYONE_MENTION.search(msg.content) is not None)
        if msg.reference_id and replied:
            ref = self.messages.get(msg.reference_id)
            if ref is not None and not ref.deleted and ref.author.id != author.id and ref.author.id not in mentions:
                mentions.append(ref.author.id)
        audience = [u for u in self.users.values() if self.can_see(u, channel)]
        pinged = {u.id for u in audience if everyone or u.id in mentions or set(u.roles) & set(roles)}
        pinged.discard(author.id)
        msg.mentions, msg.mention_roles, msg.mention_everyone = mentions, roles, everyone
        msg.notifies = pinged
        msg.pinged = pinged - msg.notified
        msg.notified |= pinged

    def notified(self, message_id: int) -> set[int]:
        """Ids of everyone message ``message_id`` pinged (at creation, or newly mentioned by an edit)."""
        return set(self.messages[message_id].notified)

    def _voice_state_payload(self, user_id: int, channel_id: int | None, with_member: bool = True) -> dict[str, Any]:
        user = self.users[user_id]
        data: dict[str, Any] = {
            "guild_id": str(self.guild_id), "channel_id": str(channel_id) if channel_id else None,
            "user_id": str(user_id), "session_id": f"voice-{user_id}", "deaf": False, "mute": False,
            "self_deaf": False, "self_mute": False, "self_video": False, "suppress": False,
            "request_to_speak_timestamp": None,
        }
        if with_member:
            data["member"] = user.member_payload()
        return data

    # ----------------------------------------------------------------- observing
    def add_listener(self, callback: Callable[[str, Message], None]) -> None:
        """``callback(event, message)`` for every message created/updated/deleted (any author)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[str, Message], None]) -> None:
        self._listeners.remove(callback)

    async def _notify(self, event: str, msg: Message) -> None:
        for callback in list(self._listeners):
            callback(event, msg)
        async with self._cond:
            self._cond.notify_all()

    def bot_messages(self, channel_id: int | None = None, *, after: int = 0) -> list[Message]:
        return [
            m for m in self.messages.values()
            if m.author.id == self.bot_user.id and m.id > after and not m.deleted
            and (channel_id is None or m.channel_id == channel_id)
        ]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until ``predicate()`` returns something truthy; return it."""
        async with self._cond:
            try:
                return await asyncio.wait_for(self._cond.wait_for(predicate), timeout)
            except asyncio.TimeoutError:
                raise AssertionError(f"sandbox: condition not met within {timeout}s") from None

    async def wait_for_bot_message(self, channel_id: int | None = None, *, after: int = 0,
                                   count: int = 1, timeout: float = 10.0) -> list[Message]:
        def ready() -> list[Message] | None:
            found = self.bot_messages(channel_id, after=after)
            return found if len(found) >= count else None
        return await self.wait_for(ready, timeout)

    async def wait_for_heartbeats(self, count: int, timeout: float = 10.0) -> None:
        """Wait until the bot has sent ``count`` heartbeats in all (see :attr:`heartbeats`)."""
        await self.wait_for(lambda: len(self.heartbeats) >= count, timeout)

    # ----------------------------------------------------------------- acting as users
    async def post_message(
        self, author: User | str, content: str = "", *, channel: Channel | int | None = None,
        attachments: list[tuple[str, bytes, str | None]] | None = None, reply_to: int | None = None,
        voice_message: bool = False, duration_secs: float | None = None, ping_reply: bool = True,
    ) -> Message:
        """Post a message as a user; dispatches MESSAGE_CREATE. A reply pings the replied-to
        author as Discord's client does by default; ``ping_reply=False`` is its "@ OFF"."""
        if isinstance(author, str):
            author = self.user_named(author)
        channel_obj = self._channel(channel)
        msg_id = self.ids.next()
        files = [
            self._store_attachment(channel_obj.id, name, data, ctype,
                                   duration_secs if voice_message else None)
            for name, data, ctype in (attachments or [])
        ]
        msg = Message(msg_id, channel_obj.id, channel_obj.guild_id, author, content, files,
                      reference_id=reply_to, flags=IS_VOICE_MESSAGE if voice_message else 0,
                      allowed_mentions=None if ping_reply or not reply_to else
                      {"parse": list(ALLOWED_PARSE), "replied_user": False})
        await self._create_message(msg)
        return msg

    async def set_voice(self, user: User | str, channel: Channel | int | None) -> None:
        """Move a user into a voice channel (or out with ``None``); dispatches VOICE_STATE_UPDATE."""
        if isinstance(user, str):
            user = self.user_named(user)
        channel_id = self._channel(channel).id if channel is not None else None
        if channel_id is None:
            self.voice_states.pop(user.id, None)
        else:
            self.voice_states[user.id] = channel_id
        await self.dispatch("VOICE_STATE_UPDATE", self._voice_state_payload(user.id, channel_id))

    def _channel(self, channel: Channel | int | None) -> Channel:
        if channel is None:
            return self.text_channel
        if isinstance(channel, Channel):
            return channel
        return self.channels[channel]

    def _store_attachment(self, channel_id: int, name: str, data: bytes, ctype: str | None,
                          duration: float | None) -> Attachment:
        att_id = self.ids.next()
        url = f"{self.base_url}/attachments/{channel_id}/{att_id}/{name}"
        return Attachment(att_id, name, data, ctype, url, duration)

    async def _create_message(self, msg: Message) -> None:
        self._resolve_mentions(msg, msg.allowed_mentions)
        self.messages[msg.id] = msg
        await self.dispatch("MESSAGE_CREATE", self.message_payload(msg))
        await self._notify("create", msg)
        await self._save_attachments(msg)
        self._changed()

    # ----------------------------------------------------------------- gateway
    async def dispatch(self, event: str, data: dict[str, Any], *, intent: int = 0) -> None:
        """Send a gateway event to every bot session (``intent``: only those that identified with it)."""
        for session in list(self.sessions.values()):
            if intent and not session.intents & intent:
                continue
            session.seq += 1
            payload = {"op": OP_DISPATCH, "t": event, "s": session.seq, "d": data}
            session.backlog.append(payload)
            del session.backlog[:-1000]
            if session.ws is not None and not session.ws.closed:
                try:
                    await session.ws.send_str(json.dumps(payload))
                except ConnectionResetError:
                    session.ws = None

    async def drop_bot_connections(self, code: int = 4000) -> None:
        """Close every bot websocket with a resumable code (tests: disconnect + RESUME)."""
        for session in self.sessions.values():
            if session.ws is not None and not session.ws.closed:
                ws, session.ws = session.ws, None
                await ws.close(code=code, message=b"sandbox: dropped")

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": OP_HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms},
                                      "s": None, "t": None}))
        session: _Session | None = None
        async for raw in ws:
            if raw.type != WSMsgType.TEXT:
                continue
            msg = json.loads(raw.data)
            op, d = msg.get("op"), msg.get("d")
            if op == OP_HEARTBEAT:
                # Only a client heartbeat is acknowledged, as Discord does, after the round trip.
                self.heartbeats.append((time.monotonic(), d))
                self._spawn(self._heartbeat_ack(ws))
                async with self._cond:
                    self._cond.notify_all()
            elif op == OP_IDENTIFY:
                if d.get("token") != self.bot_token:
                    await ws.close(code=4004, message=b"Authentication failed.")
                    break
                self.identify_count += 1
                session = _Session(secrets.token_hex(16), self.bot_user)
                session.intents = int(d.get("intents") or 0)
                session.ws = ws
                self.sessions[session.id] = session
                ready = {
                    "v": 10, "user": self.bot_user.payload(), "guilds": [{"id": str(self.guild_id), "unavailable": True}],
                    "session_id": session.id, "resume_gateway_url": self.gateway_url, "private_channels": [],
                    "relationships": [], "application": {"id": str(self.application_id), "flags": 0},
                    "session_type": "normal", "shard": [0, 1],
                }
                await self._send_event(session, "READY", ready)
                await self._send_event(session, "GUILD_CREATE", self.guild_payload())
                async with self._cond:  # wait_for(): a bot (re)joined
                    self._cond.notify_all()
            elif op == OP_RESUME:
                session = self.sessions.get(d.get("session_id", ""))
                if session is None or d.get("token") != self.bot_token:
                    await ws.send_str(json.dumps({"op": OP_INVALID_SESSION, "d": False, "s": None, "t": None}))
                    continue
                self.resume_count += 1
                session.ws = ws
                for payload in session.backlog:
                    if payload["s"] > int(d.get("seq") or 0):
                        await ws.send_str(json.dumps(payload))
                await self._send_event(session, "RESUMED", {})
            elif op == OP_VOICE_STATE:
                await self._bot_voice_state(d)
            elif op in (OP_PRESENCE, OP_REQUEST_MEMBERS):
                pass
            else:
                self.unimplemented.append(f"gateway op {op}")
        if session is not None and session.ws is ws:
            session.ws = None
        return ws

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _heartbeat_ack(self, ws: web.WebSocketResponse) -> None:
        await asyncio.sleep(self.heartbeat_ack_delay)
        if not ws.closed:
            try:
                await ws.send_str(json.dumps({"op": OP_HEARTBEAT_ACK, "d": None, "s": None, "t": None}))
            except ConnectionResetError:
                pass

    async def request_heartbeat(self) -> None:
        """Ask every connected bot for an immediate heartbeat (op 1 from the server), as Discord may."""
        for session in self.sessions.values():
            if session.ws is not None and not session.ws.closed:
                await session.ws.send_str(json.dumps({"op": OP_HEARTBEAT, "d": None, "s": None, "t": None}))

    async def _send_event(self, session: _Session, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        payload = {"op": OP_DISPATCH, "t": event, "s": session.seq, "d": data}
        session.backlog.append(payload)
        assert session.ws is not None
        await session.ws.send_str(json.dumps(payload))

    async def _bot_voice_state(self, d: dict[str, Any]) -> None:
        """The bot asked to join/leave voice (op 4): answer as Discord does."""
        self.bot_voice_requests.append(d)
        channel_id = int(d["channel_id"]) if d.get("channel_id") else None
        if channel_id is None:
            self.voice_states.pop(self.bot_user.id, None)
        else:
            self.voice_states[self.bot_user.id] = channel_id
        state = self._voice_state_payload(self.bot_user.id, channel_id)
        state["session_id"] = f"bot-voice-{self.guild_id}"
        await self.dispatch("VOICE_STATE_UPDATE", state)
        if channel_id is not None:
            await self.dispatch("VOICE_SERVER_UPDATE", {
                "token": self.voice_token, "guild_id": str(self.guild_id),
                "endpoint": self.voice_endpoint or f"{self.host}:{self.port}",
            })

    # ----------------------------------------------------------------- REST
    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.bot_token}"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path.startswith(API_PREFIX) and not self._authorized(request):
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        return await handler(request)

    async def _unknown(self, request: web.Request) -> web.Response:
        route = f"{request.method} {request.path}"
        log.warning("sandbox: unimplemented route %s", route)
        self.unimplemented.append(route)
        return _json({"message": "404: Not Found", "code": 0}, 404)

    async def _me(self, request: web.Request) -> web.Response:
        return _json(self.bot_user.payload())

    async def _application(self, request: web.Request) -> web.Response:
        return _json({
            "id": str(self.application_id), "name": "trainer", "icon": None, "description": "",
            "bot_public": False, "bot_require_code_grant": False, "verify_key": "0" * 64, "flags": 0,
            "owner": self.owner.payload(), "team": None, "summary": "", "rpc_origins": [],
            "approximate_guild_count": 1, "redirect_uris": [], "interactions_endpoint_url": None,
            "tags": [], "install_params": None, "custom_install_url": None, "integration_types_config": {},
        })

    async def _gateway_info(self, request: web.Request) -> web.Response:
        data: dict[str, Any] = {"url": self.gateway_url}
        if request.path.endswith("/bot"):
            data.update(shards=1, session_start_limit={"total": 1000, "remaining": 1000,
                                                       "reset_after": 0, "max_concurrency": 1})
        return _json(data)

    def _get_channel(self, request: web.Request) -> Channel | None:
        return self.channels.get(int(request.match_info["channel_id"]))

    def _get_message(self, request: web.Request) -> Message | None:
        msg = self.messages.get(int(request.match_info["message_id"]))
        if msg is None or msg.deleted or msg.channel_id != int(request.match_info["channel_id"]):
            return None
        return msg

    async def _get_channel_route(self, request: web.Request) -> web.Response:
        channel = self._get_channel(request)
        if channel is None:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        return _json(channel.payload())

    async def _read_message_body(self, request: web.Request, channel_id: int) -> tuple[dict[str, Any], list[Attachment]]:
        files: list[Attachment] = []
        if request.content_type.startswith("multipart/"):
            payload: dict[str, Any] = {}
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                elif part.name and part.name.startswith("files["):
                    data = bytes(await part.read())
                    ctype = part.headers.get("Content-Type")
                    files.append(self._store_attachment(channel_id, part.filename or "file", data, ctype, None))
            return payload, files
        body = await request.read()
        return (json.loads(body) if body else {}), files

    async def _send_message(self, request: web.Request) -> web.Response:
        channel = self._get_channel(request)
        if channel is None:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        payload, files = await self._read_message_body(request, channel.id)
        content = payload.get("content") or ""
        if len(content) > 2000:
            return _json({"message": "Invalid Form Body", "code": 50035,
                          "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH",
                                                               "message": "Must be 2000 or fewer in length."}]}}}, 400)
        if not content and not files and not payload.get("embeds"):
            return _json({"message": "Cannot send an empty message", "code": 50006}, 400)
        allowed = payload.get("allowed_mentions")
        if allowed is not None and (error := self._allowed_mentions_error(allowed)):
            return _json(error, 400)
        ref = payload.get("message_reference") or {}
        ref_id = int(ref["message_id"]) if ref.get("message_id") else None
        msg = Message(self.ids.next(), channel.id, channel.guild_id, self.bot_user, content, files,
                      embeds=payload.get("embeds") or [], reference_id=ref_id, allowed_mentions=allowed)
        await self._create_message(msg)
        return _json(self.message_payload(msg))

    async def _edit_message(self, request: web.Request) -> web.Response:
        msg = self._get_message(request)
        if msg is None:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        if msg.author.id != self.bot_user.id:
            return _json({"message": "Cannot edit a message authored by another user", "code": 50005}, 403)
        payload, files = await self._read_message_body(request, msg.channel_id)
        allowed = payload.get("allowed_mentions")
        if allowed is not None and (error := self._allowed_mentions_error(allowed)):
            return _json(error, 400)
        if "content" in payload:
            msg.content = payload["content"] or ""
        if "embeds" in payload:
            msg.embeds = payload["embeds"] or []
        if "attachments" in payload:
            keep = {str(a.get("id")) for a in payload["attachments"]}
            msg.attachments = [a for a in msg.attachments if str(a.id) in keep]
        msg.attachments.extend(files)
        if "content" in payload or "allowed_mentions" in payload:
            # Discord rebuilds the mentions from the new content with this request's
            # allowed_mentions, or the defaults when it has none (not the original request's).
            msg.allowed_mentions = allowed
            self._resolve_mentions(msg, allowed)
        else:
            msg.pinged = set()
        msg.edited = time.time()
        msg.edits += 1
        data = self.message_payload(msg)
        await self.dispatch("MESSAGE_UPDATE", data)
        await self._notify("update", msg)
        await self._save_attachments(msg)
        self._changed()
        return _json(data)

    async def _delete_message(self, request: web.Request) -> web.Response:
        msg = self._get_message(request)
        if msg is None:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        msg.deleted = True
        await self.dispatch("MESSAGE_DELETE", {"id": str(msg.id), "channel_id": str(msg.channel_id),
                                               **({"guild_id": str(msg.guild_id)} if msg.guild_id else {})})
        await self._notify("delete", msg)
        self._changed()
        return web.Response(status=204)

    async def _fetch_message(self, request: web.Request) -> web.Response:
        msg = self._get_message(request)
        if msg is None:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        return _json(self.message_payload(msg))

    async def _history(self, request: web.Request) -> web.Response:
        channel = self._get_channel(request)
        if channel is None:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        limit = min(int(request.query.get("limit", 50)), 100)
        before = int(request.query["before"]) if "before" in request.query else None
        after = int(request.query["after"]) if "after" in request.query else None
        found = [m for m in self.messages.values() if m.channel_id == channel.id and not m.deleted
                 and (before is None or m.id < before) and (after is None or m.id > after)]
        # The page nearest to `after` (or, without it, the newest), listed newest first either
        # way as Discord does (discord.py reverses an `after` page itself).
        found.sort(key=lambda m: m.id, reverse=after is None)
        page = sorted(found[:limit], key=lambda m: m.id, reverse=True)
        return _json([self.message_payload(m) for m in page])

    async def _typing(self, request: web.Request) -> web.Response:
        channel = self._get_channel(request)
        if channel is None:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        self.typing.append(channel.id)
        return web.Response(status=204)

    # ----------------------------------------------------------------- reactions
    def _reaction_payload(self, emoji: str, users: list[int]) -> dict[str, Any]:
        return {
            "emoji": {"id": None, "name": emoji}, "count": len(users),
            "count_details": {"burst": 0, "normal": len(users)}, "burst_colors": [],
            "me_burst": False, "me": self.bot_user.id in users,
        }

    def _reaction_event(self, msg: Message, user: User, emoji: str, added: bool) -> dict[str, Any]:
        """MESSAGE_REACTION_ADD / _REMOVE as Discord sends them (the add carries the member,
        the message's author and burst colours; the remove does not)."""
        data: dict[str, Any] = {
            "user_id": str(user.id), "type": 0, "message_id": str(msg.id), "emoji": {"id": None, "name": emoji},
            "channel_id": str(msg.channel_id), "burst": False,
        }
        if msg.guild_id:
            data["guild_id"] = str(msg.guild_id)
        if added:
            data["message_author_id"] = str(msg.author.id)
            data["burst_colors"] = []
            if msg.guild_id and user.in_guild:
                data["member"] = user.member_payload()
        return data

    def _reaction_intent(self, msg: Message) -> int:
        return GUILD_MESSAGE_REACTIONS if msg.guild_id else DIRECT_MESSAGE_REACTIONS

    def _message_for_reaction(self, channel_id: int, message_id: int) -> Message:
        msg = self.messages.get(message_id)
        if msg is None or msg.deleted or msg.channel_id != channel_id:
            raise ReactionError("Unknown Message", 10008, 404)
        return msg

    async def react(self, user: User | str, channel_id: int, message_id: int, emoji: str) -> bool:
        """``user`` reacts to a message, as Discord checks and announces it (MESSAGE_REACTION_ADD).

        Returns False when that reaction was already there (Discord does nothing then); raises
        :class:`ReactionError` for an unknown message or emoji, a channel the user cannot see, a
        new emoji without Add Reactions, or a 21st distinct emoji."""
        if isinstance(user, str):
            user = self.user_named(user)
        msg = self._message_for_reaction(channel_id, message_id)
        emoji = parse_emoji(emoji)
        channel = self.channels[msg.channel_id]
        perms = self.permissions_for(user, channel)
        if not perms & VIEW_CHANNEL or not perms & READ_MESSAGE_HISTORY:
            raise ReactionError("Missing Access", 50001, 403)
        users = msg.reactions.get(emoji)
        if users is None:
            if not perms & ADD_REACTIONS:
                raise ReactionError("Missing Permissions", 50013, 403)
            if len(msg.reactions) >= MAX_REACTIONS:
                raise ReactionError(f"Maximum number of reactions reached ({MAX_REACTIONS})", 30010)
            users = msg.reactions[emoji] = []
        if user.id in users:
            return False
        users.append(user.id)
        await self.dispatch("MESSAGE_REACTION_ADD", self._reaction_event(msg, user, emoji, True),
                            intent=self._reaction_intent(msg))
        await self._notify_reaction("add", msg, user, emoji)
        return True

    async def unreact(self, user: User | str, channel_id: int, message_id: int, emoji: str) -> bool:
        """Take ``user``'s reaction off (MESSAGE_REACTION_REMOVE); False when there was none."""
        if isinstance(user, str):
            user = self.user_named(user)
        msg = self._message_for_reaction(channel_id, message_id)
        emoji = parse_emoji(emoji)
        users = msg.reactions.get(emoji)
        if users is None or user.id not in users:
            return False
        users.remove(user.id)
        if not users:
            del msg.reactions[emoji]
        await self.dispatch("MESSAGE_REACTION_REMOVE", self._reaction_event(msg, user, emoji, False),
                            intent=self._reaction_intent(msg))
        await self._notify_reaction("remove", msg, user, emoji)
        return True

    def add_reaction_listener(self, callback: Callable[[str, Message, User, str], None]) -> None:
        """``callback(event, message, user, emoji)`` for every reaction "add" / "remove" (any user),
        and "clear" when the bot clears one emoji (``emoji``) or all of them (``emoji == ""``)."""
        self._reaction_listeners.append(callback)

    async def _notify_reaction(self, event: str, msg: Message, user: User, emoji: str) -> None:
        self._changed()
        for callback in list(self._reaction_listeners):
            callback(event, msg, user, emoji)
        async with self._cond:
            self._cond.notify_all()

    def _route_reaction(self, request: web.Request) -> tuple[Message, str | None]:
        """The message and emoji a reaction route names (Discord's 404/400 as ReactionError)."""
        msg = self._message_for_reaction(int(request.match_info["channel_id"]),
                                         int(request.match_info["message_id"]))
        raw = request.match_info.get("emoji")
        return msg, (parse_emoji(raw) if raw is not None else None)

    def _bot_may_manage(self, msg: Message) -> None:
        if not self.permissions_for(self.bot_user, self.channels[msg.channel_id]) & MANAGE_MESSAGES:
            raise ReactionError("Missing Permissions", 50013, 403)

    async def _reaction_route(self, request: web.Request) -> web.Response:
        """PUT/DELETE .../reactions/{emoji}/@me|{user_id}, GET .../reactions/{emoji},
        DELETE .../reactions[/{emoji}]: what discord.py's add_reaction, remove_reaction,
        Reaction.users(), clear_reaction and clear_reactions call."""
        try:
            msg, emoji = self._route_reaction(request)
            target = request.match_info.get("user")
            if request.method == "PUT":
                assert emoji is not None
                await self.react(self.bot_user, msg.channel_id, msg.id, emoji)
            elif request.method == "GET":
                assert emoji is not None
                return self._reaction_users(request, msg, emoji)
            elif target is not None:
                assert emoji is not None
                user = self.bot_user if target == "@me" else self.users.get(int(target)) if target.isdigit() else None
                if user is None:
                    return _json({"message": "Unknown User", "code": 10013}, 404)
                if user is not self.bot_user:
                    self._bot_may_manage(msg)
                await self.unreact(user, msg.channel_id, msg.id, emoji)
            else:
                self._bot_may_manage(msg)
                await self._clear_reactions(msg, emoji)
        except ReactionError as exc:
            return _json({"message": str(exc), "code": exc.code}, exc.status)
        return web.Response(status=204)

    def _reaction_users(self, request: web.Request, msg: Message, emoji: str) -> web.Response:
        try:
            limit = int(request.query.get("limit", 25))
            after = int(request.query.get("after", 0))
            kind = int(request.query.get("type", 0))
        except ValueError:
            return _json({"message": "Invalid Form Body", "code": 50035}, 400)
        if not 1 <= limit <= 100:
            return _json({"message": "Invalid Form Body", "code": 50035, "errors": {"limit": {"_errors": [
                {"code": "NUMBER_TYPE_MAX", "message": "int value should be less than or equal to 100."}]}}}, 400)
        # Discord lists reactors by user id; burst (super) reactions do not exist here.
        ids = sorted(u for u in msg.reactions.get(emoji, []) if u > after) if kind == 0 else []
        return _json([self.users[u].payload() for u in ids[:limit]])

    async def _clear_reactions(self, msg: Message, emoji: str | None) -> None:
        guild = {"guild_id": str(msg.guild_id)} if msg.guild_id else {}
        where = {"channel_id": str(msg.channel_id), "message_id": str(msg.id), **guild}
        if emoji is None:
            if not msg.reactions:
                return
            msg.reactions.clear()
            await self.dispatch("MESSAGE_REACTION_REMOVE_ALL", where, intent=self._reaction_intent(msg))
        else:
            if msg.reactions.pop(emoji, None) is None:
                return
            await self.dispatch("MESSAGE_REACTION_REMOVE_EMOJI", {**where, "emoji": {"id": None, "name": emoji}},
                                intent=self._reaction_intent(msg))
        await self._notify_reaction("clear", msg, self.bot_user, emoji or "")

    async def _member(self, request: web.Request) -> web.Response:
        user = self.users.get(int(request.match_info["user_id"]))
        if user is None or not user.in_guild:
            return _json({"message": "Unknown Member", "code": 10007}, 404)
        return _json(user.member_payload())

    async def _guild(self, request: web.Request) -> web.Response:
        if int(request.match_info["guild_id"]) != self.guild_id:
            return _json({"message": "Unknown Guild", "code": 10004}, 404)
        data = self.guild_payload()
        for key in ("members", "channels", "voice_states", "presences", "threads"):
            data.pop(key, None)
        return _json(data)

    def dm_channel(self, user: User | str) -> Channel:
        """The DM channel between ``user`` and the bot (created on first use)."""
        if isinstance(user, str):
            user = self.user_named(user)
        for channel in self.channels.values():
            if channel.type == 1 and channel.recipient is user:
                return channel
        channel = Channel(self.ids.next(), "", 1, None, recipient=user)
        self.channels[channel.id] = channel
        self._changed()
        return channel

    async def _dm(self, request: web.Request) -> web.Response:
        body = await request.json()
        user = self.users.get(int(body["recipient_id"]))
        if user is None:
            return _json({"message": "Unknown User", "code": 10013}, 404)
        return _json(self.dm_channel(user).payload())

    async def _cdn(self, request: web.Request) -> web.Response:
        att_id = int(request.match_info["attachment_id"])
        self.downloads.append(att_id)
        for msg in self.messages.values():
            for att in msg.attachments:
                if att.id == att_id:
                    try:
                        body = await att.read()
                    except OSError as exc:  # its file went missing from the world's folder
                        log.warning("sandbox: attachment %s unreadable: %s", att_id, exc)
                        return web.Response(status=404)
                    return web.Response(body=body, content_type=att.content_type or "application/octet-stream")
        return web.Response(status=404)

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=200 * 1024 * 1024)
        p = API_PREFIX
        r = app.router
        r.add_get("/gateway", self._gateway)
        r.add_get(p + "/gateway", self._gateway_info)
        r.add_get(p + "/gateway/bot", self._gateway_info)
        r.add_get(p + "/users/@me", self._me)
        r.add_get(p + "/oauth2/applications/@me", self._application)
        r.add_post(p + "/users/@me/channels", self._dm)
        r.add_get(p + "/guilds/{guild_id}", self._guild)
        r.add_get(p + "/guilds/{guild_id}/members/{user_id}", self._member)
        r.add_get(p + "/channels/{channel_id}", self._get_channel_route)
        r.add_post(p + "/channels/{channel_id}/messages", self._send_message)
        r.add_get(p + "/channels/{channel_id}/messages", self._history)
        r.add_get(p + "/channels/{channel_id}/messages/{message_id}", self._fetch_message)
        r.add_patch(p + "/channels/{channel_id}/messages/{message_id}", self._edit_message)
        r.add_delete(p + "/channels/{channel_id}/messages/{message_id}", self._delete_message)
        r.add_post(p + "/channels/{channel_id}/typing", self._typing)
        reactions = p + "/channels/{channel_id}/messages/{message_id}/reactions"
        r.add_put(reactions + "/{emoji}/@me", self._reaction_route)
        r.add_delete(reactions + "/{emoji}/{user}", self._reaction_route)
        r.add_get(reactions + "/{emoji}", self._reaction_route)
        r.add_delete(reactions + "/{emoji}", self._reaction_route)
        r.add_delete(reactions, self._reaction_route)
        r.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn)
        r.add_route("*", "/{tail:.*}", self._unknown)
        return app

    async def enable_voice(self) -> bool:
        """Start the loopback voice server and route the bot's voice there; False (reason in
        :attr:`voice_unavailable`) when it cannot run here, e.g. without openssl."""
        if self.voice_server is not None:
            return True
        from sandbox.voice import VoiceServer, VoiceUnavailable

        server = VoiceServer(self.host, ack_delay=self.heartbeat_ack_delay)
        try:
            endpoint = await server.start()
        except VoiceUnavailable as exc:
            await server.close()
            self.voice_unavailable = str(exc)
            log.warning("sandbox: voice channels unavailable: %s", exc)
            return False
        self.voice_server = server
        self.voice_endpoint = endpoint
        self.voice_token = server.token
        self.voice_unavailable = None
        return True

    @property
    def voice_ssl_context(self) -> ssl.SSLContext | None:
        """An SSL context trusting the voice server's self-signed certificate (None without voice)."""
        return self.voice_server.client_ssl_context() if self.voice_server is not None else None

    def bot_kwargs(self) -> dict[str, Any]:
        """Extra ``commands.Bot`` arguments for a bot logging in here: trust the voice server.

        Call it inside the running event loop (it makes an aiohttp connector)."""
        ctx = self.voice_ssl_context
        return {"connector": aiohttp.TCPConnector(ssl=ctx)} if ctx is not None else {}

    # ----------------------------------------------------------------- the world on disk
    def _changed(self) -> None:
        """Something in the world changed: save it soon (one write for a burst of changes)."""
        if self.world is None:
            return
        self._dirty = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop yet (set-up before start): start() saves
            return
        if self._save_task is None or self._save_task.done():
            self._save_task = loop.create_task(self._save_soon(), name="sandbox-world-save")

    async def _save_soon(self) -> None:
        while self._dirty:
            try:
                await asyncio.wait_for(self._flush.wait(), SAVE_DELAY)
            except asyncio.TimeoutError:
                pass
            await self.save_world()

    async def save_world(self) -> None:
        """Write the world now (atomically, off the event loop). A write that fails is logged as a
        warning and retried at the next change: the sandbox keeps running either way."""
        if self.world is None:
            return
        async with self._save_lock:
            self._dirty = False
            record = await self._world_record()  # taken on the loop in slices, written in a thread
            try:
                await asyncio.to_thread(self.world.save, record)
            except OSError as exc:
                self._dirty = True
                log.warning("sandbox world: could not save %s: %s", self.world.path, exc)

    async def _save_attachments(self, msg: Message) -> None:
        """Write the bytes of the message's new attachments beside the world, before the world
        that refers to them is saved."""
        if self.world is None:
            return
        world = self.world
        for att in msg.attachments:
            if not att.saved:
                try:
                    await asyncio.to_thread(world.write_blob, att.id, att.data)
                    att.saved = True
                except OSError as exc:
                    log.warning("sandbox world: could not save attachment %s: %s", att.id, exc)

    async def _world_record(self) -> dict[str, Any]:
        """The whole world as JSON-able data (the format :meth:`_restore_world` reads).

        Messages are copied in slices with a yield between them, so a big world does not hold the
        event loop (10,000 messages take about 65 ms in all). A message created or changed while
        this runs has set the dirty flag again and goes into the next save."""
        def message(m: Message) -> dict[str, Any]:
            return {
                "id": m.id, "channel_id": m.channel_id, "guild_id": m.guild_id, "author_id": m.author.id,
                "content": m.content, "embeds": m.embeds, "reference_id": m.reference_id, "flags": m.flags,
                "timestamp": m.timestamp, "edited": m.edited, "deleted": m.deleted, "edits": m.edits,
                "attachments": [{"id": a.id, "filename": a.filename, "content_type": a.content_type,
                                 "size": a.size, "duration_secs": a.duration_secs} for a in m.attachments],
                "mentions": m.mentions, "mention_roles": m.mention_roles, "mention_everyone": m.mention_everyone,
                "notifies": sorted(m.notifies), "notified": sorted(m.notified), "allowed_mentions": m.allowed_mentions,
                "reactions": [[emoji, users] for emoji, users in m.reactions.items()],
            }

        world = {
            "format": FORMAT, "saved_at": _iso(), "last_id": self.ids.last,
            "application_id": self.application_id, "guild_id": self.guild_id, "guild_name": self.guild_name,
            "roles": [{"id": r.id, "name": r.name, "permissions": r.permissions, "position": r.position,
                       "mentionable": r.mentionable} for r in self.roles.values()],
            "users": [{"id": u.id, "name": u.name, "bot": u.bot, "roles": u.roles, "in_guild": u.in_guild,
                       "joined": u.joined} for u in self.users.values()],
            "channels": [{"id": c.id, "name": c.name, "type": c.type, "guild_id": c.guild_id, "position": c.position,
                          "recipient_id": c.recipient.id if c.recipient else None, "overwrites": c.overwrites}
                         for c in self.channels.values()],
            "messages": [],
            "special": {"owner": self.owner.id, "admin": self.admin.id, "member": self.member.id,
                        "bot": self.bot_user.id, "other_bot": self.other_bot.id,
                        "text_channel": self.text_channel.id, "voice_channel": self.voice_channel.id},
        }
        messages = list(self.messages.values())
        for start in range(0, len(messages), 500):
            if start:
                await asyncio.sleep(0)
            world["messages"].extend(message(m) for m in messages[start:start + 500])
        return world

    def _load_world(self, guild_name: str) -> None:
        """Continue the saved world if there is one; set an unusable one aside and keep the new one."""
        assert self.world is not None
        self.world.clean_leftovers()
        reason: str | None = None
        try:
            record = self.world.load()
            if record is None:
                log.info("sandbox world: none at %s yet; a new one begins", self.world.path)
                return
            self._restore_world(record)
            self.world_loaded = True
            log.info("sandbox world: continued from %s (server %s, %d messages)", self.world.path,
                     self.guild_id, len(self.messages))
            return
        except WorldUnreadable as exc:
            reason = str(exc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # JSON that does not hang together
            reason = f"it is damaged ({type(exc).__name__}: {exc})"
        last = self.ids.last
        self._new_world(guild_name)  # the half-restored one is dropped; ids keep increasing
        self.ids.last = max(self.ids.last, last)
        kept = self.world.set_aside()
        self.world_note = (f"The saved sandbox world {self.world.path} could not be loaded: {reason}. "
                           f"A new world (new server) begins"
                           + (f"; the old file is kept as {kept.name}." if kept else "."))
        log.warning("sandbox world: %s", self.world_note)
        self._dirty = True

    def _restore_world(self, record: dict[str, Any]) -> None:
        world = self.world
        assert world is not None
        roles = {int(r["id"]): Role(int(r["id"]), str(r["name"]), int(r["permissions"]), int(r.get("position", 0)),
                                    bool(r.get("mentionable", False))) for r in record["roles"]}
        users = {int(u["id"]): User(int(u["id"]), str(u["name"]), bot=bool(u.get("bot")),
                                    roles=[int(r) for r in u.get("roles", [])], in_guild=bool(u.get("in_guild", True)),
                                    joined=float(u.get("joined") or time.time())) for u in record["users"]}
        channels: dict[int, Channel] = {}
        for c in record["channels"]:
            recipient = users[int(c["recipient_id"])] if c.get("recipient_id") else None
            channels[int(c["id"])] = Channel(
                int(c["id"]), str(c["name"]), int(c["type"]), int(c["guild_id"]) if c.get("guild_id") else None,
                position=int(c.get("position", 0)), recipient=recipient, overwrites=list(c.get("overwrites") or []))
        messages: dict[int, Message] = {}
        for m in record["messages"]:
            channel_id = int(m["channel_id"])
            if channel_id not in channels:
                raise ValueError(f"message {m['id']} is in an unknown channel")
            attachments = [
                Attachment(int(a["id"]), str(a["filename"]), None, a.get("content_type"), "",
                           a.get("duration_secs"), size=int(a.get("size") or 0),
                           loader=lambda att_id=int(a["id"]): world.read_blob(att_id))
                for a in m.get("attachments", [])
            ]
            msg = Message(
                int(m["id"]), channel_id, int(m["guild_id"]) if m.get("guild_id") else None,
                users[int(m["author_id"])], str(m.get("content") or ""), attachments,
                embeds=list(m.get("embeds") or []), reference_id=int(m["reference_id"]) if m.get("reference_id") else None,
                flags=int(m.get("flags", 0)), timestamp=float(m["timestamp"]),
                edited=float(m["edited"]) if m.get("edited") else None, deleted=bool(m.get("deleted")),
                edits=int(m.get("edits", 0)), mentions=[int(u) for u in m.get("mentions", [])],
                mention_roles=[int(r) for r in m.get("mention_roles", [])],
                mention_everyone=bool(m.get("mention_everyone")),
                notifies={int(u) for u in m.get("notifies", [])}, notified={int(u) for u in m.get("notified", [])},
                allowed_mentions=m.get("allowed_mentions"),
                reactions={str(emoji): [int(u) for u in who] for emoji, who in m.get("reactions", [])},
            )
            messages[msg.id] = msg
        special = record["special"]
        guild_id = int(record["guild_id"])
        if guild_id not in roles:
            raise ValueError("the server has no @everyone role")
        # Everything read: now replace the new world with the saved one.
        self.application_id, self.guild_id = int(record["application_id"]), guild_id
        self.guild_name = str(record.get("guild_name") or self.guild_name)
        self.roles, self.users, self.channels, self.messages = roles, users, channels, messages
        self.voice_states = {}
        self.owner, self.admin, self.member = (users[int(special[k])] for k in ("owner", "admin", "member"))
        self.bot_user, self.other_bot = users[int(special["bot"])], users[int(special["other_bot"])]
        self.text_channel = channels[int(special["text_channel"])]
        self.voice_channel = channels[int(special["voice_channel"])]
        highest = max([int(record.get("last_id") or 0), *users, *channels, *messages, *roles,
                       *(a.id for m in messages.values() for a in m.attachments)])
        self.ids.last = max(self.ids.last, highest)

    async def reset_world(self) -> None:
        """Begin a new world: new server, roles, channels, users and ids, no messages. The bot's
        session is invalidated as Discord does (op 9, not resumable): it identifies again and sees
        only the new server, as if it had been invited to another one. Saved at once."""
        if self.voice_states.pop(self.bot_user.id, None) is not None:  # out of the old world's voice first
            state = self._voice_state_payload(self.bot_user.id, None)
            state["session_id"] = f"bot-voice-{self.guild_id}"
            await self.dispatch("VOICE_STATE_UPDATE", state)
            if self.voice_server is not None:  # and its call ends, as Discord ends it (4014)
                await self.voice_server.disconnect_all(4014)
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            if session.ws is not None and not session.ws.closed:
                try:
                    await session.ws.send_str(json.dumps({"op": OP_INVALID_SESSION, "d": False, "s": None, "t": None}))
                except ConnectionResetError:
                    pass
        self._new_world(self.guild_name)
        if self.world is not None:
            await asyncio.to_thread(self.world.remove_blobs)
            self.world_note = None
            self.world_loaded = False
            await self.save_world()
        log.info("sandbox: a new world begins (server %s)", self.guild_id)

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, voice: bool = False) -> "Sandbox":
        """Listen on ``host:port`` (0: any free port); ``voice=True`` also runs the voice server."""
        self.host = host
        self._runner = web.AppRunner(self.make_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        for msg in self.messages.values():  # attachment urls embed the port
            for att in msg.attachments:
                att.url = f"{self.base_url}/attachments/{msg.channel_id}/{att.id}/{att.filename}"
        log.info("sandbox listening on %s", self.base_url)
        if self.world is not None and (self._dirty or not self.world_loaded):
            await self.save_world()  # a new world is on disk from the first start
        if voice:
            await self.enable_voice()
        return self

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for session in self.sessions.values():
            if session.ws is not None and not session.ws.closed:
                await session.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.voice_server is not None:
            await self.voice_server.close()
            self.voice_server = None
        if self._save_task is not None and not self._save_task.done():
            self._flush.set()  # write what is pending now rather than after SAVE_DELAY
            await self._save_task
            self._flush.clear()
        if self._dirty:
            await self.save_world()
