"""The sandbox's gateway: the websocket a bot logs in on (HELLO, IDENTIFY/RESUME, heartbeats) and
the events it is sent (:meth:`Gateway.dispatch`), kept per session so a dropped connection can RESUME.

Sharded as Discord shards: a session that identified with ``shard: [shard_id, shard_count]`` gets
READY, GUILD_CREATE and the events of the servers with ``(guild_id >> 22) % shard_count == shard_id``
only, and DMs only on shard 0 (https://discord.com/developers/docs/events/gateway#sharding).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, cast

from aiohttp import WSMsgType, web

from sandbox.payloads import (
    ControlData,
    ControlFrame,
    DispatchFrame,
    EventPayload,
    IdentifyPayload,
    MessagePayload,
    ReadyPayload,
    ResumedPayload,
    ResumePayload,
    VoiceStateRequestPayload,
)
from sandbox.rest import MESSAGE_CONTENT, strip_content
from sandbox.state import Channel, User, shard_of

if TYPE_CHECKING:
    from sandbox.server import Sandbox

# discord.py's heartbeat thread records its send time only after the event loop has written the
# heartbeat; an ACK that arrives first (an in-process server on a busy machine answers within
# microseconds) is measured against the previous send, one whole interval earlier, and discord.py
# warns "Can't keep up, websocket is 41.3s behind". Measured with a 20 ms interval: about 1% of
# beats on an idle 2-core machine and 26% with the CPUs busy. Discord's ACK crosses the network;
# the sandbox answers after a short, LAN-like round trip instead. A bot whose loop really stalls
# still measures the stall: the delay only moves the ACK later, never earlier.
HEARTBEAT_ACK_DELAY = 0.05

# Events whose message content the Message Content intent gates (MESSAGE_DELETE has none).
CONTENT_EVENTS = ("MESSAGE_CREATE", "MESSAGE_UPDATE")

# Gateway opcodes.
OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_PRESENCE, OP_VOICE_STATE = 0, 1, 2, 3, 4
OP_RESUME, OP_RECONNECT, OP_REQUEST_MEMBERS, OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK = 6, 7, 8, 9, 10, 11


class Session:
    """One bot gateway session: survives a dropped websocket so it can RESUME."""

    def __init__(self, session_id: str, user: User):
        self.id = session_id
        self.user = user
        self.seq = 0
        self.backlog: list[DispatchFrame] = []  # sent events kept for RESUME
        self.ws: web.WebSocketResponse | None = None
        self.intents = 0  # from IDENTIFY: Discord only sends the events a client asked for
        self.shard = (0, 1)  # from IDENTIFY: (shard_id, shard_count)

    def receives(self, guild_id: int | None) -> bool:
        """Whether this session gets the events of server ``guild_id`` (None: a DM's, shard 0's)."""
        shard_id, shard_count = self.shard
        return (shard_of(guild_id, shard_count) if guild_id is not None else 0) == shard_id


class Gateway:
    """Every bot session of one sandbox, and the websocket handler they connect to."""

    def __init__(self, sandbox: Sandbox, *, heartbeat_interval_ms: int, heartbeat_ack_delay: float) -> None:
        self.sandbox = sandbox
        self.state = sandbox.state
        self.heartbeat_interval_ms = heartbeat_interval_ms
        # Discord's ACK crosses the network, so it reaches the client well after the client's
        # heartbeat thread has recorded its send time; see HEARTBEAT_ACK_DELAY.
        self.heartbeat_ack_delay = heartbeat_ack_delay
        self.heartbeats: list[tuple[float, int | None]] = []  # (monotonic time, d) of every op 1 the bot sent
        self.sessions: dict[str, Session] = {}
        self.identify_count = 0
        self.resume_count = 0
        self.bot_voice_requests: list[VoiceStateRequestPayload] = []
        self.recommended_shards = 1  # the "shards" of GET /gateway/bot, which AutoShardedClient runs
        self._background: set[asyncio.Task[None]] = set()

    async def invalidate_sessions(self, *, resumable: bool = False) -> int:
        """Invalidate every connected session as Discord does (op 9); how many were told.

        Not resumable (``d: false``): the sessions end and each bot identifies again, getting READY
        and its servers anew; what happened meanwhile is not replayed, as on Discord. Resumable
        (``d: true``): the bot closes its connection and RESUMEs the same session, and every event
        it missed is replayed in order."""
        sessions = list(self.sessions.values())
        if not resumable:
            self.sessions = {}
        return await self._tell(sessions, _control(OP_INVALID_SESSION, resumable))

    async def request_reconnect(self) -> int:
        """Ask every connected bot to reconnect and resume (op 7), as Discord does before it moves a
        session to another gateway server; how many were asked. The events sent between this and
        the bot's RESUME are replayed to it then."""
        return await self._tell(list(self.sessions.values()), _control(OP_RECONNECT, None))

    async def _tell(self, sessions: list[Session], frame: ControlFrame) -> int:
        told = 0
        for session in sessions:
            if session.ws is not None and not session.ws.closed:
                try:
                    await session.ws.send_str(json.dumps(frame))
                    told += 1
                except ConnectionResetError:
                    pass
        return told

    async def announce_guild(self, guild_id: int) -> None:
        """A server the bot has just been added to: GUILD_CREATE to the sessions of its shard."""
        await self.dispatch("GUILD_CREATE", self.state.guild_payload(guild_id), guild_id=guild_id)

    def _channel_of(self, event: str, data: EventPayload) -> Channel | None:
        """The server channel a message, reaction or typing event happens in (None: another event, a DM)."""
        if not event.startswith(("MESSAGE_", "TYPING_")):
            return None
        named = data.get("channel_id")
        channel = self.state.channels.get(int(named)) if isinstance(named, (str, int)) and named else None
        return channel if channel is not None and channel.guild_id is not None else None

    async def close(self) -> None:
        """Stop the pending heartbeat ACKs and close every bot websocket (going away)."""
        for task in list(self._background):
            task.cancel()
        for session in self.sessions.values():
            if session.ws is not None and not session.ws.closed:
                await session.ws.close(code=1001)

    async def dispatch(self, event: str, data: EventPayload, *, intent: int = 0, guild_id: int | None = None) -> None:
        """Send a gateway event to every bot session whose shard has the server the event names in
        its ``guild_id`` (or ``guild_id``; none: a DM's, shard 0) (``intent``: only those that
        identified with it). A message's events reach only bots that can see its channel, as on Discord."""
        if guild_id is None:
            named = data.get("guild_id")
            guild_id = int(named) if isinstance(named, (str, int)) and named else None
        channel = self._channel_of(event, data)
        for session in list(self.sessions.values()):
            if (intent and not session.intents & intent) or not session.receives(guild_id):
                continue
            if channel is not None and not self.state.can_see(session.user, channel):
                continue
            if (guild_id is not None and event != "GUILD_DELETE" and guild_id in self.state.guilds
                    and not self.state.is_member(session.user, guild_id)):
                continue  # a server the bot is not in (any more)
            session.seq += 1
            sent = data
            if event in CONTENT_EVENTS and not session.intents & MESSAGE_CONTENT:
                sent = strip_content(cast(MessagePayload, data), session.user.id)
            payload: DispatchFrame = {"op": OP_DISPATCH, "t": event, "s": session.seq, "d": sent}
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

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        await ws.send_str(json.dumps(_control(OP_HELLO, {"heartbeat_interval": self.heartbeat_interval_ms})))
        session: Session | None = None
        async for raw in ws:
            if raw.type != WSMsgType.TEXT:
                continue
            msg = json.loads(raw.data)  # any JSON the bot sent: its "d" is typed below, by "op"
            op, d = msg.get("op"), msg.get("d")
            if op == OP_HEARTBEAT:
                # Only a client heartbeat is acknowledged, as Discord does, after the round trip.
                last_seq: int | None = d
                self.heartbeats.append((time.monotonic(), last_seq))
                self._spawn(self._heartbeat_ack(ws))
                await self.sandbox.wake()
            elif op == OP_IDENTIFY:
                identify: IdentifyPayload = d
                if identify.get("token") != self.sandbox.bot_token:
                    await ws.close(code=4004, message=b"Authentication failed.")
                    break
                if int(identify.get("intents") or 0) & MESSAGE_CONTENT and not self.sandbox.message_content_enabled:
                    # The privileged intent is off for this application (its developer portal switch).
                    await ws.close(code=4014, message=b"Disallowed intent(s).")
                    break
                shard = _shard(identify.get("shard"))
                if shard is None:
                    await ws.close(code=4010, message=b"Invalid shard.")
                    break
                self.identify_count += 1
                session = Session(secrets.token_hex(16), self.state.bot_user)
                session.intents = int(identify.get("intents") or 0)
                session.shard = shard
                session.ws = ws
                self.sessions[session.id] = session
                guilds = [g.id for g in self.state.guilds.values()
                          if session.receives(g.id) and self.state.is_member(session.user, g.id)]
                ready: ReadyPayload = {
                    "v": 10, "user": self.state.bot_user.payload(),
                    "guilds": [{"id": str(g), "unavailable": True} for g in guilds],
                    "session_id": session.id, "resume_gateway_url": self.sandbox.gateway_url, "private_channels": [],
                    "relationships": [], "application": {"id": str(self.state.application_id), "flags": 0},
                    "session_type": "normal", "shard": list(shard),
                }
                await self._send_event(session, "READY", ready)
                for guild_id in guilds:
                    await self._send_event(session, "GUILD_CREATE", self.state.guild_payload(guild_id))
                await self.sandbox.wake()  # wait_for(): a bot (re)joined
            elif op == OP_RESUME:
                resume: ResumePayload = d
                session = self.sessions.get(resume.get("session_id", ""))
                if session is None or resume.get("token") != self.sandbox.bot_token:
                    await ws.send_str(json.dumps(_control(OP_INVALID_SESSION, False)))
                    continue
                sent = int(resume.get("seq") or 0)
                if session.backlog and session.backlog[0]["s"] > sent + 1:
                    # Older than the events kept for it: Discord cannot replay them either.
                    self.sessions.pop(session.id, None)
                    await ws.send_str(json.dumps(_control(OP_INVALID_SESSION, False)))
                    session = None
                    continue
                self.resume_count += 1
                # Replay what it missed, in order, until nothing newer came meanwhile; only then do
                # new events go to this connection directly (no event overtakes the replay).
                while pending := [p for p in session.backlog if p["s"] > sent]:
                    for payload in pending:
                        await ws.send_str(json.dumps(payload))
                        sent = payload["s"]
                session.ws = ws
                await self._send_event(session, "RESUMED", ResumedPayload())
            elif op == OP_VOICE_STATE:
                voice: VoiceStateRequestPayload = d
                await self._bot_voice_state(voice)
            elif op in (OP_PRESENCE, OP_REQUEST_MEMBERS):
                pass
            else:
                self.sandbox.unimplemented.append(f"gateway op {op}")
        if session is not None and session.ws is ws:
            session.ws = None
        return ws

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _heartbeat_ack(self, ws: web.WebSocketResponse) -> None:
        await asyncio.sleep(self.heartbeat_ack_delay)
        if not ws.closed:
            try:
                await ws.send_str(json.dumps(_control(OP_HEARTBEAT_ACK, None)))
            except ConnectionResetError:
                pass

    async def request_heartbeat(self) -> None:
        """Ask every connected bot for an immediate heartbeat (op 1 from the server), as Discord may."""
        for session in self.sessions.values():
            if session.ws is not None and not session.ws.closed:
                await session.ws.send_str(json.dumps(_control(OP_HEARTBEAT, None)))

    async def _send_event(self, session: Session, event: str, data: EventPayload) -> None:
        session.seq += 1
        payload: DispatchFrame = {"op": OP_DISPATCH, "t": event, "s": session.seq, "d": data}
        session.backlog.append(payload)
        assert session.ws is not None
        try:
            await session.ws.send_str(json.dumps(payload))
        except ConnectionResetError:  # it is in the backlog: a RESUME replays it
            session.ws = None

    async def _bot_voice_state(self, d: VoiceStateRequestPayload) -> None:
        """The bot asked to join/leave voice in a server (op 4): answer as Discord does. A server
        that is not there (any more: a new world began) gets no answer."""
        self.bot_voice_requests.append(d)
        guild = self.state.guilds.get(int(d["guild_id"]) if d.get("guild_id") else self.state.guild_id)
        if guild is None:
            return
        requested = d.get("channel_id")
        channel_id = int(requested) if requested else None
        if channel_id is None:
            guild.voice_states.pop(self.state.bot_user.id, None)
        else:
            guild.voice_states[self.state.bot_user.id] = channel_id
        state = self.state.voice_state_payload(self.state.bot_user.id, channel_id, guild_id=guild.id)
        state["session_id"] = f"bot-voice-{guild.id}"
        await self.dispatch("VOICE_STATE_UPDATE", state)
        if channel_id is not None:
            if self.sandbox.voice_server is not None:  # the voice server learns the session's channel (its DAVE group)
                self.sandbox.voice_server.route(state["session_id"], channel_id)
            await self.dispatch("VOICE_SERVER_UPDATE", {
                "token": self.sandbox.voice_token, "guild_id": str(guild.id),
                "endpoint": self.sandbox.voice_endpoint or f"{self.sandbox.host}:{self.sandbox.port}",
            })


def _control(op: int, d: ControlData) -> ControlFrame:
    """A frame other than a dispatch: no sequence number, no event name."""
    return {"op": op, "d": d, "s": None, "t": None}


def _shard(value: list[int] | None) -> tuple[int, int] | None:
    """IDENTIFY's ``shard`` as (shard_id, shard_count): (0, 1) when it has none, None when invalid."""
    if value is None:
        return (0, 1)
    try:
        shard_id, shard_count = (int(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (shard_id, shard_count) if 0 <= shard_id < shard_count else None
