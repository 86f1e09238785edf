"""The sandbox's world on disk: one JSON file and, beside it, a folder with the attachments' bytes.

``world.json`` holds the servers, their roles, channels, users, messages and reactions (see
:meth:`WorldStore.record`); ``world-attachments/<attachment id>`` hold the files people and the bot
posted, written once each. Every write goes to a temporary file that is flushed, fsynced and
renamed over the old one, so a crash leaves either the previous world or the new one, never half.
A world that cannot be read is set aside (``world.json.<time>.bad``) so that nothing is lost, and
the sandbox starts a new one.

:class:`WorldFile` reads and writes bytes and JSON and knows nothing of the sandbox's classes;
:class:`WorldStore` turns a :class:`~sandbox.state.State` into that JSON and back, and saves it
soon after each change.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

from sandbox.appcommands import AppCommand, CommandRegistry
from sandbox.payloads import (
    AllowedMentionsPayload,
    ComponentPayload,
    EmbedPayload,
    MessageInteractionMetadataPayload,
    Overwrite,
)
from sandbox.state import Attachment, Channel, Guild, Message, Role, State, User, iso_time

log = logging.getLogger(__name__)

FORMAT = 1  # bump when a saved world can no longer be read as it is

# A world file is rewritten at most this often (seconds): a burst of messages is one write.
SAVE_DELAY = 0.5


# The records of world.json: ids are ints. A field the loader has a default for (a world saved
# before it existed loads without it) is NotRequired; the sandbox always writes them all.
class GuildRecord(TypedDict):
    id: int
    name: str
    owner_id: NotRequired[int]
    text_channel: int
    voice_channel: int


class RoleRecord(TypedDict):
    id: int
    name: str
    permissions: int
    position: NotRequired[int]
    mentionable: NotRequired[bool]
    guild_id: NotRequired[int | None]  # None: the first server


class UserRecord(TypedDict):
    id: int
    name: str
    bot: NotRequired[bool]
    roles: NotRequired[list[int]]
    in_guild: NotRequired[bool]
    joined: NotRequired[float]
    left: NotRequired[list[int]]  # servers the user is not a member of


class ChannelRecord(TypedDict):
    id: int
    name: str
    type: int
    guild_id: NotRequired[int | None]  # None: a DM
    position: NotRequired[int]
    recipient_id: NotRequired[int | None]  # a DM's
    overwrites: NotRequired[list[Overwrite]]
    parent_id: NotRequired[int | None]  # a thread's
    owner_id: NotRequired[int | None]
    created: NotRequired[float]


class AttachmentRecord(TypedDict):
    """An attachment; its bytes are in ``world-attachments/<id>``."""

    id: int
    filename: str
    content_type: NotRequired[str | None]
    size: NotRequired[int]
    duration_secs: NotRequired[float | None]


class MessageRecord(TypedDict):
    id: int
    channel_id: int
    guild_id: NotRequired[int | None]
    author_id: int
    content: NotRequired[str]
    embeds: NotRequired[list[EmbedPayload]]
    reference_id: NotRequired[int | None]
    flags: NotRequired[int]
    timestamp: float
    edited: NotRequired[float | None]
    deleted: NotRequired[bool]
    edits: NotRequired[int]
    attachments: NotRequired[list[AttachmentRecord]]
    mentions: NotRequired[list[int]]
    mention_roles: NotRequired[list[int]]
    mention_everyone: NotRequired[bool]
    notifies: NotRequired[list[int]]
    notified: NotRequired[list[int]]
    allowed_mentions: NotRequired[AllowedMentionsPayload | None]
    reactions: NotRequired[list[tuple[str, list[int]]]]  # [emoji, user ids], in the order they came
    components: NotRequired[list[ComponentPayload]]
    type: NotRequired[int | None]
    webhook_id: NotRequired[int | None]
    interaction_metadata: NotRequired[MessageInteractionMetadataPayload | None]


class SpecialRecord(TypedDict):
    """The ids of the users and channels :class:`~sandbox.state.State` names."""

    owner: int
    admin: int
    member: int
    bot: int
    other_bot: int
    text_channel: int  # the first server's
    voice_channel: int


class WorldRecord(TypedDict):
    """world.json: the first server's id, name and channels (``special``), every server (``guilds``), role,
    user, channel and message."""

    format: int
    saved_at: NotRequired[str]
    last_id: NotRequired[int]  # the highest id handed out
    application_id: int
    guild_id: int
    guild_name: NotRequired[str]
    guilds: NotRequired[list[GuildRecord]]
    roles: list[RoleRecord]
    users: list[UserRecord]
    channels: list[ChannelRecord]
    messages: list[MessageRecord]
    commands: NotRequired[list[dict[str, Any]]]  # the application's commands (AppCommand.record)
    special: SpecialRecord


class WorldUnreadable(Exception):
    """The world file exists but is not a world this sandbox can load; the message says why."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` durably: temp file in the same folder, fsync, rename, fsync folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class WorldFile:
    """Where one sandbox world lives; blocking I/O, so the sandbox calls it from a thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.blobs = self.path.with_name(self.path.stem + "-attachments")

    def blob(self, attachment_id: int) -> Path:
        return self.blobs / str(attachment_id)

    def clean_leftovers(self) -> list[Path]:
        """Remove the temporary files a killed writer left behind (hidden ``.name.*.tmp``)."""
        removed: list[Path] = []
        for folder, name in ((self.path.parent, self.path.name), (self.blobs, "")):
            if not folder.is_dir():
                continue
            for leftover in folder.glob(f".{name}*.tmp"):
                try:
                    leftover.unlink()
                    removed.append(leftover)
                except OSError as exc:
                    log.warning("sandbox world: could not remove leftover %s: %s", leftover, exc)
        if removed:
            log.info("sandbox world: removed %d unfinished write(s): %s", len(removed),
                     ", ".join(p.name for p in removed))
        return removed

    def load(self) -> WorldRecord | None:
        """The saved world, or None when there is none yet; :class:`WorldUnreadable` when there is
        one that cannot be used (not JSON, not a world, another format)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise WorldUnreadable(f"cannot read it ({exc.strerror or exc})") from None
        try:
            record: object = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise WorldUnreadable(f"it is not valid JSON ({exc})") from None
        if not isinstance(record, dict) or "guild_id" not in record:
            raise WorldUnreadable("it is not a sandbox world")
        if record.get("format") != FORMAT:
            raise WorldUnreadable(f"it was saved in format {record.get('format')!r}; this sandbox reads {FORMAT}")
        # A world of this format: WorldStore._restore reads it, and refuses it if it does not hang together.
        return cast(WorldRecord, record)

    def set_aside(self) -> Path | None:
        """Move an unreadable world (and its attachments) out of the way; the new name, or None."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.{stamp}.bad")
        try:
            os.replace(self.path, target)
        except OSError as exc:
            log.warning("sandbox world: could not set %s aside: %s", self.path, exc)
            return None
        if self.blobs.is_dir():
            try:
                os.replace(self.blobs, self.blobs.with_name(f"{self.blobs.name}.{stamp}.bad"))
            except OSError as exc:
                log.warning("sandbox world: could not set %s aside: %s", self.blobs, exc)
        return target

    def save(self, record: WorldRecord) -> None:
        write_atomic(self.path, json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode())

    def write_blob(self, attachment_id: int, data: bytes) -> None:
        path = self.blob(attachment_id)
        if not path.exists():
            write_atomic(path, data)

    def read_blob(self, attachment_id: int) -> bytes:
        return self.blob(attachment_id).read_bytes()

    def prune_blobs(self, keep: set[int]) -> int:
        """Delete the attachment files no message refers to any more; how many went."""
        if not self.blobs.is_dir():
            return 0
        removed = 0
        for path in self.blobs.iterdir():
            if path.name.isdigit() and int(path.name) not in keep:
                try:
                    path.unlink()
                    removed += 1
                except OSError as exc:
                    log.warning("sandbox world: could not remove %s: %s", path, exc)
        return removed

    def remove_blobs(self) -> None:
        shutil.rmtree(self.blobs, ignore_errors=True)


class WorldStore:
    """Keeps one sandbox's :class:`~sandbox.state.State` in a :class:`WorldFile` (or nowhere, without
    a path): saved within :data:`SAVE_DELAY` of a change, loaded back at start-up."""

    def __init__(self, path: Path | None, state: State) -> None:
        self.world = WorldFile(path) if path is not None else None
        self.state = state
        self.world_note: str | None = None  # what happened to a saved world that could not be loaded
        self.world_loaded = False  # True: this run continues a saved world
        self._dirty = False
        self._save_task: asyncio.Task[None] | None = None
        self._save_lock = asyncio.Lock()
        self._flush = asyncio.Event()

    async def start(self) -> None:
        """At the sandbox's start: a new world (or one changed while it was set up) is on disk at once."""
        if self.world is not None and (self._dirty or not self.world_loaded):
            await self.save_world()

    async def begin_again(self) -> None:
        """The state has just become a new world: drop the old one's attachments and save it now."""
        if self.world is not None:
            await asyncio.to_thread(self.world.remove_blobs)
            self.world_note = None
            self.world_loaded = False
            await self.save_world()

    async def close(self) -> None:
        """Write what is pending now rather than after :data:`SAVE_DELAY`."""
        if self._save_task is not None and not self._save_task.done():
            self._flush.set()
            await self._save_task
            self._flush.clear()
        if self._dirty:
            await self.save_world()

    def changed(self) -> None:
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
            record = await self.record()  # taken on the loop in slices, written in a thread
            try:
                await asyncio.to_thread(self.world.save, record)
            except OSError as exc:
                self._dirty = True
                log.warning("sandbox world: could not save %s: %s", self.world.path, exc)

    async def save_attachments(self, msg: Message) -> None:
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

    async def record(self) -> WorldRecord:
        """The whole world as JSON-able data (the format :meth:`_restore` reads).

        Messages are copied in slices with a yield between them, so a big world does not hold the
        event loop (10,000 messages take about 65 ms in all). A message created or changed while
        this runs has set the dirty flag again and goes into the next save."""
        state = self.state

        def message(m: Message) -> MessageRecord:
            return {
                "id": m.id, "channel_id": m.channel_id, "guild_id": m.guild_id, "author_id": m.author.id,
                "content": m.content, "embeds": m.embeds, "reference_id": m.reference_id, "flags": m.flags,
                "timestamp": m.timestamp, "edited": m.edited, "deleted": m.deleted, "edits": m.edits,
                "attachments": [{"id": a.id, "filename": a.filename, "content_type": a.content_type,
                                 "size": a.size, "duration_secs": a.duration_secs} for a in m.attachments],
                "mentions": m.mentions, "mention_roles": m.mention_roles, "mention_everyone": m.mention_everyone,
                "notifies": sorted(m.notifies), "notified": sorted(m.notified), "allowed_mentions": m.allowed_mentions,
                "reactions": [(emoji, users) for emoji, users in m.reactions.items()],
                "components": m.components, "type": m.type, "webhook_id": m.webhook_id,
                "interaction_metadata": m.interaction_metadata,
            }

        world: WorldRecord = {
            "format": FORMAT, "saved_at": iso_time(), "last_id": state.ids.last,
            "application_id": state.application_id, "guild_id": state.guild_id, "guild_name": state.guild_name,
            "guilds": [{"id": g.id, "name": g.name, "owner_id": g.owner_id, "text_channel": g.text_channel.id,
                        "voice_channel": g.voice_channel.id} for g in state.guilds.values()],
            "roles": [{"id": r.id, "name": r.name, "permissions": r.permissions, "position": r.position,
                       "mentionable": r.mentionable, "guild_id": r.guild_id} for r in state.roles.values()],
            "users": [{"id": u.id, "name": u.name, "bot": u.bot, "roles": u.roles, "in_guild": u.in_guild,
                       "joined": u.joined, "left": sorted(u.left)} for u in state.users.values()],
            "channels": [{"id": c.id, "name": c.name, "type": c.type, "guild_id": c.guild_id, "position": c.position,
                          "recipient_id": c.recipient.id if c.recipient else None, "overwrites": c.overwrites,
                          "parent_id": c.parent_id, "owner_id": c.owner_id, "created": c.created}
                         for c in state.channels.values()],
            "messages": [],
            "commands": [c.record() for c in state.commands.commands.values()],
            "special": {"owner": state.owner.id, "admin": state.admin.id, "member": state.member.id,
                        "bot": state.bot_user.id, "other_bot": state.other_bot.id,
                        "text_channel": state.text_channel.id, "voice_channel": state.voice_channel.id},
        }
        # Ephemeral messages live on their user's screen only: a restarted client no longer shows them.
        messages = [m for m in state.messages.values() if not m.ephemeral]
        for start in range(0, len(messages), 500):
            if start:
                await asyncio.sleep(0)
            world["messages"].extend(message(m) for m in messages[start:start + 500])
        return world

    def load(self, guild_name: str) -> None:
        """Continue the saved world if there is one; set an unusable one aside and keep the new one."""
        assert self.world is not None
        self.world.clean_leftovers()
        reason: str | None = None
        try:
            record = self.world.load()
            if record is None:
                log.info("sandbox world: none at %s yet; a new one begins", self.world.path)
                return
            self._restore(record)
            self.world_loaded = True
            log.info("sandbox world: continued from %s (server %s, %d messages)", self.world.path,
                     self.state.guild_id, len(self.state.messages))
            return
        except WorldUnreadable as exc:
            reason = str(exc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # JSON that does not hang together
            reason = f"it is damaged ({type(exc).__name__}: {exc})"
        last = self.state.ids.last
        self.state.new_world(guild_name)  # the half-restored one is dropped; ids keep increasing
        self.state.ids.last = max(self.state.ids.last, last)
        kept = self.world.set_aside()
        self.world_note = (f"The saved sandbox world {self.world.path} could not be loaded: {reason}. "
                           f"A new world (new server) begins"
                           + (f"; the old file is kept as {kept.name}." if kept else "."))
        log.warning("sandbox world: %s", self.world_note)
        self._dirty = True

    def _restore(self, record: WorldRecord) -> None:
        world, state = self.world, self.state
        assert world is not None
        roles = {int(r["id"]): Role(int(r["id"]), str(r["name"]), int(r["permissions"]), int(r.get("position", 0)),
                                    bool(r.get("mentionable", False)),
                                    _optional_id(r.get("guild_id"))) for r in record["roles"]}
        users = {int(u["id"]): User(int(u["id"]), str(u["name"]), bot=bool(u.get("bot")),
                                    roles=[int(r) for r in u.get("roles", [])], in_guild=bool(u.get("in_guild", True)),
                                    joined=float(u.get("joined") or time.time()),
                                    left={int(g) for g in u.get("left", [])}) for u in record["users"]}
        channels: dict[int, Channel] = {}
        for c in record["channels"]:
            recipient_id = _optional_id(c.get("recipient_id"))
            recipient = users[recipient_id] if recipient_id is not None else None
            channels[int(c["id"])] = Channel(
                int(c["id"]), str(c["name"]), int(c["type"]), _optional_id(c.get("guild_id")),
                position=int(c.get("position", 0)), recipient=recipient, overwrites=list(c.get("overwrites") or []),
                parent_id=_optional_id(c.get("parent_id")), owner_id=_optional_id(c.get("owner_id")),
                created=float(c.get("created") or time.time()))
        messages: dict[int, Message] = {}
        for m in record["messages"]:
            channel_id = int(m["channel_id"])
            if channel_id not in channels:
                raise ValueError(f"message {m['id']} is in an unknown channel")
            attachments = [
                Attachment(int(a["id"]), str(a["filename"]), None, a.get("content_type"), "",
                           a.get("duration_secs"), size=int(a.get("size") or 0),
                           loader=functools.partial(world.read_blob, int(a["id"])))
                for a in m.get("attachments", [])
            ]
            msg = Message(
                int(m["id"]), channel_id, _optional_id(m.get("guild_id")),
                users[int(m["author_id"])], str(m.get("content") or ""), attachments,
                embeds=list(m.get("embeds") or []), reference_id=_optional_id(m.get("reference_id")),
                flags=int(m.get("flags", 0)), timestamp=float(m["timestamp"]),
                edited=_optional_time(m.get("edited")), deleted=bool(m.get("deleted")),
                edits=int(m.get("edits", 0)), mentions=[int(u) for u in m.get("mentions", [])],
                mention_roles=[int(r) for r in m.get("mention_roles", [])],
                mention_everyone=bool(m.get("mention_everyone")),
                notifies={int(u) for u in m.get("notifies", [])}, notified={int(u) for u in m.get("notified", [])},
                allowed_mentions=m.get("allowed_mentions"),
                reactions={str(emoji): [int(u) for u in who] for emoji, who in m.get("reactions", [])},
                components=list(m.get("components") or []), type=m.get("type"),
                webhook_id=_optional_id(m.get("webhook_id")), interaction_metadata=m.get("interaction_metadata"),
            )
            messages[msg.id] = msg
            thread = channels[channel_id]
            if thread.is_thread:
                thread.total_message_sent += 1
                thread.message_count += not msg.deleted
        special = record["special"]
        guild_id = int(record["guild_id"])
        owner = users[int(special["owner"])]
        # The first server from the fields every saved world has; the others from "guilds" (newer worlds).
        guilds = {guild_id: Guild(guild_id, str(record.get("guild_name") or state.guild_name), owner.id,
                                  channels[int(special["text_channel"])], channels[int(special["voice_channel"])])}
        for g in record.get("guilds", []):
            if int(g["id"]) != guild_id:
                guilds[int(g["id"])] = Guild(int(g["id"]), str(g["name"]), int(g.get("owner_id") or owner.id),
                                             channels[int(g["text_channel"])], channels[int(g["voice_channel"])])
        if any(g not in roles for g in guilds):
            raise ValueError("a server has no @everyone role")
        # Everything read: now replace the new world with the saved one.
        state.application_id, state.guild_id, state.guilds = int(record["application_id"]), guild_id, guilds
        state.roles, state.users, state.channels, state.messages = roles, users, channels, messages
        state.commands = CommandRegistry()
        for saved in record.get("commands", []):
            command = AppCommand.from_record(saved)
            state.commands.commands[command.id] = command
        state.owner, state.admin, state.member = owner, users[int(special["admin"])], users[int(special["member"])]
        state.bot_user, state.other_bot = users[int(special["bot"])], users[int(special["other_bot"])]
        highest = max([int(record.get("last_id") or 0), *guilds, *users, *channels, *messages, *roles,
                       *(a.id for m in messages.values() for a in m.attachments)])
        state.ids.last = max(state.ids.last, highest)


def _optional_id(value: int | None) -> int | None:
    """A saved id that may be null or left out (0 too: no Discord id is 0): None then."""
    return int(value) if value else None


def _optional_time(value: float | None) -> float | None:
    """A saved time that may be null or left out: None then."""
    return float(value) if value else None
