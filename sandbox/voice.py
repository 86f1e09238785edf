"""The sandbox's loopback Discord voice server for discord.py 2.7.1 (voice websocket + UDP media).

discord.py always connects to ``wss://{endpoint}/?v=8``, so the server speaks TLS with a
self-signed certificate made at start (``openssl`` CLI: the ``cryptography`` package is not
installed here; without openssl :meth:`VoiceServer.start` raises :class:`VoiceUnavailable`).
The sandbox starts it on request and the bot trusts it through its own aiohttp connector::

    sandbox = await Sandbox().start(voice=True)          # or: await sandbox.enable_voice()
    bot = TrainerBot(settings, **sandbox.bot_kwargs())   # connector=TCPConnector(ssl=<trusts the cert>)
    # the sandbox gateway answers op 4 with VOICE_STATE_UPDATE (session_id) and
    # VOICE_SERVER_UPDATE {"token": server.token, "guild_id": ..., "endpoint": server.endpoint}

Flow served: HELLO on connect → IDENTIFY (token checked, else close 4004) → READY {ssrc, ip,
port, modes} → UDP IP discovery (74-byte packets) → SELECT_PROTOCOL → SESSION_DESCRIPTION {mode,
secret_key, dave_protocol_version: 0} (no DAVE session) → HEARTBEAT/ACK, SPEAKING. RTP packets are
decrypted with ``nacl.secret.Aead`` (``aead_xchacha20_poly1305_rtpsize``) and counted.
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.secret
from aiohttp import WSMsgType, web

from sandbox.payloads import (
    SelectProtocolPayload,
    SpeakingPayload,
    VoiceFrame,
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


class VoiceServer:
    """Loopback voice endpoint; counters and captured Opus frames are plain attributes."""

    def __init__(self, host: str = "127.0.0.1", *, ack_delay: float = 0.05) -> None:
        self.host = host
        # As on the gateway (sandbox.gateway.HEARTBEAT_ACK_DELAY): an instant ACK can beat discord.py's
        # keep-alive thread to recording its send time, and the latency then reads one interval.
        self.ack_delay = ack_delay
        self._acks: set[asyncio.Task[None]] = set()
        self.token = secrets.token_hex(16)
        self.secret_key = os.urandom(32)
        self.ssrc = random.randint(1, 2**31)
        self.received_packets = 0  # every non-discovery UDP datagram
        self.decrypted_frames = 0  # RTP packets that decrypted with the session key
        self.audio_frames = 0  # decrypted frames that are not Opus silence
        self.frames: list[bytes] = []  # decrypted Opus payloads
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

    async def start(self) -> str:
        """Start the UDP and wss listeners on ephemeral ports; returns the endpoint "host:port"."""
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        with tempfile.TemporaryDirectory(prefix="voice-cert-") as tmp:
            cert, key = await asyncio.to_thread(_self_signed, Path(tmp))
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ctx.load_cert_chain(cert, key)
            self._cert_pem = cert.read_text()
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
        for ws in list(self._sockets):  # aiohttp would wait for open websockets on cleanup
            await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=True)
        await ws.prepare(request)
        self.connections += 1
        self._sockets.add(ws)
        self._event("connected")
        try:
            return await self._serve(ws)
        finally:
            self._sockets.discard(ws)
            if self._speaking_now:
                self._speaking_now = False
                self.speaking_stops += 1
                self._event("silent")
            self._event("disconnected")
            self._notify()

    async def _serve(self, ws: web.WebSocketResponse) -> web.WebSocketResponse:
        seq = 0

        async def send(op: int, d: VoiceServerPayload) -> None:
            nonlocal seq
            seq += 1
            frame: VoiceFrame = {"op": op, "d": d, "seq": seq}
            await ws.send_str(json.dumps(frame))

        await send(8, {"heartbeat_interval": 41250.0, "v": 8})  # HELLO
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue  # binary frames are DAVE/MLS; with protocol version 0 none are expected
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
                await send(2, {"ssrc": self.ssrc, "ip": self.host, "port": self.udp_port,
                               "modes": [MODE], "experiments": []})
            elif op == 1:  # SELECT_PROTOCOL
                selected: SelectProtocolPayload = d
                self.selected = selected
                mode = selected.get("data", {}).get("mode")
                if mode != MODE:
                    self.errors.append(f"SELECT_PROTOCOL with mode {mode!r}")
                await send(4, {"mode": mode, "secret_key": list(self.secret_key), "dave_protocol_version": 0,
                               "audio_codec": "opus", "media_session_id": secrets.token_hex(8)})
            elif op == 3:  # HEARTBEAT → HEARTBEAT_ACK, after a network-like round trip
                nonce: int | None = d.get("t") if isinstance(d, dict) else d
                task = asyncio.create_task(self._ack(send, ws, {"t": nonce}))
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
                if resume.get("token") != self.token:
                    await ws.close(code=4006, message=b"Session no longer valid")
                    break
                await send(9, None)  # RESUMED
            self._notify()
        return ws

    async def _ack(self, send: Callable[[int, VoiceServerPayload], Awaitable[None]], ws: web.WebSocketResponse,
                   d: VoiceHeartbeatAckPayload) -> None:
        await asyncio.sleep(self.ack_delay)
        if not ws.closed:
            try:
                await send(6, d)
            except ConnectionResetError:
                pass

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
