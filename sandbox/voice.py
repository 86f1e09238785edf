"""The sandbox's loopback Discord voice server for discord.py 2.7.1 (voice websocket + UDP media).

discord.py always connects to ``wss://{endpoint}/?v=8``, so the server speaks TLS with a
self-signed certificate made at start (``openssl`` CLI: the ``cryptography`` package is not
installed here; without openssl :meth:`VoiceServer.start` raises :class:`VoiceUnavailable`).
The sandbox starts it on request and the bot trusts it through its own aiohttp connector::

    sandbox = await Sandbox().start(voice=True)          # or: await sandbox.enable_voice()
    bot = TrainerBot(settings, **sandbox.bot_kwargs())   # connector=TCPConnector(ssl=<trusts the cert>)
    # the sandbox gateway answers op 4 with VOICE_STATE_UPDATE (session_id) and
    # VOICE_SERVER_UPDATE {"token": server.token, "guild_id": ..., "endpoint": server.endpoint}

Flow served: HELLO on connect → IDENTIFY (token checked, else close 4004; a client without DAVE
is closed with 4017, as Discord has done since 2026-03-01) → READY {ssrc, ip, port, modes} → UDP IP
discovery (74-byte packets) → SELECT_PROTOCOL → SESSION_DESCRIPTION {mode, secret_key,
dave_protocol_version: 1} → HEARTBEAT/ACK, SPEAKING. RTP packets are decrypted with
``nacl.secret.Aead`` (``aead_xchacha20_poly1305_rtpsize``) and counted; what is inside is the
client's DAVE frame (``frames``), which only members of the call's MLS group can open.

DAVE (https://daveprotocol.com): the server is each call's MLS delivery service and external
sender, as Discord's voice gateway is. Each voice channel is one call and one MLS group (group id:
the channel id, big endian). It sends its external sender package (op 25) after
SESSION_DESCRIPTION, checks each key package (op 26: user id, lifetime, signature), proposes signed
Add/Remove proposals (op 27, append or revoke), picks the first valid commit of an epoch (op 28),
announces it to the group (op 29) and sends each new member its welcome (op 30) under a transition
id; when every member is ready (op 23, or after :attr:`VoiceServer.transition_timeout`) it executes
the transition (op 22). A member left alone gets the sole member reset (op 24 epoch 1 + op 21
transition 0); a member that cannot process a commit or welcome (op 31) is removed and re-added
with its new key package. ``VoiceServer(dave=False)`` serves transport encryption only (as Discord
does for stage channels). The MLS pieces are in :mod:`sandbox.mls`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
import shutil
import ssl
import struct
import subprocess
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.secret
from aiohttp import WSMsgType, web

from sandbox import mls
from sandbox.payloads import (
    SelectProtocolPayload,
    SpeakingPayload,
    VoiceHeartbeatAckPayload,
    VoiceIdentifyPayload,
    VoiceResumePayload,
    VoiceServerPayload,
)

log = logging.getLogger(__name__)

MODE = "aead_xchacha20_poly1305_rtpsize"
OPENSSL = "openssl"  # binary name; tests monkeypatch it to simulate a machine without openssl
FRAME_SECONDS = 0.02  # discord.py sends one 20 ms Opus frame per packet
OPUS_SILENCE = b"\xf8\xff\xfe"
DAVE_VERSION = 1
DAVE_MAGIC = b"\xfa\xfa"  # the last two bytes of every DAVE-encrypted frame
# Voice gateway opcodes (https://daveprotocol.com/#voice-gateway-opcodes)
CLIENTS_CONNECT, CLIENT_DISCONNECT = 11, 13
PREPARE_TRANSITION, EXECUTE_TRANSITION, READY_FOR_TRANSITION, PREPARE_EPOCH = 21, 22, 23, 24
MLS_EXTERNAL_SENDER, MLS_KEY_PACKAGE, MLS_PROPOSALS, MLS_COMMIT_WELCOME = 25, 26, 27, 28
MLS_ANNOUNCE_COMMIT, MLS_WELCOME, MLS_INVALID_COMMIT_WELCOME = 29, 30, 31
PROPOSALS_APPEND, PROPOSALS_REVOKE = 0, 1


class VoiceUnavailable(RuntimeError):
    """The voice server cannot run here (no ``openssl`` to make its certificate)."""


def _self_signed(folder: Path) -> tuple[Path, Path]:
    openssl = shutil.which(OPENSSL)
    if openssl is None:
        raise VoiceUnavailable("openssl is not installed (apt-get install openssl)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=30,
        )
    except subprocess.CalledProcessError as exc:  # e.g. an openssl too old for -addext
        detail = exc.stderr.decode(errors="replace").strip().splitlines()[:1]
        raise VoiceUnavailable(f"openssl could not make a certificate ({detail[0] if detail else exc})") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VoiceUnavailable(f"openssl could not make a certificate ({exc})") from None
    return cert, key


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: VoiceServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) == 74 and data[:2] == b"\x00\x01":  # IP discovery request
            ssrc = struct.unpack_from(">I", data, 4)[0]
            reply = struct.pack(">HHI", 2, 70, ssrc) + addr[0].encode().ljust(64, b"\x00") + struct.pack(">H", addr[1])
            assert self.transport is not None
            self.transport.sendto(reply, addr)
            self.server.discovered.append(addr)
        else:
            self.server._rtp(data)
        self.server._notify()


class _Conn:
    """One voice websocket: JSON and binary frames share the v8 sequence numbers."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.seq = 0
        self.user_id = 0
        self.channel_id: int | None = None
        self.dave = False  # this connection speaks DAVE (its SESSION_DESCRIPTION said version 1)
        self.key_package: mls.KeyPackage | None = None  # while it waits to be added to the group

    async def send(self, op: int, d: VoiceServerPayload | dict[str, Any]) -> None:
        self.seq += 1
        frame = {"op": op, "d": d, "seq": self.seq}
        if not self.ws.closed:
            await self.ws.send_str(json.dumps(frame))

    async def send_binary(self, op: int, payload: bytes) -> None:
        self.seq += 1
        if not self.ws.closed:
            await self.ws.send_bytes(struct.pack(">HB", self.seq & 0xFFFF, op) + payload)


