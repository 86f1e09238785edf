"""A second member of a voice call, as a Discord client plays it: the voice websocket and DAVE through `davey`.

It joins the sandbox's voice server like a person's client would (IDENTIFY with
``max_dave_protocol_version: 1``, SELECT_PROTOCOL, key package, then whatever the server asks for:
proposals, commit, welcome, transitions) and holds its own ``davey.DaveSession``, so it can open the
DAVE frames other members send — which the voice server itself cannot. No UDP: the test reads the
frames the server received (the server is the SFU that would forward them).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import aiohttp
import davey

from sandbox.voice import VoiceServer


class DaveMember:
    """One user in a voice channel, with ``commits=False`` a member that never sends a commit
    (valid: the server takes the first commit of an epoch from whoever sends it)."""

    def __init__(self, server: VoiceServer, user_id: int, channel_id: int, *, commits: bool = True) -> None:
        self.server, self.user_id, self.channel_id, self.commits = server, user_id, channel_id, commits
        self.session = davey.DaveSession(davey.DAVE_PROTOCOL_VERSION, user_id, channel_id)
        self.received: list[tuple[int, Any]] = []  # (op, JSON d or binary payload) in order
        self.connected_users: set[int] = set()  # from clients_connect / client_disconnect
        self.executed: list[int] = []  # transition ids executed
        self.invalid = 0  # commits/welcomes it could not process (it sent op 31)
        self.close_code: int | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def connect(self, *, max_dave_protocol_version: int = 1, token: str | None = None) -> None:
        session_id = f"member-{self.user_id}"
        self.server.route(session_id, self.channel_id)  # what Discord's gateway does for the user
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.server.client_ssl_context()))
        self._ws = await self._http.ws_connect(f"wss://{self.server.endpoint}/?v=8")
        await self._ws.send_json({"op": 0, "d": {
            "server_id": "1", "user_id": str(self.user_id), "session_id": session_id,
            "token": token or self.server.token, "max_dave_protocol_version": max_dave_protocol_version}})
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, 5)
        if self._http is not None:
            await self._http.close()

    async def wait_until(self, predicate: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()
                self._changed.clear()

    def ops(self) -> list[int]:
        return [op for op, _ in self.received]

    def decrypt(self, user_id: int, frame: bytes) -> bytes:
        """An Opus frame back from another member's DAVE frame (silence frames pass through)."""
        return self.session.decrypt(user_id, davey.MediaType.audio, frame)

    async def _send_binary(self, op: int, payload: bytes) -> None:
        assert self._ws is not None
        await self._ws.send_bytes(bytes([op]) + payload)

    async def _send(self, op: int, d: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send_json({"op": op, "d": d})

    async def _key_package(self) -> None:
        await self._send_binary(26, self.session.get_serialized_key_package())

    async def _recover(self, transition_id: int) -> None:
        self.invalid += 1
        await self._send(31, {"transition_id": transition_id})
        self.session.reinit(davey.DAVE_PROTOCOL_VERSION, self.user_id, self.channel_id)
        await self._key_package()

    async def _run(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    frame = json.loads(msg.data)
                    self.received.append((frame["op"], frame["d"]))
                    await self._text(frame["op"], frame["d"])
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    op = msg.data[2]
                    self.received.append((op, msg.data[3:]))
                    await self._binary(op, msg.data)
                self._changed.set()
        finally:
            self.close_code = self._ws.close_code
            self._changed.set()

    async def _text(self, op: int, d: Any) -> None:
        if op == 2:  # READY: no UDP here, the address is only reported
            await self._send(1, {"protocol": "udp", "data": {"address": "127.0.0.1", "port": 9,
                                                             "mode": "aead_xchacha20_poly1305_rtpsize"}})
        elif op == 4 and d["dave_protocol_version"]:
            await self._key_package()
        elif op == 11:
            self.connected_users |= {int(uid) for uid in d["user_ids"]}
        elif op == 13:
            self.connected_users.discard(int(d["user_id"]))
        elif op == 21 and d["transition_id"]:
            await self._send(23, {"transition_id": d["transition_id"]})
        elif op == 22:
            self.executed.append(d["transition_id"])
        elif op == 24 and d["epoch"] == 1:  # the group is made anew: a new key package
            self.session.reinit(d["protocol_version"], self.user_id, self.channel_id)
            await self._key_package()

    async def _binary(self, op: int, msg: bytes) -> None:
        if op == 25:
            self.session.set_external_sender(msg[3:])
        elif op == 27:
            kind = davey.ProposalsOperationType.append if msg[3] == 0 else davey.ProposalsOperationType.revoke
            result = self.session.process_proposals(kind, msg[4:], [*self.connected_users, self.user_id] or None)
            if result is not None and self.commits:
                await self._send_binary(28, result.commit + (result.welcome or b""))
        elif op in (29, 30):
            transition_id = struct.unpack_from(">H", msg, 3)[0]
            try:
                if op == 29:
                    self.session.process_commit(msg[5:])
                else:
                    self.session.process_welcome(msg[5:])
            except ValueError:
                await self._recover(transition_id)
                return
            if transition_id:
                await self._send(23, {"transition_id": transition_id})
