"""A small Discord-compatible server on 127.0.0.1 that the real discord.py client logs into.

It speaks the parts of Discord's REST API (``/api/v10/...``), gateway websocket and CDN that the
bot uses, holds one guild with text and voice channels and users with roles (more guilds with
:meth:`Sandbox.add_guild`, sent to the shards Discord would send them to), and stores every
message and attachment. Anything it does not implement answers 404 and is recorded in
:attr:`Sandbox.unimplemented`, so tests can fail on it.

Users act through methods (:meth:`Sandbox.post_message`, :meth:`Sandbox.set_voice`), which
dispatch the same gateway events Discord would; so do the world's changes while a bot runs
(:mod:`sandbox.events`: ``give_role``, ``update_role``, ``set_permissions``, ``create_channel``,
``create_thread``, ``remove_member``, ``join_guild`` …) and the gateway's own moves
(``request_reconnect``: op 7, ``invalidate_session``: op 9).

:class:`Sandbox` is a facade over its parts, each in its own module: ``state`` (:mod:`sandbox.state`:
the world's objects, ids, payloads, permissions, mentions), ``gateway`` (:mod:`sandbox.gateway`),
``rest`` (:mod:`sandbox.rest`: routes, reactions, CDN) and ``store`` (:mod:`sandbox.world`: the world
on disk). Their public attributes and methods are the sandbox's own (``sandbox.messages`` is
``sandbox.state.messages``); this module keeps what joins them: start and close, users' actions,
waiting, voice and a new world.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypedDict

import aiohttp
from aiohttp import web

from sandbox.appcommands import AppCommand
from sandbox.events import WorldEvents
from sandbox.gateway import HEARTBEAT_ACK_DELAY, Gateway
from sandbox.interactions import RESPONSE_DEADLINE, Interaction, InteractionRefused, Interactions, OpenModal
from sandbox.payloads import UnavailableGuildPayload
from sandbox.rest import API_PREFIX, ReactionError, Rest, parse_emoji
from sandbox.state import (
    ADD_REACTIONS,
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    ALLOWED_PARSE,
    ATTACH_FILES,
    CONNECT,
    EMBED_LINKS,
    EVERYONE_PERMISSIONS,
    IS_VOICE_MESSAGE,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    MENTION_EVERYONE,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    SPEAK,
    USE_VAD,
    VIEW_CHANNEL,
    Attachment,
    Channel,
    Guild,
    Message,
    Role,
    State,
    User,
    shard_of,
)
from sandbox.world import SAVE_DELAY, WorldStore

if TYPE_CHECKING:
    from sandbox.voice import VoiceServer

log = logging.getLogger(__name__)

__all__ = [
    "ADD_REACTIONS", "ADMINISTRATOR", "ALL_PERMISSIONS", "ATTACH_FILES", "CONNECT", "EMBED_LINKS",
    "EVERYONE_PERMISSIONS", "HEARTBEAT_ACK_DELAY", "MANAGE_GUILD", "MANAGE_MESSAGES", "MENTION_EVERYONE",
    "READ_MESSAGE_HISTORY", "SAVE_DELAY", "SEND_MESSAGES", "SPEAK", "USE_VAD", "VIEW_CHANNEL",
    "Attachment", "Channel", "Guild", "Interaction", "InteractionRefused", "Message", "OpenModal", "ReactionError", "Role", "Sandbox", "User", "parse_emoji",
    "shard_of",
]


class BotKwargs(TypedDict, total=False):
    """What :meth:`Sandbox.bot_kwargs` gives ``commands.Bot``."""

    connector: aiohttp.TCPConnector  # trusts the voice server's certificate


class _On:
    """An attribute of :class:`Sandbox` that lives on one of its parts, read and written there:
    ``messages = _On("state")`` makes ``sandbox.messages`` ``sandbox.state.messages``."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(getattr(obj, self.part), self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(getattr(obj, self.part), self.name, value)


