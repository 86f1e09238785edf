"""The sandbox's world: its objects (the servers, roles, users and members, channels, messages and
their attachments), Discord-style ids, the payloads Discord sends for them, permissions and mentions.

:class:`State` holds one world. It does no I/O: :mod:`sandbox.rest` and :mod:`sandbox.gateway` serve
it, :class:`sandbox.world.WorldStore` keeps it on disk and :class:`sandbox.server.Sandbox` puts them
together. It calls :attr:`State.on_change` whenever something in it changed.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from sandbox.appcommands import CommandRegistry
from sandbox.payloads import (
    AllowedMentionsPayload,
    AllowedMentionType,
    AttachmentPayload,
    ChannelPayload,
    ComponentPayload,
    DMChannelPayload,
    EmbedPayload,
    ErrorPayload,
    GuildChannelPayload,
    GuildPayload,
    MemberPayload,
    MessageInteractionMetadataPayload,
    MessagePayload,
    MessageReferencePayload,
    Overwrite,
    ReactionPayload,
    RolePayload,
    ThreadChannelPayload,
    ThreadMetadataPayload,
    UserMentionPayload,
    UserPayload,
    VoiceStatePayload,
)

DISCORD_EPOCH_MS = 1420070400000

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
MANAGE_THREADS = 1 << 34
MENTION_EVERYONE = 1 << 17
CREATE_PUBLIC_THREADS = 1 << 35
CREATE_PRIVATE_THREADS = 1 << 36
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 53) - 1
EVERYONE_PERMISSIONS = (
    ADD_REACTIONS | VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY
    | CONNECT | SPEAK | USE_VAD | CREATE_PUBLIC_THREADS | CREATE_PRIVATE_THREADS | SEND_MESSAGES_IN_THREADS
)

# Channel types (https://discord.com/developers/docs/resources/channel#channel-object-channel-types).
GUILD_TEXT, DM, GUILD_VOICE = 0, 1, 2
ANNOUNCEMENT_THREAD, PUBLIC_THREAD, PRIVATE_THREAD = 10, 11, 12
THREAD_TYPES = (ANNOUNCEMENT_THREAD, PUBLIC_THREAD, PRIVATE_THREAD)

# Message flags.
SUPPRESS_EMBEDS = 1 << 2
EPHEMERAL = 1 << 6
LOADING = 1 << 7  # a deferred interaction response: "trainer is thinking..."
SUPPRESS_NOTIFICATIONS = 1 << 12
IS_VOICE_MESSAGE = 1 << 13
IS_COMPONENTS_V2 = 1 << 15

# Mentions in message content, as Discord's server parses them (it ignores markdown).
USER_MENTION = re.compile(r"<@!?(\d{15,21})>")
ROLE_MENTION = re.compile(r"<@&(\d{15,21})>")
EVERYONE_MENTION = re.compile(r"@(everyone|here)")
ALLOWED_PARSE: tuple[AllowedMentionType, ...] = ("users", "roles", "everyone")


def iso_time(ts: float | None = None) -> str:
    return datetime.fromtimestamp(ts if ts is not None else time.time(), timezone.utc).isoformat()


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard that gets a server's events, as Discord computes it (DMs go to shard 0)."""
    return (guild_id >> 22) % shard_count


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

    def next_on_shard(self, shard_id: int, shard_count: int) -> int:
        """The next id of a server on shard ``shard_id`` of ``shard_count`` (see :func:`shard_of`):
        its timestamp moves at most ``shard_count - 1`` milliseconds ahead."""
        if not 0 <= shard_id < shard_count:
            raise ValueError(f"no shard {shard_id} of {shard_count}")
        candidate = self.next()
        ms = candidate >> 22
        ms += (shard_id - ms) % shard_count
        self.last = max(candidate, ms << 22)
        return self.last


