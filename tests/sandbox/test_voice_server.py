"""The loopback voice server against discord.py's own voice websocket and packet encryption.

No gateway here (the sandbox does op 4 → VOICE_STATE_UPDATE + VOICE_SERVER_UPDATE): a small stand-in
for ``VoiceConnectionState`` drives the real ``discord.gateway.DiscordVoiceWebSocket`` handshake
over wss with the bot-side TLS setup a test would use (``connector=TCPConnector(ssl=...)``), then
sends Opus frames built by ``VoiceClient._get_voice_packet`` (real RTP header + AEAD encryption).
Those tests run the server without DAVE (``dave=False``, as Discord serves stage channels); the DAVE
tests drive it with ``davey`` clients (:class:`tests.fakes.dave_member.DaveMember`), and
tests/commands/test_voice.py with the bot's own discord.py voice client.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import davey
import discord
import pytest
from discord.gateway import DiscordVoiceWebSocket
from discord.http import HTTPClient

from sandbox.voice import MODE, OPUS_SILENCE, VoiceServer
from tests.fakes.dave_member import DaveMember


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
    server = VoiceServer(dave=False)
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
    server = VoiceServer(dave=False)
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
        if ws._keep_alive is not None:  # HELLO started it; left running it outlives the test's loop
            ws._keep_alive.stop()
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


# ----------------------------------------------------------------- DAVE (https://daveprotocol.com)
CHANNEL = 5550001


@pytest.fixture
async def dave_server() -> AsyncIterator[VoiceServer]:
    server = VoiceServer(transition_timeout=1.0)
    await server.start()
    yield server
    await server.close()


async def members(server: VoiceServer, *specs: tuple[int, bool]) -> list[DaveMember]:
    out = []
    for user_id, commits in specs:
        member = DaveMember(server, user_id, CHANNEL, commits=commits)
        await member.connect()
        out.append(member)
    return out


def in_group(*ms: DaveMember, epoch: int) -> Callable[[], bool]:
    return lambda: all(m.session.ready and m.session.epoch == epoch for m in ms)


@pytest.mark.asyncio
async def test_client_without_dave_is_closed_with_4017(dave_server: VoiceServer) -> None:
    """discord.py without davey identifies with max_dave_protocol_version 0: Discord closes it (4017)."""
    loop = asyncio.get_running_loop()
    http = await http_client(dave_server, loop)
    state = StubState(dave_server.endpoint, dave_server.token, http, loop)
    ws = await DiscordVoiceWebSocket.from_connection_state(state)  # type: ignore[arg-type]
    try:
        with pytest.raises(discord.errors.ConnectionClosed) as info:
            async with asyncio.timeout(5):
                while True:
                    await ws.poll_event()
        assert info.value.code == 4017
    finally:
        if ws._keep_alive is not None:
            ws._keep_alive.stop()
        state.close()
        await http.close()


@pytest.mark.asyncio
async def test_dave_group_forms_grows_shrinks_and_resets(dave_server: VoiceServer) -> None:
    vs = dave_server
    a, b = await members(vs, (101, True), (202, True))
    try:
        # Both pending members get the other's Add and both commit: the first commit wins epoch 0,
        # the other is stale and its sender is welcomed instead.
        await a.wait_until(in_group(a, b, epoch=1))
        await b.wait_until(in_group(a, b, epoch=1))
        await vs.wait_until(lambda: vs.stale_commits == 1)
        assert vs.calls[CHANNEL].leaves in ([101, 202], [202, 101])
        assert a.session.voice_privacy_code == b.session.voice_privacy_code != ""
        assert a.connected_users == {202} and b.connected_users == {101}
        await a.wait_until(lambda: bool(a.executed) and bool(b.executed))  # both sent op 23

        # A third member (who never commits) is added by a member's commit and welcomed (op 30).
        (c,) = await members(vs, (303, False))
        await c.wait_until(in_group(a, b, c, epoch=2))
        assert 30 in c.ops() and 29 not in c.ops()
        frame = b.session.encrypt_opus(b"\x78\x01" + b"opus" * 8)
        assert frame.endswith(b"\xfa\xfa")
        assert a.decrypt(202, frame) == c.decrypt(202, frame) == b"\x78\x01" + b"opus" * 8

        # b leaves: the server proposes its removal (op 27), a commits, leaf 1 is free again.
        await b.close()
        await a.wait_until(in_group(a, c, epoch=3))
        await c.wait_until(in_group(a, c, epoch=3))
        assert vs.calls[CHANNEL].leaves in ([101, None, 303], [None, 101, 303])
        assert 202 not in a.connected_users
        with pytest.raises(ValueError):  # no decryptor for a removed member
            a.decrypt(202, b.session.encrypt_opus(b"\x78\x02" + b"opus" * 8))

        # c leaves: a is alone in an established group → sole member reset (op 24 epoch 1, op 21 id 0).
        await c.close()
        await a.wait_until(lambda: a.session.status == davey.SessionStatus.pending)
        assert [op for op in a.ops() if op in (21, 24)] == [24, 21]
        assert (24, 101, "sole member reset") in vs.dave_log
        assert vs.calls[CHANNEL].epoch == 0
        # A newcomer makes a new group with it.
        (d,) = await members(vs, (404, True))
        await d.wait_until(in_group(a, d, epoch=1))
        assert vs.errors == []
        await d.close()
    finally:
        for m in (a, b):
            await m.close()


class ForgetfulMember(DaveMember):
    """Loses its key package's private keys before its first welcome (as a crashed client would)."""

    async def _binary(self, op: int, msg: bytes) -> None:
        if op == 30 and not self.invalid:
            self.session.reinit(1, self.user_id, self.channel_id)
        await super()._binary(op, msg)


@pytest.mark.asyncio
async def test_a_member_that_cannot_use_its_welcome_recovers(dave_server: VoiceServer) -> None:
    vs = dave_server
    (a,) = await members(vs, (101, True))
    await a.wait_until(lambda: 25 in a.ops())
    b = ForgetfulMember(vs, 202, CHANNEL, commits=False)
    await b.connect()
    try:
        # b sends op 31 and a new key package; a, left alone in the group, is reset; they start again.
        await b.wait_until(in_group(a, b, epoch=1), timeout=8)
        assert b.invalid == 1 and (31, 202, "1") in vs.dave_log
        assert (24, 101, "sole member reset") in vs.dave_log and vs.errors == []
        frame = a.session.encrypt_opus(b"\x78\x03" + b"opus" * 8)
        assert b.decrypt(101, frame) == b"\x78\x03" + b"opus" * 8
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_key_packages_and_commits_are_checked(dave_server: VoiceServer) -> None:
    vs = dave_server
    (a,) = await members(vs, (101, False))
    await vs.wait_until(lambda: (26, 101, "accepted") in vs.dave_log)
    try:
        impostor = davey.DaveSession(1, 999, CHANNEL).get_serialized_key_package()
        await a._send_binary(26, impostor)  # another user's key package
        tampered = bytearray(a.session.get_serialized_key_package())
        tampered[-5] ^= 1  # inside the signature
        await a._send_binary(26, bytes(tampered))
        await a._send_binary(28, b"\x00\x01\x00\x01garbage")
        await vs.wait_until(lambda: len(vs.errors) == 3)
        assert vs.errors == [
            "DAVE op 26 from 101 refused: key package for user 999",
            "DAVE op 26 from 101 refused: key package signature does not verify",
            "DAVE op 28 from 101 refused: commit: message ends too early",
        ]
    finally:
        await a.close()