class Sandbox:
    """The server: state, REST, gateway and CDN."""

    # The world (sandbox.state): its objects, and what they look like to Discord clients.
    ids = _On("state")
    application_id = _On("state")
    guild_id = _On("state")
    guild_name = _On("state")
    guilds = _On("state")  # id -> Guild, the first one first
    messages = _On("state")
    channels = _On("state")
    roles = _On("state")
    users = _On("state")
    voice_states = _On("state")  # user id -> voice channel id
    owner = _On("state")
    admin = _On("state")
    member = _On("state")
    bot_user = _On("state")
    other_bot = _On("state")
    text_channel = _On("state")
    voice_channel = _On("state")
    add_guild = _On("state")
    add_user = _On("state")
    add_channel = _On("state")
    user_named = _On("state")
    dm_channel = _On("state")
    bot_messages = _On("state")
    guild_payload = _On("state")
    message_payload = _On("state")
    permissions_for = _On("state")
    can_see = _On("state")
    notified = _On("state")
    # The gateway (sandbox.gateway): the bot's sessions and what it sent.
    sessions = _On("gateway")
    identify_count = _On("gateway")
    resume_count = _On("gateway")
    heartbeats = _On("gateway")  # (monotonic time, d) of every op 1 the bot sent
    heartbeat_interval_ms = _On("gateway")
    heartbeat_ack_delay = _On("gateway")
    bot_voice_requests = _On("gateway")
    recommended_shards = _On("gateway")  # GET /gateway/bot's "shards" (default 1)
    dispatch = _On("gateway")
    drop_bot_connections = _On("gateway")
    request_heartbeat = _On("gateway")
    # REST (sandbox.rest): what the bot asked for, reactions, message listeners.
    typing = _On("rest")  # channel ids of the bot's typing indicators, in order
    downloads = _On("rest")  # attachment ids fetched from the CDN, in order
    add_listener = _On("rest")
    remove_listener = _On("rest")
    add_reaction_listener = _On("rest")
    react = _On("rest")
    unreact = _On("rest")
    make_app = _On("rest")
    # Changes to the world while the bot is connected, and the gateway's reconnects (sandbox.events).
    give_role = _On("events")
    take_role = _On("events")
    create_role = _On("events")
    update_role = _On("events")
    delete_role = _On("events")
    add_member = _On("events")
    remove_member = _On("events")
    set_permissions = _On("events")
    create_channel = _On("events")
    rename_channel = _On("events")
    delete_channel = _On("events")
    create_thread = _On("events")
    join_guild = _On("events")  # a new server with the bot in it (GUILD_CREATE), while it runs
    request_reconnect = _On("events")  # op 7
    invalidate_session = _On("events")  # op 9
    role_named = _On("state")
    add_role = _On("state")
    is_member = _On("state")
    # Interactions (sandbox.interactions): users use the bot's commands, buttons and modals.
    slash = _On("interactions")
    click = _On("interactions")
    menu = _On("interactions")
    submit_modal = _On("interactions")
    close_modal = _On("interactions")
    autocomplete = _On("interactions")
    wait_for_response = _On("interactions")
    ephemeral_messages = _On("interactions")
    open_modals = _On("interactions")  # user id -> the modal on that user's screen
    add_interaction_listener = _On("interactions")
    # The world on disk (sandbox.world).
    world = _On("store")
    world_note = _On("store")
    world_loaded = _On("store")
    save_world = _On("store")

    def __init__(self, *, guild_name: str = "Sandbox", heartbeat_interval_ms: int = 41250,
                 heartbeat_ack_delay: float = HEARTBEAT_ACK_DELAY, world_file: str | Path | None = None,
                 interaction_deadline: float = RESPONSE_DEADLINE, message_content_enabled: bool = True,
                 servers: int = 1) -> None:
        """``world_file``: keep the world (server, roles, channels, users, ids, messages, reactions,
        attachments, application commands) in this JSON file between runs, loading it now if it exists; without it every
        sandbox is a new world. ``interaction_deadline``: seconds the bot has for an interaction's first
        response (Discord's 3). The first start saves a new world; changes are saved within
        :data:`SAVE_DELAY` and on :meth:`close`. An unreadable file is set aside and a new world
        begins; :attr:`world_note` then says so (and the log). ``servers``: how many servers a world has
        at least (the bot is in all of them; every user is a member of each)."""
        self.host = "127.0.0.1"
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.unimplemented: list[str] = []
        # The loopback voice server (opt-in: start(voice=True) or enable_voice()) takes the bot's
        # voice connection; without it the endpoint points at this HTTP server and joining fails.
        self.voice_endpoint: str | None = None
        self.voice_token: str = secrets.token_hex(8)
        self.voice_server: VoiceServer | None = None
        self.voice_unavailable: str | None = None  # why enable_voice() could not start it
        self._cond = asyncio.Condition()
        self.bot_token = "sandbox." + secrets.token_urlsafe(24)

        self.state = State()
        self.state.server_count = servers
        self.store = WorldStore(Path(world_file) if world_file is not None else None, self.state)
        self.state.on_change = self.store.changed
        self.gateway = Gateway(self, heartbeat_interval_ms=heartbeat_interval_ms,
                               heartbeat_ack_delay=heartbeat_ack_delay)
        self.interactions = Interactions(self, response_deadline=interaction_deadline)
        self.rest = Rest(self)
        self.events = WorldEvents(self)
        # The application's Message Content switch in Discord's developer portal: off, a bot that
        # asks for the intent is refused (4014) and REST shows message content only as the
        # gateway does without it.
        self.message_content_enabled = message_content_enabled
        self.state.new_world(guild_name)
        if self.world is not None:
            self.store.load(guild_name)
        for number in range(len(self.guilds) + 1, servers + 1):  # a saved world from before it had them
            self.state.add_guild(f"{self.guild_name} {number}")

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    # ----------------------------------------------------------------- observing
    async def wake(self) -> None:
        """Something changed: every :meth:`wait_for` looks at its condition again."""
        async with self._cond:
            self._cond.notify_all()

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
        guild: Guild | int | None = None, attachments: list[tuple[str, bytes, str | None]] | None = None, reply_to: int | None = None,
        voice_message: bool = False, duration_secs: float | None = None, ping_reply: bool = True,
    ) -> Message:
        """Post a message as a user in ``channel`` (default: #general of ``guild``, default: the
        first server); dispatches MESSAGE_CREATE. A reply pings the replied-to author as
        Discord's client does by default; ``ping_reply=False`` is its "@ OFF"."""
        if isinstance(author, str):
            author = self.state.user_named(author)
        channel_obj = self.state.channel(channel, guild)
        msg_id = self.ids.next()
        files = [
            self.rest.store_attachment(channel_obj.id, name, data, ctype,
                                       duration_secs if voice_message else None)
            for name, data, ctype in (attachments or [])
        ]
        msg = Message(msg_id, channel_obj.id, channel_obj.guild_id, author, content, files,
                      reference_id=reply_to, flags=IS_VOICE_MESSAGE if voice_message else 0,
                      allowed_mentions=None if ping_reply or not reply_to else
                      {"parse": list(ALLOWED_PARSE), "replied_user": False})
        await self.rest.create_message(msg)
        return msg

    async def set_voice(self, user: User | str, channel: Channel | int | None, *,
                        guild: Guild | int | None = None) -> None:
        """Move a user into a voice channel (or out of ``guild``'s with ``None``, default: the
        first server's); dispatches VOICE_STATE_UPDATE."""
        if isinstance(user, str):
            user = self.state.user_named(user)
        channel_obj = self.state.channel(channel) if channel is not None else None
        where = self.state.guild_of(channel_obj.guild_id if channel_obj is not None else guild)
        if channel_obj is None:
            where.voice_states.pop(user.id, None)
        else:
            where.voice_states[user.id] = channel_obj.id
        await self.dispatch("VOICE_STATE_UPDATE", self.state.voice_state_payload(
            user.id, channel_obj.id if channel_obj is not None else None, guild_id=where.id))

    # ----------------------------------------------------------------- voice
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

    def bot_kwargs(self) -> BotKwargs:
        """Extra ``commands.Bot`` arguments for a bot logging in here: trust the voice server.

        Call it inside the running event loop (it makes an aiohttp connector)."""
        ctx = self.voice_ssl_context
        return {"connector": aiohttp.TCPConnector(ssl=ctx)} if ctx is not None else {}

    # ----------------------------------------------------------------- running
    async def reset_world(self) -> None:
        """Begin a new world: new server, roles, channels, users and ids, no messages. The bot's
        session is invalidated as Discord does (op 9, not resumable): it identifies again and sees
        only the new server, as if it had been invited to another one. Saved at once."""
        left = False
        for guild in self.guilds.values():  # out of the old world's voice first
            if guild.voice_states.pop(self.bot_user.id, None) is not None:
                state = self.state.voice_state_payload(self.bot_user.id, None, guild_id=guild.id)
                state["session_id"] = f"bot-voice-{guild.id}"
                await self.dispatch("VOICE_STATE_UPDATE", state)
                left = True
        if left and self.voice_server is not None:  # and its calls end, as Discord ends them (4014)
            await self.voice_server.disconnect_all(4014)
        # The old servers are gone for the bot, as when it is removed from a server: a sharded client keeps
        # other shards' servers across a re-identify, so it must be told.
        for guild in list(self.guilds.values()):
            deleted: UnavailableGuildPayload = {"id": str(guild.id)}
            await self.gateway.dispatch("GUILD_DELETE", deleted)
        await self.gateway.invalidate_sessions()
        self.state.new_world(self.guild_name)
        await self.store.begin_again()
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
        await self.store.start()  # a new world is on disk from the first start
        if voice:
            await self.enable_voice()
        return self

    @property
    def commands(self) -> list[AppCommand]:
        """The application's registered commands, global and per server."""
        return list(self.state.commands.commands.values())

    def last_interaction(self, user: User | str | None = None) -> Interaction | None:
        """The latest interaction (of ``user``)."""
        return self.interactions.last(user)

    @property
    def interaction_deadline(self) -> float:
        """Seconds the bot has for an interaction's first response (Discord's 3)."""
        return self.interactions.response_deadline

    @interaction_deadline.setter
    def interaction_deadline(self, seconds: float) -> None:
        self.interactions.response_deadline = seconds

    @property
    def interaction_clock(self) -> Callable[[], float]:
        """The clock the 3-second and 15-minute rules are measured on (replace it to move time on)."""
        return self.interactions.clock

    @interaction_clock.setter
    def interaction_clock(self, clock: Callable[[], float]) -> None:
        self.interactions.clock = clock

    async def close(self) -> None:
        self.interactions.close()
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.voice_server is not None:
            await self.voice_server.close()
            self.voice_server = None
        await self.store.close()