@dataclass
class Transition:
    """A commit announced under a transition id, waiting for its members to be ready (op 23)."""

    id: int
    epoch: int
    waiting: set[int]
    timer: asyncio.TimerHandle | None = None


@dataclass
class Call:
    """One voice channel's MLS group, as the voice gateway sees it (it never holds a group secret)."""

    channel_id: int
    peers: dict[int, _Conn] = field(default_factory=dict)  # user id -> connection speaking DAVE
    epoch: int = 0  # 0: not established (every member pending)
    leaves: list[int | None] = field(default_factory=list)  # leaf index -> user id
    proposals: list[mls.Proposal] = field(default_factory=list)  # broadcast in this epoch, not revoked
    stale: set[int] = field(default_factory=set)  # members flagged for removal (left, or reset by op 31)
    transition: Transition | None = None
    next_transition: int = 1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def group_id(self) -> bytes:
        return struct.pack(">Q", self.channel_id)

    @property
    def established(self) -> bool:
        return self.epoch > 0

    def members(self) -> list[int]:
        return [uid for uid in self.leaves if uid is not None]


class VoiceServer:
    """Loopback voice endpoint; counters and captured Opus frames are plain attributes."""

    def __init__(self, host: str = "127.0.0.1", *, ack_delay: float = 0.05, dave: bool = True,
                 transition_timeout: float = 2.0) -> None:
        self.host = host
        # As on the gateway (sandbox.gateway.HEARTBEAT_ACK_DELAY): an instant ACK can beat discord.py's
        # keep-alive thread to recording its send time, and the latency then reads one interval.
        self.ack_delay = ack_delay
        self.dave = dave
        self.transition_timeout = transition_timeout  # Discord executes a transition without stragglers
        self._acks: set[asyncio.Task[None]] = set()
        self.token = secrets.token_hex(16)
        self.secret_key = os.urandom(32)
        self.ssrc = random.randint(1, 2**31)
        self.received_packets = 0  # every non-discovery UDP datagram
        self.decrypted_frames = 0  # RTP packets that decrypted with the session key
        self.audio_frames = 0  # decrypted frames that are not Opus silence
        self.dave_frames = 0  # decrypted frames that carry DAVE's end-to-end encryption (magic marker)
        self.frames: list[bytes] = []  # decrypted payloads: Opus, or DAVE frames of Opus
        self.discovered: list[tuple[str, int]] = []
        self.identify: VoiceIdentifyPayload | None = None
        self.selected: SelectProtocolPayload | None = None
        self.speaking: list[SpeakingPayload] = []  # every SPEAKING payload, in order
        self.speaking_starts = 0  # SPEAKING with a non-zero flag after a zero one (or first)
        self.speaking_stops = 0
        self._speaking_now = False
        self._sockets: set[web.WebSocketResponse] = set()
        self._listeners: list[Callable[[str], None]] = []
        self.connections = 0
        self.errors: list[str] = []
        # DAVE: session id -> voice channel (the gateway routes each voice session), calls by channel,
        # and what the tests look at: (op, user id, detail) for every DAVE message either way.
        self.sessions: dict[str, int] = {}
        self.calls: dict[int, Call] = {}
        self.dave_log: list[tuple[int, int, str]] = []
        self.stale_commits = 0  # commits that lost the race for their epoch
        self.sender: mls.ExternalSender | None = None
        self._cert_pem = ""
        self._runner: web.AppRunner | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self.udp_port = 0
        self.port = 0
        self.endpoint = ""
        self._changed: asyncio.Event | None = None

    @property
    def connected(self) -> int:
        """Voice websockets open right now."""
        return len(self._sockets)

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts this server's certificate (give it to the bot's connector)."""
        return ssl.create_default_context(cadata=self._cert_pem)

    def route(self, session_id: str, channel_id: int) -> None:
        """The gateway sent this voice session (VOICE_STATE_UPDATE session_id) to a voice channel."""
        self.sessions[session_id] = channel_id

    async def start(self) -> str:
        """Start the UDP and wss listeners on ephemeral ports; returns the endpoint "host:port"."""
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        with tempfile.TemporaryDirectory(prefix="voice-cert-") as tmp:
            cert, key = await asyncio.to_thread(_self_signed, Path(tmp))
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ctx.load_cert_chain(cert, key)
            self._cert_pem = cert.read_text()
        if self.dave:
            try:
                self.sender = await asyncio.to_thread(mls.ExternalSender)
            except mls.MLSError as exc:
                raise VoiceUnavailable(str(exc)) from None
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.host, 0))
        self._udp = transport
        self.udp_port = transport.get_extra_info("sockname")[1]
        app = web.Application()
        app.router.add_get("/", self._ws)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=server_ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.endpoint = f"{self.host}:{self.port}"
        return self.endpoint

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """``callback(event)`` for "connected", "speaking", "silent" and "disconnected" (the terminal chat)."""
        self._listeners.append(callback)

    def _event(self, event: str) -> None:
        for callback in list(self._listeners):
            callback(event)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds (checked after every event the server sees)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                assert self._changed is not None, "start() the server first"
                await self._changed.wait()

    async def disconnect_all(self, code: int = 4014) -> None:
        """Close every voice websocket as Discord does when the user is taken out of the call
        (4014: disconnected, e.g. the channel is gone); the server keeps running."""
        for ws in list(self._sockets):
            await ws.close(code=code, message=b"Disconnected.")

    async def close(self) -> None:
        for task in list(self._acks):
            task.cancel()
        for call in self.calls.values():
            if call.transition is not None and call.transition.timer is not None:
                call.transition.timer.cancel()
        for ws in list(self._sockets):  # aiohttp would wait for open websockets on cleanup
            await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self.sender is not None:
            self.sender.close()
            self.sender = None

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=True)
        await ws.prepare(request)
        self.connections += 1
        self._sockets.add(ws)
        self._event("connected")
        conn = _Conn(ws)
        try:
            return await self._serve(conn)
        finally:
            self._sockets.discard(ws)
            if self._speaking_now:
                self._speaking_now = False
                self.speaking_stops += 1
                self._event("silent")
            if conn.dave:
                await self._leave(conn)
            self._event("disconnected")
            self._notify()

    async def _serve(self, conn: _Conn) -> web.WebSocketResponse:
        ws = conn.ws
        await conn.send(8, {"heartbeat_interval": 41250.0, "v": 8})  # HELLO
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                await self._binary(conn, msg.data)
                self._notify()
                continue
            if msg.type is not WSMsgType.TEXT:
                continue
            payload = json.loads(msg.data)
            op = payload.get("op")
            d: Any = payload.get("d") or {}  # any JSON the client sent: typed below, by op
            if op == 0:  # IDENTIFY
                identify: VoiceIdentifyPayload = d
                self.identify = identify
                if identify.get("token") != self.token:
                    self.errors.append("IDENTIFY with a wrong token")
                    await ws.close(code=4004, message=b"Authentication failed")
                    break
                if self.dave:
                    if int(identify.get("max_dave_protocol_version") or 0) < DAVE_VERSION:
                        # Discord since 2026-03-01: voice channels, DMs and Go Live are end-to-end encrypted.
                        await ws.close(code=4017, message=b"E2EE/DAVE protocol required")
                        break
                    channel = self.sessions.get(str(identify.get("session_id")))
                    if channel is None:  # a voice session the gateway never routed here
                        self.errors.append("IDENTIFY for an unknown voice session")
                        await ws.close(code=4006, message=b"Session no longer valid")
                        break
                    conn.user_id, conn.channel_id = int(identify["user_id"]), channel
                await conn.send(2, {"ssrc": self.ssrc, "ip": self.host, "port": self.udp_port,
                                    "modes": [MODE], "experiments": []})
            elif op == 1:  # SELECT_PROTOCOL
                selected: SelectProtocolPayload = d
                self.selected = selected
                mode = selected.get("data", {}).get("mode")
                if mode != MODE:
                    self.errors.append(f"SELECT_PROTOCOL with mode {mode!r}")
                version = DAVE_VERSION if conn.channel_id is not None else 0
                await conn.send(4, {"mode": mode, "secret_key": list(self.secret_key),
                                    "dave_protocol_version": version, "audio_codec": "opus",
                                    "media_session_id": secrets.token_hex(8)})
                if version:
                    await self._join(conn)
            elif op == 3:  # HEARTBEAT → HEARTBEAT_ACK, after a network-like round trip
                nonce: int | None = d.get("t") if isinstance(d, dict) else d
                task = asyncio.create_task(self._ack(conn, {"t": nonce}))
                self._acks.add(task)
                task.add_done_callback(self._acks.discard)
            elif op == 5:  # SPEAKING
                speaking: SpeakingPayload = d
                self.speaking.append(speaking)
                now = bool(speaking.get("speaking"))
                if now and not self._speaking_now:
                    self.speaking_starts += 1
                    self._speaking_now = now
                    self._event("speaking")
                elif self._speaking_now and not now:
                    self.speaking_stops += 1
                    self._speaking_now = now
                    self._event("silent")
            elif op == 7:  # RESUME
                resume: VoiceResumePayload = d
                # With DAVE the member left the group when its socket closed: it must identify anew.
                if resume.get("token") != self.token or self.dave:
                    await ws.close(code=4006, message=b"Session no longer valid")
                    break
                await conn.send(9, None)  # RESUMED
            elif op == READY_FOR_TRANSITION and conn.dave:
                self.dave_log.append((op, conn.user_id, str(d.get("transition_id"))))
                await self._ready(conn, int(d.get("transition_id", -1)))
            elif op == MLS_INVALID_COMMIT_WELCOME and conn.dave:
                self.dave_log.append((op, conn.user_id, str(d.get("transition_id"))))
                await self._invalid(conn)
            self._notify()
        return ws

    async def _ack(self, conn: _Conn, d: VoiceHeartbeatAckPayload) -> None:
        await asyncio.sleep(self.ack_delay)
        if not conn.ws.closed:
            try:
                await conn.send(6, d)
            except ConnectionResetError:
                pass

    # ----------------------------------------------------------------- DAVE
    def _call(self, conn: _Conn) -> Call:
        assert conn.channel_id is not None
        call = self.calls.get(conn.channel_id)
        if call is None:
            call = self.calls[conn.channel_id] = Call(conn.channel_id)
        return call

    async def _join(self, conn: _Conn) -> None:
        """After SESSION_DESCRIPTION: the others learn who connected (op 11), the newcomer gets the
        external sender (op 25) so that it can make its local group."""
        assert self.sender is not None
        call = self._call(conn)
        async with call.lock:
            others = [peer for uid, peer in call.peers.items() if uid != conn.user_id]
            call.peers[conn.user_id] = conn
            conn.dave = True
            for peer in others:
                await peer.send(CLIENTS_CONNECT, {"user_ids": [str(conn.user_id)]})
            if others:
                await conn.send(CLIENTS_CONNECT, {"user_ids": [str(peer.user_id) for peer in others]})
            await conn.send_binary(MLS_EXTERNAL_SENDER, self.sender.package())
            self.dave_log.append((MLS_EXTERNAL_SENDER, conn.user_id, "sent"))

    async def _binary(self, conn: _Conn, data: bytes) -> None:
        if not conn.dave or not data:
            self.errors.append("a binary voice frame outside a DAVE session")
            return
        op, payload = data[0], data[1:]
        if op == MLS_KEY_PACKAGE:
            await self._key_package(conn, payload)
        elif op == MLS_COMMIT_WELCOME:
            await self._commit(conn, payload)
        else:
            self.errors.append(f"unexpected binary voice opcode {op}")

    async def _key_package(self, conn: _Conn, payload: bytes) -> None:
        """A pending member's key package (op 26), checked as the voice gateway does, then proposed."""
        try:
            kp = mls.parse_key_package(payload)
        except mls.MLSError as exc:
            self._refuse(conn, MLS_KEY_PACKAGE, f"key package: {exc}")
            return
        if kp.user_id != conn.user_id:
            self._refuse(conn, MLS_KEY_PACKAGE, f"key package for user {kp.user_id}")
            return
        if kp.lifetime != mls.MAX_LIFETIME:
            self._refuse(conn, MLS_KEY_PACKAGE, "key package lifetime is not the maximum")
            return
        if not await asyncio.to_thread(mls.verify_key_package, kp):
            self._refuse(conn, MLS_KEY_PACKAGE, "key package signature does not verify")
            return
        self.dave_log.append((MLS_KEY_PACKAGE, conn.user_id, "accepted"))
        call = self._call(conn)
        async with call.lock:
            # A member replaces its key package: the old one is no longer proposed.
            await self._revoke(call, [p for p in call.proposals
                                      if p.kind == mls.PROPOSAL_ADD and p.user_id == conn.user_id])
            conn.key_package = kp
            if call.established and conn.user_id in call.members() and conn.user_id not in call.stale:
                # Re-keyed without telling us (op 31 first is the protocol): out with the old leaf.
                await self._propose_removal(call, conn.user_id)
            await self._propose_adds(call)
            await self._broadcast_proposals(call)

    def _refuse(self, conn: _Conn, op: int, why: str) -> None:
        self.errors.append(f"DAVE op {op} from {conn.user_id} refused: {why}")
        self.dave_log.append((op, conn.user_id, "refused: " + why))

    def _recipients(self, call: Call) -> list[_Conn]:
        """Who must process this epoch's proposals: the group's members, or while the group is not
        established, every pending member (each commits to its own local group; the first wins)."""
        if call.established:
            uids = [uid for uid in call.members() if uid not in call.stale]
        else:
            uids = [uid for uid, peer in call.peers.items() if peer.key_package is not None]
        return [call.peers[uid] for uid in uids if uid in call.peers]

    async def _propose_adds(self, call: Call) -> None:
        assert self.sender is not None
        proposed = {p.user_id for p in call.proposals if p.kind == mls.PROPOSAL_ADD}
        for uid, peer in call.peers.items():
            if peer.key_package is not None and uid not in proposed:
                call.proposals.append(await asyncio.to_thread(
                    self.sender.add, call.group_id, call.epoch, peer.key_package))

    async def _propose_removal(self, call: Call, uid: int) -> None:
        assert self.sender is not None
        call.stale.add(uid)
        for leaf, member in enumerate(call.leaves):
            if member == uid and not any(p.kind == mls.PROPOSAL_REMOVE and p.leaf == leaf for p in call.proposals):
                call.proposals.append(await asyncio.to_thread(self.sender.remove, call.group_id, call.epoch,
                                                              leaf, uid))

    async def _broadcast_proposals(self, call: Call) -> None:
        for peer in self._recipients(call):
            new = [p for p in call.proposals if peer.user_id not in p.sent_to
                   and not (p.kind == mls.PROPOSAL_ADD and p.user_id == peer.user_id)]
            if not new:
                continue
            for p in new:
                p.sent_to.add(peer.user_id)
            await peer.send_binary(MLS_PROPOSALS, bytes([PROPOSALS_APPEND])
                                   + mls.opaque(b"".join(p.message for p in new)))
            self.dave_log.append((MLS_PROPOSALS, peer.user_id, "append " + " ".join(
                f"{'add' if p.kind == mls.PROPOSAL_ADD else 'remove'}:{p.user_id}" for p in new)))

    async def _revoke(self, call: Call, proposals: list[mls.Proposal]) -> None:
        for p in proposals:
            call.proposals.remove(p)
            for uid in p.sent_to:
                if uid in call.peers:
                    await call.peers[uid].send_binary(MLS_PROPOSALS, bytes([PROPOSALS_REVOKE])
                                                      + mls.opaque(mls.opaque(p.ref)))
                    self.dave_log.append((MLS_PROPOSALS, uid, f"revoke {p.user_id}"))

    async def _commit(self, conn: _Conn, payload: bytes) -> None:
        """A commit (and welcome) from a member (op 28): the first valid one of an epoch wins."""
        call = self._call(conn)
        try:
            commit, welcome = mls.parse_commit(payload)
        except mls.MLSError as exc:
            self._refuse(conn, MLS_COMMIT_WELCOME, f"commit: {exc}")
            return
        async with call.lock:
            if commit.group_id != call.group_id:
                self._refuse(conn, MLS_COMMIT_WELCOME, "commit for another group")
                return
            if commit.epoch != call.epoch:  # another member's commit for this epoch won
                self.stale_commits += 1
                self.dave_log.append((MLS_COMMIT_WELCOME, conn.user_id, f"stale (epoch {commit.epoch})"))
                return
            committer_leaf = call.leaves.index(conn.user_id) if conn.user_id in call.members() else None
            expected = [p for p in call.proposals if call.established
                        or not (p.kind == mls.PROPOSAL_ADD and p.user_id == conn.user_id)]
            problem = None
            if call.established and commit.committer_leaf != committer_leaf:
                problem = "committer is not the member at that leaf"
            elif not call.established and commit.committer_leaf != 0:
                problem = "an initial commit must come from leaf 0"
            elif commit.inline_proposals or not commit.proposal_refs:
                problem = "a commit must reference proposals, and only by reference"
            elif sorted(commit.proposal_refs) != sorted(p.ref for p in expected):
                problem = "the commit does not reference exactly this epoch's proposals"
            elif commit.path_identity is not None and commit.path_identity != struct.pack(">Q", conn.user_id):
                problem = "the commit changes the committer's credential"
            adds = [p for p in expected if p.kind == mls.PROPOSAL_ADD]
            if problem is None and adds and not welcome:
                problem = "a commit adding members needs a welcome"
            if problem is not None:
                self._refuse(conn, MLS_COMMIT_WELCOME, problem)
                return
            self.dave_log.append((MLS_COMMIT_WELCOME, conn.user_id, f"won epoch {call.epoch}"))
            before = set(call.members()) if call.established else {conn.user_id}
            leaves: list[int | None] = list(call.leaves) if call.established else [conn.user_id]
            for p in expected:  # removes first, then adds into the leftmost free leaf (RFC 9420 §12.3)
                if p.kind == mls.PROPOSAL_REMOVE and p.leaf is not None and p.leaf < len(leaves):
                    leaves[p.leaf] = None
            while leaves and leaves[-1] is None:
                leaves.pop()
            for p in adds:
                if None in leaves:
                    leaves[leaves.index(None)] = p.user_id
                else:
                    leaves.append(p.user_id)
            call.leaves, call.epoch, call.proposals = leaves, call.epoch + 1, []
            call.stale &= set(call.members())
            tid = call.next_transition
            call.next_transition = tid % 0xFFFF + 1  # a non-zero uint16
            if call.transition is not None and call.transition.timer is not None:
                call.transition.timer.cancel()
            transition = call.transition = Transition(tid, call.epoch, set(call.members()) & set(call.peers))
            head = struct.pack(">H", tid)
            for uid in sorted(before & set(call.members())):
                if uid in call.peers:
                    await call.peers[uid].send_binary(MLS_ANNOUNCE_COMMIT, head + commit.message)
                    self.dave_log.append((MLS_ANNOUNCE_COMMIT, uid, f"transition {tid}"))
            for p in adds:
                peer = call.peers.get(p.user_id)
                if peer is None or peer.key_package is None:
                    continue
                own = mls.welcome_for(welcome, peer.key_package.ref)
                if own is None:
                    self._refuse(conn, MLS_COMMIT_WELCOME, f"the welcome has no secrets for {p.user_id}")
                    continue
                await peer.send_binary(MLS_WELCOME, head + own)
                self.dave_log.append((MLS_WELCOME, p.user_id, f"transition {tid}"))
            for uid in call.members():  # in the group now: their key packages are spent
                if uid in call.peers:
                    call.peers[uid].key_package = None
            loop = asyncio.get_running_loop()
            transition.timer = loop.call_later(
                self.transition_timeout, lambda: self._spawn(self._execute(call, transition)))
            # Members that sent a key package while this commit was in flight are proposed anew.
            await self._propose_adds(call)
            await self._broadcast_proposals(call)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _ready(self, conn: _Conn, transition_id: int) -> None:
        call = self._call(conn)
        transition = call.transition
        if transition is None or transition.id != transition_id:
            return
        transition.waiting.discard(conn.user_id)
        if not transition.waiting:
            await self._execute(call, transition)

    async def _execute(self, call: Call, transition: Transition) -> None:
        if call.transition is not transition:
            return
        call.transition = None
        if transition.timer is not None:
            transition.timer.cancel()
        for uid in call.members():
            if uid in call.peers:
                await call.peers[uid].send(EXECUTE_TRANSITION, {"transition_id": transition.id})
                self.dave_log.append((EXECUTE_TRANSITION, uid, f"transition {transition.id}"))
        self._notify()

    async def _invalid(self, conn: _Conn) -> None:
        """op 31: the member could not process a commit or welcome. It is taken out of the group and
        returns as a pending member with the key package it sends next."""
        call = self._call(conn)
        async with call.lock:
            conn.key_package = None
            await self._member_gone(call, conn.user_id)

    async def _leave(self, conn: _Conn) -> None:
        call = self._call(conn)
        async with call.lock:
            if call.peers.get(conn.user_id) is not conn:
                return
            del call.peers[conn.user_id]
            for peer in call.peers.values():
                await peer.send(CLIENT_DISCONNECT, {"user_id": str(conn.user_id)})
            if call.transition is not None:
                call.transition.waiting.discard(conn.user_id)
            await self._member_gone(call, conn.user_id)
            if not call.peers:
                if call.transition is not None and call.transition.timer is not None:
                    call.transition.timer.cancel()
                del self.calls[call.channel_id]

    async def _member_gone(self, call: Call, uid: int) -> None:
        await self._revoke(call, [p for p in call.proposals if p.kind == mls.PROPOSAL_ADD and p.user_id == uid])
        if not call.established or uid not in call.members():
            return
        remaining = [m for m in call.members() if m != uid and m not in call.stale and m in call.peers]
        if len(remaining) <= 1:
            await self._reset(call, remaining)
        else:
            await self._propose_removal(call, uid)
            await self._broadcast_proposals(call)

    async def _reset(self, call: Call, remaining: list[int]) -> None:
        """Sole member reset: no member keeps control of an established group on its own. The group
        starts again unestablished; the member sends a new key package (op 24 epoch 1 says so)."""
        if call.transition is not None and call.transition.timer is not None:
            call.transition.timer.cancel()
        call.epoch, call.leaves, call.proposals, call.stale, call.transition = 0, [], [], set(), None
        for uid in remaining:
            peer = call.peers[uid]
            peer.key_package = None
            await peer.send(PREPARE_EPOCH, {"protocol_version": DAVE_VERSION, "epoch": 1})
            await peer.send(PREPARE_TRANSITION, {"protocol_version": DAVE_VERSION, "transition_id": 0})
            self.dave_log.append((PREPARE_EPOCH, uid, "sole member reset"))
        # Pending members that are still here are proposed to the new group once it has members.
        await self._propose_adds(call)
        await self._broadcast_proposals(call)

    def _rtp(self, packet: bytes) -> None:
        self.received_packets += 1
        if len(packet) < 12 + 16 + 4 or packet[0] & 0xC0 != 0x80:
            self.errors.append(f"not an RTP packet ({len(packet)} bytes)")
            return
        header_len = 12 + 4 * (packet[0] & 0x0F)  # CSRCs
        if packet[0] & 0x10:  # extension: its 4-byte header is authenticated data, the rest is encrypted
            header_len += 4
        header, body, nonce = packet[:header_len], packet[header_len:-4], packet[-4:]
        try:
            opus = nacl.secret.Aead(self.secret_key).decrypt(body, header, nonce + b"\x00" * 20)
        except nacl.exceptions.CryptoError:
            self.errors.append("an RTP packet did not decrypt")
            return
        self.decrypted_frames += 1
        self.frames.append(opus)
        if opus != OPUS_SILENCE:
            self.audio_frames += 1
        if opus.endswith(DAVE_MAGIC):
            self.dave_frames += 1