@dataclass
class User:
    id: int
    name: str
    bot: bool = False
    roles: list[int] = field(default_factory=list)
    in_guild: bool = True  # False: a Discord user who is a member of none of the sandbox's servers
    joined: float = field(default_factory=time.time)
    left: set[int] = field(default_factory=set)  # servers this user is not (or no longer) a member of

    def payload(self) -> UserPayload:
        return {
            "id": str(self.id), "username": self.name, "discriminator": "0", "global_name": self.name,
            "avatar": None, "bot": self.bot, "public_flags": 0, "flags": 0,
        }

    def member_payload(self, with_user: bool = True, roles: list[int] | None = None) -> MemberPayload:
        """As a member of a server whose roles are ``roles`` (None: all the user's roles)."""
        data: MemberPayload = {
            "roles": [str(r) for r in (self.roles if roles is None else roles)], "joined_at": iso_time(self.joined),
            "deaf": False, "mute": False, "flags": 0, "nick": None, "avatar": None, "premium_since": None, "pending": False,
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

    def payload(self) -> AttachmentPayload:
        data: AttachmentPayload = {
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
    embeds: list[EmbedPayload] = field(default_factory=list)
    reference_id: int | None = None
    flags: int = 0
    timestamp: float = field(default_factory=time.time)
    edited: float | None = None
    deleted: bool = False
    edits: int = 0
    # Each earlier content, oldest first, as edits replaced it (what a person watching the channel saw).
    earlier: list[str] = field(default_factory=list)
    # Mentions as Discord resolved them for the current content (allowed_mentions applied):
    mentions: list[int] = field(default_factory=list)  # user ids, in order of appearance
    mention_roles: list[int] = field(default_factory=list)
    mention_everyone: bool = False
    notifies: set[int] = field(default_factory=set)  # who the current version pings
    # Everyone the message ever pinged: at creation, plus anyone an edit newly mentions (Discord
    # sends no push for an edit, but the mention still lands in that person's mentions).
    notified: set[int] = field(default_factory=set)
    pinged: set[int] = field(default_factory=set)  # who the last creation/edit newly pinged
    allowed_mentions: AllowedMentionsPayload | None = None  # as the sender gave it (None: not given)
    # Reactions: emoji -> ids of the users who reacted, both in the order they came.
    reactions: dict[str, list[int]] = field(default_factory=dict)
    # Components (action rows of buttons and selects) as the bot sent them, with Discord's ids added.
    components: list[ComponentPayload] = field(default_factory=list)
    # Who can see it: None for everyone who sees the channel; an ephemeral interaction response
    # (flag 64) is seen by the one user who used the interaction.
    visible_to: set[int] | None = None
    type: int | None = None  # None: 0 (default), or 19 (reply) when it replies
    # An interaction's response or follow-up: the application's webhook id and the interaction.
    webhook_id: int | None = None
    interaction_metadata: MessageInteractionMetadataPayload | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    def visible(self, user_id: int) -> bool:
        """Whether ``user_id`` sees it at all (an ephemeral message is its one user's)."""
        return self.visible_to is None or user_id in self.visible_to

    @property
    def files(self) -> list[Attachment]:
        return self.attachments


@dataclass
class Channel:
    id: int
    name: str
    type: int  # 0 text, 2 voice, 1 DM, 11 public thread, 12 private thread
    guild_id: int | None
    position: int = 0
    recipient: User | None = None
    # Discord's permission overwrites, with ints: {"id": role/user id, "type": 0 role | 1 member, "allow", "deny"}.
    overwrites: list[Overwrite] = field(default_factory=list)
    # A thread's: the channel it is in, who started it, when, and its messages (not counting deleted
    # ones, nor the message it was started from); kept up to date by the sandbox as messages come and go.
    parent_id: int | None = None
    owner_id: int | None = None
    created: float = field(default_factory=time.time)
    message_count: int = 0
    total_message_sent: int = 0

    @property
    def is_thread(self) -> bool:
        return self.type in THREAD_TYPES

    def payload(self) -> ChannelPayload:
        if self.type == DM:
            return self.dm_payload()
        return self.thread_payload() if self.is_thread else self.guild_channel_payload()

    def thread_payload(self) -> ThreadChannelPayload:
        """A thread as Discord sends it (https://discord.com/developers/docs/topics/threads): no position
        nor overwrites (its parent's apply), a ``thread_metadata`` and counts."""
        metadata: ThreadMetadataPayload = {
            "archived": False, "auto_archive_duration": 1440, "archive_timestamp": iso_time(self.created),
            "locked": False, "create_timestamp": iso_time(self.created),
        }
        if self.type == PRIVATE_THREAD:
            metadata["invitable"] = True
        return {
            "id": str(self.id), "type": self.type, "guild_id": str(self.guild_id), "name": self.name,
            "parent_id": str(self.parent_id), "owner_id": str(self.owner_id), "last_message_id": None,
            "rate_limit_per_user": 0, "flags": 0, "message_count": self.message_count,
            "member_count": 1, "total_message_sent": self.total_message_sent, "thread_metadata": metadata,
        }

    def dm_payload(self) -> DMChannelPayload:
        return {"id": str(self.id), "type": 1, "last_message_id": None,
                "recipients": [self.recipient.payload()] if self.recipient else []}

    def guild_channel_payload(self) -> GuildChannelPayload:
        data: GuildChannelPayload = {
            "id": str(self.id), "type": self.type, "guild_id": str(self.guild_id), "name": self.name,
            "position": self.position, "permission_overwrites": [
                {"id": str(o["id"]), "type": o.get("type", 0), "allow": str(o.get("allow", 0)),
                 "deny": str(o.get("deny", 0))} for o in self.overwrites
            ], "nsfw": False, "parent_id": None,
        }
        if self.type == 0:
            data["topic"], data["last_message_id"], data["rate_limit_per_user"] = None, None, 0
        else:
            data["bitrate"], data["user_limit"], data["rtc_region"] = 64000, 0, None
        return data


@dataclass
class Role:
    id: int
    name: str
    permissions: int
    position: int = 0
    mentionable: bool = False  # anyone may ping it; otherwise only with Mention Everyone
    guild_id: int | None = None  # its server (None: the first one)

    def payload(self) -> RolePayload:
        return {
            "id": str(self.id), "name": self.name, "color": 0, "colors": {"primary_color": 0},
            "hoist": False, "position": self.position, "permissions": str(self.permissions),
            "managed": False, "mentionable": self.mentionable, "flags": 0, "icon": None, "unicode_emoji": None,
        }


@dataclass
class Guild:
    """A server: its @everyone role has its id; its roles and channels name it as their ``guild_id``."""

    id: int
    name: str
    owner_id: int
    text_channel: Channel  # #general
    voice_channel: Channel
    voice_states: dict[int, int] = field(default_factory=dict)  # user id -> voice channel id


class State:
    """One world: its servers (the first one, and any :meth:`add_guild` added), roles, users,
    channels, messages and voice states. The users are members of every server."""

    # Set by new_world (and WorldStore when it restores a saved world):
    application_id: int
    guild_id: int  # the first server's
    owner: User  # owns every server
    admin: User
    member: User
    bot_user: User
    other_bot: User

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        """An empty world: call :meth:`new_world` to fill it. ``on_change()`` is called whenever
        something in the world changed (the sandbox saves it soon)."""
        self.ids = Snowflakes()
        self.on_change = on_change or (lambda: None)
        self.guilds: dict[int, Guild] = {}  # the first server first
        self.messages: dict[int, Message] = {}
        self.channels: dict[int, Channel] = {}
        self.roles: dict[int, Role] = {}
        self.users: dict[int, User] = {}
        self.server_count = 1  # servers in a new world: the first and server_count - 1 more (add_guild)
        self.commands = CommandRegistry()  # the application's commands, global and per server

    def changed(self) -> None:
        self.on_change()

    def new_world(self, guild_name: str = "Sandbox") -> None:
        """A new server with its roles, users (owner, admin, member, the bot, another bot) and
        channels (#general, Voice), all with new ids."""
        self.messages = {}
        self.channels = {}
        self.users = {}
        self.roles = {}
        self.guilds = {}
        self.commands = CommandRegistry()
        self.application_id = self.ids.next()
        self.guild_id = self.ids.next()
        admins = self._server_roles(self.guild_id)
        self.owner = self.add_user("owner", roles=[admins.id])
        self.admin = self.add_user("admin", roles=[admins.id])
        self.member = self.add_user("member")
        self.bot_user = self.add_user("trainer", bot=True)
        self.other_bot = self.add_user("otherbot", bot=True)
        text, voice = self.add_channel("general", 0), self.add_channel("Voice", 2)
        self.guilds[self.guild_id] = Guild(self.guild_id, guild_name, self.owner.id, text, voice)
        for number in range(2, self.server_count + 1):
            self.add_guild(f"{guild_name} {number}")

    def add_guild(self, name: str = "Second", *, shard: tuple[int, int] | None = None,
                  members: list[User] | None = None) -> Guild:
        """Another server with its own @everyone and Admins roles (Admins given to the owner and
        the admin, as in the first), #general and Voice channels; every user who is a member
        (``in_guild``) is a member of it too, or only ``members`` (and the owner and the bot) when
        given. Add it before the bot logs in, or with :meth:`sandbox.events.WorldEvents.add_guild`
        (the bot is told, as when it is invited).

        Its id puts it on ``shard`` = ``(shard_id, shard_count)`` (see :func:`shard_of`); by
        default on the other shard of two from the server before it, so that the first two
        servers go to different shards of a bot that runs two."""
        if shard is None:
            shard = (1 - shard_of(list(self.guilds)[-1], 2), 2)
        guild_id = self.ids.next_on_shard(*shard)
        admins = self._server_roles(guild_id)
        if members is not None:
            keep = {u.id for u in members} | {self.owner.id, self.bot_user.id}
            for user in self.users.values():
                if user.id not in keep:
                    user.left.add(guild_id)
        for user in (self.owner, self.admin):
            if guild_id not in user.left:
                user.roles.append(admins.id)
        text, voice = self.add_channel("general", 0, guild_id), self.add_channel("Voice", 2, guild_id)
        guild = self.guilds[guild_id] = Guild(guild_id, name, self.owner.id, text, voice)
        self.changed()
        return guild

    def _server_roles(self, guild_id: int) -> Role:
        """A new server's @everyone (its id is the server's) and Admins roles; returns Admins."""
        everyone = Role(guild_id, "@everyone", EVERYONE_PERMISSIONS, 0, guild_id=guild_id)
        admins = Role(self.ids.next(), "Admins", EVERYONE_PERMISSIONS | MANAGE_GUILD, 1, guild_id=guild_id)
        self.roles.update({everyone.id: everyone, admins.id: admins})
        return admins

    # The first server's name, channels and voice states.
    @property
    def guild(self) -> Guild:
        return self.guilds[self.guild_id]

    @property
    def guild_name(self) -> str:
        return self.guild.name

    @property
    def text_channel(self) -> Channel:
        return self.guild.text_channel

    @property
    def voice_channel(self) -> Channel:
        return self.guild.voice_channel

    @property
    def voice_states(self) -> dict[int, int]:
        """User id -> voice channel id, in the first server (each server has its own)."""
        return self.guild.voice_states

    def guild_of(self, guild: Guild | int | None) -> Guild:
        """A server given as itself or its id; None: the first one."""
        if guild is None:
            return self.guild
        return guild if isinstance(guild, Guild) else self.guilds[guild]

    def role_guild(self, role: Role) -> int:
        return role.guild_id if role.guild_id is not None else self.guild_id

    def member_roles(self, user: User, guild_id: int) -> list[int]:
        """The ids of ``user``'s roles in that server."""
        return [r for r in user.roles if r in self.roles and self.role_guild(self.roles[r]) == guild_id]

    # ----------------------------------------------------------------- adding and finding
    def add_user(self, name: str, *, bot: bool = False, roles: list[int] | None = None,
                 in_guild: bool = True) -> User:
        user = User(self.ids.next(), name, bot=bot, roles=list(roles or []), in_guild=in_guild)
        self.users[user.id] = user
        self.changed()
        return user

    def add_channel(self, name: str, type_: int, guild_id: int | None = None, *,
                    overwrites: list[Overwrite] | None = None) -> Channel:
        """A channel (0 text, 2 voice); ``overwrites`` as Discord's, e.g. ``[{"id": sandbox.guild_id,
        "deny": CONNECT}]`` locks it for @everyone. Add channels before the bot logs in."""
        channel = Channel(self.ids.next(), name, type_, guild_id or self.guild_id, position=len(self.channels),
                          overwrites=list(overwrites or []))
        self.channels[channel.id] = channel
        self.changed()
        return channel

    def add_role(self, name: str, permissions: int = 0, guild: Guild | int | None = None, *,
                 mentionable: bool = False) -> Role:
        """A new role in ``guild`` (None: the first server), above its other roles."""
        guild_id = self.guild_of(guild).id
        position = 1 + max((r.position for r in self.roles.values() if self.role_guild(r) == guild_id), default=0)
        role = Role(self.ids.next(), name, permissions, position, mentionable, guild_id=guild_id)
        self.roles[role.id] = role
        self.changed()
        return role

    def add_thread(self, name: str, parent: Channel, owner: User, *, private: bool = False) -> Channel:
        """A new thread in text channel ``parent``, started by ``owner``."""
        thread = Channel(self.ids.next(), name, PRIVATE_THREAD if private else PUBLIC_THREAD, parent.guild_id,
                         parent_id=parent.id, owner_id=owner.id)
        self.channels[thread.id] = thread
        self.changed()
        return thread

    def role_named(self, name: str, guild: Guild | int | None = None) -> Role:
        """The role called ``name`` (any case) in ``guild`` (None: the first server)."""
        guild_id = self.guild_of(guild).id
        for role in self.roles.values():
            if role.name.lower() == name.lower() and self.role_guild(role) == guild_id:
                return role
        raise KeyError(name)

    def user_named(self, name: str) -> User:
        for user in self.users.values():
            if user.name == name:
                return user
        raise KeyError(name)

    def channel(self, channel: Channel | int | None, guild: Guild | int | None = None) -> Channel:
        """A channel given as itself or its id; None: #general of ``guild`` (None: the first server)."""
        if channel is None:
            return self.guild_of(guild).text_channel
        if isinstance(channel, Channel):
            return channel
        return self.channels[channel]

    def dm_channel(self, user: User | str) -> Channel:
        """The DM channel between ``user`` and the bot (created on first use)."""
        if isinstance(user, str):
            user = self.user_named(user)
        for channel in self.channels.values():
            if channel.type == 1 and channel.recipient is user:
                return channel
        channel = Channel(self.ids.next(), "", 1, None, recipient=user)
        self.channels[channel.id] = channel
        self.changed()
        return channel

    def bot_messages(self, channel_id: int | None = None, *, after: int = 0) -> list[Message]:
        return [
            m for m in self.messages.values()
            if m.author.id == self.bot_user.id and m.id > after and not m.deleted
            and (channel_id is None or m.channel_id == channel_id)
        ]

    # ----------------------------------------------------------------- payloads
    def member_payload(self, user: User, guild_id: int, with_user: bool = True) -> MemberPayload:
        return user.member_payload(with_user, roles=self.member_roles(user, guild_id))

    def guild_payload(self, guild: Guild | int | None = None) -> GuildPayload:
        """GUILD_CREATE's server (None: the first one), with its roles, members and channels."""
        g = self.guild_of(guild)
        members = [u for u in self.users.values() if self.is_member(u, g.id)]
        return {
            "id": str(g.id), "name": g.name, "icon": None, "splash": None,
            "discovery_splash": None, "owner_id": str(g.owner_id), "afk_channel_id": None,
            "afk_timeout": 300, "verification_level": 0, "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [r.payload() for r in self.roles.values() if self.role_guild(r) == g.id],
            "emojis": [], "stickers": [], "features": [], "mfa_level": 0, "application_id": None,
            "system_channel_id": None, "system_channel_flags": 0, "rules_channel_id": None,
            "max_members": 500000, "vanity_url_code": None, "description": None, "banner": None,
            "premium_tier": 0, "premium_subscription_count": 0, "preferred_locale": "en-US",
            "public_updates_channel_id": None, "nsfw_level": 0, "premium_progress_bar_enabled": False,
            "joined_at": iso_time(), "large": False, "unavailable": False, "member_count": len(members),
            "voice_states": [self.voice_state_payload(uid, cid, with_member=False, guild_id=g.id)
                             for uid, cid in g.voice_states.items()],
            "members": [self.member_payload(u, g.id) for u in members],
            "channels": [c.guild_channel_payload() for c in self.channels.values()
                         if c.guild_id == g.id and c.type != DM and not c.is_thread],
            # Active threads the bot can see (Discord sends only those).
            "threads": [c.thread_payload() for c in self.channels.values()
                        if c.guild_id == g.id and c.is_thread and self.can_see(self.bot_user, c)],
            "presences": [], "stage_instances": [], "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def message_payload(self, msg: Message, *, with_reference: bool = True) -> MessagePayload:
        data: MessagePayload = {
            "id": str(msg.id), "channel_id": str(msg.channel_id), "author": msg.author.payload(),
            "content": msg.content, "timestamp": iso_time(msg.timestamp),
            "edited_timestamp": iso_time(msg.edited) if msg.edited else None, "tts": False,
            "mention_everyone": msg.mention_everyone, "mentions": [], "mention_roles": [str(r) for r in msg.mention_roles],
            "attachments": [a.payload() for a in msg.attachments], "embeds": msg.embeds,
            "pinned": False, "type": msg.type if msg.type is not None else 19 if msg.reference_id else 0,
            "flags": msg.flags, "components": msg.components,
        }
        if msg.webhook_id is not None:
            data["webhook_id"] = data["application_id"] = str(msg.webhook_id)
        if msg.interaction_metadata is not None:
            data["interaction_metadata"] = msg.interaction_metadata
        if msg.guild_id:
            data["guild_id"] = str(msg.guild_id)
            data["member"] = self.member_payload(msg.author, msg.guild_id, with_user=False)
        if msg.reactions:  # Discord leaves the key out when there are none
            data["reactions"] = [self.reaction_payload(emoji, users) for emoji, users in msg.reactions.items()]
        for user_id in msg.mentions:
            user = self.users[user_id]
            mention: UserMentionPayload = {**user.payload()}
            if msg.guild_id and self.is_member(user, msg.guild_id):  # Discord adds the partial member in servers
                mention["member"] = self.member_payload(user, msg.guild_id, with_user=False)
            data["mentions"].append(mention)
        if msg.reference_id:
            reference: MessageReferencePayload = {
                "type": 0, "message_id": str(msg.reference_id), "channel_id": str(msg.channel_id),
            }
            if msg.guild_id:
                reference["guild_id"] = str(msg.guild_id)
            data["message_reference"] = reference
            ref = self.messages.get(msg.reference_id)
            if with_reference:
                data["referenced_message"] = (
                    self.message_payload(ref, with_reference=False) if ref and not ref.deleted else None
                )
        return data

    def voice_state_payload(self, user_id: int, channel_id: int | None, with_member: bool = True,
                            guild_id: int | None = None) -> VoiceStatePayload:
        """VOICE_STATE_UPDATE in server ``guild_id`` (None: the first one)."""
        user = self.users[user_id]
        guild_id = guild_id if guild_id is not None else self.guild_id
        data: VoiceStatePayload = {
            "guild_id": str(guild_id), "channel_id": str(channel_id) if channel_id else None,
            "user_id": str(user_id), "session_id": f"voice-{user_id}", "deaf": False, "mute": False,
            "self_deaf": False, "self_mute": False, "self_video": False, "suppress": False,
            "request_to_speak_timestamp": None,
        }
        if with_member:
            data["member"] = self.member_payload(user, guild_id)
        return data

    def reaction_payload(self, emoji: str, users: list[int]) -> ReactionPayload:
        return {
            "emoji": {"id": None, "name": emoji}, "count": len(users),
            "count_details": {"burst": 0, "normal": len(users)}, "burst_colors": [],
            "me_burst": False, "me": self.bot_user.id in users,
        }

    # ----------------------------------------------------------------- permissions and mentions
    def permissions_for(self, user: User, channel: Channel) -> int:
        """``user``'s permissions in ``channel``, computed as Discord does: @everyone and the user's
        roles, all for the owner and Administrator, then the channel's @everyone, role and member
        overwrites in that order. In a DM its two participants can talk, nobody else can see it."""
        if channel.type == DM:
            if channel.recipient is not None and user.id in (channel.recipient.id, self.bot_user.id):
                return (VIEW_CHANNEL | SEND_MESSAGES | READ_MESSAGE_HISTORY | ADD_REACTIONS | ATTACH_FILES
                        | EMBED_LINKS)
            return 0
        if channel.is_thread:
            return self._thread_permissions(user, channel)
        guild = self.guild_of(channel.guild_id)
        if not self.is_member(user, guild.id):
            return 0
        if user.id == guild.owner_id:
            return ALL_PERMISSIONS
        perms = self.roles[guild.id].permissions
        member_roles = self.member_roles(user, guild.id)
        for role_id in member_roles:
            perms |= self.roles[role_id].permissions
        if perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        roles_allow = roles_deny = 0
        member_overwrite: Overwrite | None = None
        for ow in channel.overwrites:
            target, kind = int(ow["id"]), ow.get("type", 0)
            if kind == 0 and target == guild.id:
                perms = (perms & ~int(ow.get("deny", 0))) | int(ow.get("allow", 0))
            elif kind == 0 and target in member_roles:
                roles_allow |= int(ow.get("allow", 0))
                roles_deny |= int(ow.get("deny", 0))
            elif kind == 1 and target == user.id:
                member_overwrite = ow
        perms = (perms & ~roles_deny) | roles_allow
        if member_overwrite is not None:
            perms = (perms & ~int(member_overwrite.get("deny", 0))) | int(member_overwrite.get("allow", 0))
        return perms

    def _thread_permissions(self, user: User, thread: Channel) -> int:
        """In a thread its parent's permissions apply, where Send Messages in Threads stands for Send
        Messages (as discord.py's Thread.permissions_for reads them); a private thread is seen only by
        its members, here the one who started it, and by those who may manage threads."""
        parent = self.channels.get(thread.parent_id or 0)
        if parent is None:
            return 0
        perms = self.permissions_for(user, parent)
        if perms == ALL_PERMISSIONS:
            return perms
        if thread.type == PRIVATE_THREAD and user.id not in (thread.owner_id, self.bot_user.id) \
                and not perms & MANAGE_THREADS:
            return 0
        perms &= ~SEND_MESSAGES
        if perms & SEND_MESSAGES_IN_THREADS:
            perms |= SEND_MESSAGES
        return perms

    def is_member(self, user: User, guild_id: int) -> bool:
        """Whether ``user`` is a member of server ``guild_id`` now."""
        return user.in_guild and guild_id not in user.left and guild_id in self.guilds
    def base_permissions(self, user: User, guild_id: int) -> int:
        """``user``'s server-wide permissions (no channel overwrites): what Discord checks a command's
        ``default_member_permissions`` against."""
        guild = self.guild_of(guild_id)
        if not self.is_member(user, guild.id):
            return 0
        if user.id == guild.owner_id:
            return ALL_PERMISSIONS
        perms = self.roles[guild.id].permissions
        for role_id in self.member_roles(user, guild.id):
            perms |= self.roles[role_id].permissions
        return ALL_PERMISSIONS if perms & ADMINISTRATOR else perms

    def can_see(self, user: User, channel: Channel) -> bool:
        return bool(self.permissions_for(user, channel) & VIEW_CHANNEL)

    @staticmethod
    def allowed_mentions_error(allowed: object) -> ErrorPayload | None:
        """Discord's 400 for an allowed_mentions object it refuses, or None when it is valid
        (``allowed``: as a client sent it, any JSON)."""
        def invalid(code: str, message: str) -> ErrorPayload:
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

    def resolve_mentions(self, msg: Message, allowed: AllowedMentionsPayload | None) -> None:
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
        in_guild = channel.type != DM
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
                if (role is not None and self.role_guild(role) == channel.guild_id and role.id != channel.guild_id
                        and role.id not in roles
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
