"""The loopback voice server against discord.py's own voice websocket and packet encryption.

No gateway here (the sandbox does op 4 → VOICE_STATE_UPDATE + VOICE_SERVER_UPDATE): a small stand-in
for ``VoiceConnectionState`` drives the real ``discord.gateway.DiscordVoiceWebSocket`` handshake
over wss with the bot-side TLS setup a test would use (``connector=TCPConnector(ssl=...)``), then
sends Opus frames built by ``VoiceClient._get_voice_packet`` (real RTP header + AEAD encryption).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
import types
from collections.abc import Callable
from typing import Any

import aiohttp
import discord
import pytest
from discord.gateway import DiscordVoiceWebSocket
from discord.http import HTTPClient

from sandbox.voice import MODE, OPUS_SILENCE, VoiceServer


class StubState:
    """The attributes of discord.voice_state.VoiceConnectionState the voice websocket touches."""

    supported_modes = discord.VoiceClient.supported_modes

    def __init__(self, endpoint: str, token: str, http: HTTPClient, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint, self.token = endpoint, token
        self.server_id, self.session_id = 1234, "session-abc"
        self.user = types.SimpleNamespace(id=42)
        self.max_dave_protocol_version = 0
        self.voice_client = types.SimpleNamespace(_state=types.SimpleNamespace(http=http), loop=loop)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.setblocking(False)
        self.ssrc = 0
        self.ip: str | None = None
        self.port: int | None = None
        self.mode: str | None = None
        self.secret_key: list[int] | None = None
        self.dave_session = None
        self.dave_protocol_version = None
        self._listeners: list[Callable[[bytes], Any]] = []
        self._reader = loop.create_task(self._read())

    async def _read(self) -> None:  # discord.py runs a reader thread; a task does the same here
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.socket, 2048)
            for cb in list(self._listeners):
                cb(data)

    def add_socket_listener(self, cb: Callable[[bytes], Any]) -> None:
        self._listeners.append(cb)

    def remove_socket_listener(self, cb: Callable[[bytes], Any]) -> None:
        if cb in self._listeners:
            self._listeners.remove(cb)

    def close(self) -> None:
        self._reader.cancel()
        self.socket.close()


async def http_client(server: VoiceServer, loop: asyncio.AbstractEventLoop) -> HTTPClient:
    """discord.py's HTTPClient with the session static_login() would make, trusting the test cert."""
    http = HTTPClient(loop, connector=aiohttp.TCPConnector(limit=0, ssl=server.client_ssl_context()))
    http._HTTPClient__session = aiohttp.ClientSession(  # type: ignore[attr-defined]
        connector=http.connector, ws_response_class=discord.gateway.DiscordClientWebSocketResponse,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    return http


@pytest.mark.asyncio
async def test_handshake_and_encrypted_audio_with_discord_py() -> None:
    server = VoiceServer()
    endpoint = await server.start()
    loop = asyncio.get_running_loop()
    http = await http_client(server, loop)
    state = StubState(endpoint, server.token, http, loop)
    ws = None
    try:
        ws = await DiscordVoiceWebSocket.from_connection_state(state)  # type: ignore[arg-type]
        async with asyncio.timeout(10):  # the loop of VoiceConnectionState._handshake_websocket
            while not state.ip:
                await ws.poll_event()
            while ws.secret_key is None:
                await ws.poll_event()
        assert server.identify == {"server_id": "1234", "user_id": "42", "session_id": "session-abc",
                                   "token": server.token, "max_dave_protocol_version": 0}
        assert state.ssrc == server.ssrc and state.mode == MODE and state.dave_protocol_version == 0
        assert bytes(state.secret_key or []) == server.secret_key
        assert state.ip == "127.0.0.1" and state.port == state.socket.getsockname()[1]
        assert server.selected == {"protocol": "udp", "data": {"address": "127.0.0.1", "port": state.port,
                                                               "mode": MODE}}
        await server.wait_until(lambda: bool(server.speaking))  # load_secret_key sends SPEAKING(none)
        assert server.speaking[0]["ssrc"] == server.ssrc

        # Packets exactly as VoiceClient.send_audio_packet builds them.
        client = types.SimpleNamespace(
            _connection=state, sequence=0, timestamp=0, ssrc=state.ssrc, mode=state.mode,
            secret_key=state.secret_key, _incr_nonce=0,
        )
        client.checked_add = lambda attr, value, limit: setattr(
            client, attr, 0 if getattr(client, attr) + value > limit else getattr(client, attr) + value
        )
        client._encrypt_aead_xchacha20_poly1305_rtpsize = functools.partial(
            discord.VoiceClient._encrypt_aead_xchacha20_poly1305_rtpsize, client
        )
        frames = [bytes([0x78, i]) + b"opus-frame" * 5 for i in range(20)] + [OPUS_SILENCE] * 5
        for i, frame in enumerate(frames):
            client.sequence, client.timestamp = i, i * 960
            packet = discord.VoiceClient._get_voice_packet(client, frame)  # type: ignore[arg-type]
            state.socket.sendto(packet, ("127.0.0.1", server.udp_port))
        await server.wait_until(lambda: server.received_packets >= len(frames))
        assert server.decrypted_frames == 25 and server.audio_frames == 20
        assert server.frames == frames
        assert server.errors == []

        # A heartbeat is acknowledged (the client would otherwise reconnect after 60 s), after a
        # network-like delay so that discord.py's keep-alive thread has recorded its send time.
        sent = time.perf_counter()
        await ws.send_as_json({"op": 3, "d": {"t": 123, "seq_ack": ws.seq_ack}})
        msg = await asyncio.wait_for(ws.ws.receive(), 5)
        assert '"op": 6' in msg.data and '"t": 123' in msg.data
        assert time.perf_counter() - sent >= server.ack_delay * 0.9
    finally:
        if ws is not None:
            await ws.close()
        state.close()
        await http.close()
        await server.close()


@pytest.mark.asyncio
async def test_wrong_token_is_refused_and_bad_packets_are_counted() -> None:
    server = VoiceServer()
    endpoint = await server.start()
    loop = asyncio.get_running_loop()
    http = await http_client(server, loop)
    state = StubState(endpoint, "not-the-token", http, loop)
    try:
        ws = await DiscordVoiceWebSocket.from_connection_state(state)  # type: ignore[arg-type]
        with pytest.raises(discord.errors.ConnectionClosed) as info:
            async with asyncio.timeout(5):
                while True:
                    await ws.poll_event()
        assert info.value.code == 4004
        state.socket.sendto(b"\x80\x78" + b"\x00" * 40, ("127.0.0.1", server.udp_port))
        await server.wait_until(lambda: server.received_packets >= 1)
        assert server.decrypted_frames == 0 and server.errors[-1] == "an RTP packet did not decrypt"
    finally:
        state.close()
        await http.close()
        await server.close()


@pytest.mark.asyncio
async def test_untrusted_client_cannot_connect() -> None:
    server = VoiceServer()
    endpoint = await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.ws_connect(f"wss://{endpoint}/?v=8")
    finally:
        await server.close()
