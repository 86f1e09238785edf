"""The sandbox's REST API refuses what Discord refuses, with Discord's status and JSON error code:
unknown routes and ids, permissions from roles and channel overwrites, size limits, a reply to a
message that is not there; and it rate-limits as Discord does. Driven with a plain HTTP client (no
bot), so each answer is Discord's own shape; tests/api_spec.py checks every body against the spec."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sandbox.ratelimit import Limit, RateLimits
from sandbox.server import (
    ATTACH_FILES,
    MANAGE_MESSAGES,
    PIN_MESSAGES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    VIEW_CHANNEL,
    Sandbox,
)


class Api:
    """Calls the sandbox as the bot does: its token, JSON bodies; returns (status, JSON body, headers)."""

    def __init__(self, sb: Sandbox, session: aiohttp.ClientSession) -> None:
        self.sb, self.session = sb, session

    async def __call__(self, method: str, path: str, body: Any = None, *,
                       form: aiohttp.FormData | None = None) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bot {self.sb.bot_token}"}
        async with self.session.request(method, self.sb.api_base + path, headers=headers,
                                        json=body if form is None else None, data=form) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None), resp.headers


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """A sandbox without rate limits (test_rate_limits has its own): these tests send many requests at once."""
    sb = await Sandbox(rate_limits=RateLimits.off()).start()
    yield sb
    await sb.close()
    assert not sb.unimplemented


@pytest.fixture
async def api(sandbox: Sandbox) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(sandbox, session)


def channel_path(sb: Sandbox, channel_id: int | None = None) -> str:
    return f"/channels/{channel_id or sb.text_channel.id}"


async def test_unknown_routes_and_ids_answer_404_with_discord_codes(sandbox: Sandbox, api: Api) -> None:
    assert (await api("GET", "/channels/1/messages"))[:2] == (404, {"message": "Unknown Channel", "code": 10003})
    status, body, _ = await api("GET", channel_path(sandbox) + "/messages/123")
    assert (status, body["code"]) == (404, 10008)
    status, body, _ = await api("GET", f"/guilds/{sandbox.guild_id}/members/123")
    assert (status, body["code"]) == (404, 10007)
    status, body, _ = await api("GET", "/guilds/123")
    assert (status, body["code"]) == (404, 10004)
    # Not a snowflake: Discord's 400, never a crash.
    status, body, _ = await api("GET", channel_path(sandbox) + "/messages/abc")
    assert (status, body["code"]) == (400, 50035)
    assert body["errors"]["message_id"]["_errors"][0]["code"] == "NUMBER_TYPE_COERCE"
    for query, field in (("before=abc", "before"), ("limit=101", "limit")):
        status, body, _ = await api("GET", channel_path(sandbox) + f"/messages?{query}")
        assert (status, list(body["errors"])) == (400, [field])
    # A route Discord may have but the sandbox does not: 404 and recorded, so the test would fail on it.
    status, body, _ = await api("GET", "/applications/1/emojis")
    assert (status, body) == (404, {"message": "404: Not Found", "code": 0})
    assert sandbox.unimplemented == ["GET /api/v10/applications/1/emojis"]
    sandbox.unimplemented.clear()


async def test_pins_and_member_search(sandbox: Sandbox, api: Api) -> None:
    """The two routes that used to crash the sandbox with a 500."""
    status, body, _ = await api("GET", channel_path(sandbox) + "/messages/pins")
    assert (status, body) == (200, {"items": [], "has_more": False})
    first = await sandbox.post_message("member", "first")
    second = await sandbox.post_message("member", "second")
    status, body, _ = await api("PUT", channel_path(sandbox) + f"/messages/pins/{first.id}")
    assert (status, body["code"]) == (403, 50013)  # @everyone may not pin
    sandbox.roles[sandbox.guild_id].permissions |= PIN_MESSAGES
    for msg in (first, second):
        status, _, _ = await api("PUT", channel_path(sandbox) + f"/messages/pins/{msg.id}")
        assert status == 204
    status, body, _ = await api("GET", channel_path(sandbox) + "/messages/pins?limit=1")
    assert status == 200 and body["has_more"] is True
    assert [i["message"]["content"] for i in body["items"]] == ["second"]
    assert body["items"][0]["message"]["pinned"] is True
    await api("DELETE", channel_path(sandbox) + f"/messages/pins/{second.id}")
    _, body, _ = await api("GET", channel_path(sandbox) + "/messages/pins")
    assert [i["message"]["content"] for i in body["items"]] == ["first"]

    status, body, _ = await api("GET", f"/guilds/{sandbox.guild_id}/members/search?query=ADM&limit=10")
    assert status == 200 and [m["user"]["username"] for m in body] == ["admin"]
    status, body, _ = await api("GET", f"/guilds/{sandbox.guild_id}/members/search")
    assert (status, body["errors"]["query"]["_errors"][0]["code"]) == (400, "BASE_TYPE_REQUIRED")
    status, body, _ = await api("GET", f"/guilds/{sandbox.guild_id}/members/search?query=a&limit=0")
    assert (status, body["code"]) == (400, 50035)


async def test_guild_counts_and_fields(sandbox: Sandbox, api: Api) -> None:
    _, plain, _ = await api("GET", f"/guilds/{sandbox.guild_id}")
    assert "approximate_member_count" not in plain
    assert plain["safety_alerts_channel_id"] is None and "incidents_data" in plain
    assert plain["roles"][0]["colors"] == {"primary_color": 0, "secondary_color": None, "tertiary_color": None}
    _, counted, _ = await api("GET", f"/guilds/{sandbox.guild_id}?with_counts=true")
    assert counted["approximate_member_count"] == len([u for u in sandbox.users.values()
                                                       if sandbox.is_member(u, sandbox.guild_id)])
    assert counted["approximate_presence_count"] == 0  # no bot is connected
    _, app, _ = await api("GET", "/oauth2/applications/@me")
    assert "install_params" not in app and "custom_install_url" not in app
    _, me, _ = await api("GET", "/users/@me")
    assert me["primary_guild"] is None


async def test_permissions_come_from_roles_and_overwrites(sandbox: Sandbox, api: Api) -> None:
    bot = sandbox.bot_user.id
    hidden = sandbox.add_channel("staff", 0, overwrites=[{"id": sandbox.guild_id, "deny": VIEW_CHANNEL}])
    read_only = sandbox.add_channel("news", 0, overwrites=[{"id": bot, "type": 1, "deny": SEND_MESSAGES}])
    no_history = sandbox.add_channel("vault", 0, overwrites=[{"id": sandbox.guild_id, "deny": READ_MESSAGE_HISTORY}])
    await sandbox.post_message("admin", "secret", channel=hidden)
    await sandbox.post_message("admin", "old news", channel=no_history)

    for method, path, body in [("POST", "/messages", {"content": "hi"}), ("GET", "/messages", None),
                               ("GET", "", None), ("POST", "/typing", None)]:
        status, answer, _ = await api(method, channel_path(sandbox, hidden.id) + path, body)
        assert (status, answer) == (403, {"message": "Missing Access", "code": 50001}), (method, path)
    status, answer, _ = await api("POST", channel_path(sandbox, read_only.id) + "/messages", {"content": "hi"})
    assert (status, answer) == (403, {"message": "Missing Permissions", "code": 50013})
    assert not sandbox.bot_messages(read_only.id)
    # Without Read Message History the channel's history is empty, as Discord answers it.
    assert (await api("GET", channel_path(sandbox, no_history.id) + "/messages"))[:2] == (200, [])

    # Another user's message: deleting it takes Manage Messages.
    theirs = await sandbox.post_message("member", "mine")
    status, answer, _ = await api("DELETE", channel_path(sandbox) + f"/messages/{theirs.id}")
    assert (status, answer["code"]) == (403, 50013) and not theirs.deleted
    sandbox.roles[sandbox.guild_id].permissions |= MANAGE_MESSAGES
    assert (await api("DELETE", channel_path(sandbox) + f"/messages/{theirs.id}"))[0] == 204
    assert theirs.deleted
    # Files take Attach Files.
    sandbox.roles[sandbox.guild_id].permissions &= ~ATTACH_FILES
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("payload_json", json.dumps({"content": "a file"}), content_type="application/json")
    form.add_field("files[0]", b"x", filename="a.txt")
    status, answer, _ = await api("POST", channel_path(sandbox) + "/messages", form=form)
    assert (status, answer["code"]) == (403, 50013)


async def test_size_limits_and_missing_reply_targets(sandbox: Sandbox, api: Api) -> None:
    path = channel_path(sandbox) + "/messages"
    status, answer, _ = await api("POST", path, {"content": "x" * 2001})
    assert (status, answer["code"]) == (400, 50035)
    assert answer["errors"]["content"]["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"
    _, sent, _ = await api("POST", path, {"content": "short"})
    status, answer, _ = await api("PATCH", f"{path}/{sent['id']}", {"content": "y" * 2001})
    assert (status, answer["code"]) == (400, 50035)
    assert sandbox.messages[int(sent["id"])].content == "short"
    status, answer, _ = await api("POST", path, {"embeds": [{"title": "t"}] * 11})
    assert (status, answer["errors"]["embeds"]["_errors"][0]["code"]) == (400, "BASE_TYPE_MAX_LENGTH")
    status, answer, _ = await api("POST", path, {"embeds": [{"description": "d" * 4000}, {"description": "d" * 2001}]})
    assert (status, answer["errors"]["embeds"]["_errors"][0]["code"]) == (400, "MAX_EMBED_SIZE_EXCEEDED")

    form = aiohttp.FormData(quote_fields=False)
    form.add_field("payload_json", json.dumps({"content": "files"}), content_type="application/json")
    for i in range(11):
        form.add_field(f"files[{i}]", b"x", filename=f"{i}.txt")
    status, answer, _ = await api("POST", path, form=form)
    assert (status, answer["errors"]["files"]["_errors"][0]["code"]) == (400, "BASE_TYPE_MAX_LENGTH")
    big = aiohttp.FormData(quote_fields=False)
    big.add_field("payload_json", json.dumps({"content": "big"}), content_type="application/json")
    big.add_field("files[0]", b"\0" * (10 * 1024 * 1024 + 1), filename="big.bin")
    status, answer, _ = await api("POST", path, form=big)
    assert (status, answer) == (413, {"message": "Request entity too large", "code": 40005})

    reply = {"content": "re", "message_reference": {"message_id": "12345"}}
    status, answer, _ = await api("POST", path, reply)
    assert (status, answer["code"]) == (400, 50035)
    assert answer["errors"]["message_reference"]["_errors"][0]["code"] == "MESSAGE_REFERENCE_UNKNOWN_MESSAGE"
    reply["message_reference"]["fail_if_not_exists"] = False
    status, answer, _ = await api("POST", path, reply)
    assert status == 200 and "message_reference" not in answer and answer["type"] == 0
    assert [m.content for m in sandbox.bot_messages()] == ["short", "re"]


async def test_rate_limits_per_channel_and_global() -> None:
    limits = RateLimits(routes={"POST /channels/{channel_id}/messages": Limit("messages", 5, 2.0)},
                        global_count=8, global_per=2.0)
    sb = await Sandbox(rate_limits=limits).start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(sb, session)
            other = sb.add_channel("other", 0)
            answers = [await api("POST", channel_path(sb) + "/messages", {"content": str(i)}) for i in range(6)]
            assert [a[0] for a in answers] == [200] * 5 + [429]
            headers = answers[3][2]
            assert headers["X-RateLimit-Limit"] == "5" and headers["X-RateLimit-Remaining"] == "1"
            assert 0 < float(headers["X-RateLimit-Reset-After"]) <= 2.0 and headers["X-RateLimit-Bucket"]
            status, body, headers = answers[5]
            assert body["global"] is False and 0 < body["retry_after"] <= 2.0
            assert headers["X-RateLimit-Scope"] == "user" and headers["Via"]
            # Another channel has its own bucket; the global limit holds them all.
            assert (await api("POST", channel_path(sb, other.id) + "/messages", {"content": "x"}))[0] == 200
            status, body, headers = await api("GET", "/users/@me")
            assert status == 200
            status, body, headers = await api("GET", "/users/@me")
            assert (status, body["global"], headers["X-RateLimit-Scope"]) == (429, True, "global")
            await asyncio.sleep(body["retry_after"])
            assert (await api("POST", channel_path(sb) + "/messages", {"content": "again"}))[0] == 200
            assert sb.limiter.refused == ["POST /channels/{channel_id}/messages (user)", "GET /users/@me (global)"]
    finally:
        await sb.close()


async def test_the_routes_a_bot_starts_with_answer_within_the_spec(sandbox: Sandbox, api: Api) -> None:
    """Routes few end-to-end tests reach (each body is checked against Discord's spec at teardown)."""
    for path in ("/gateway", "/gateway/bot", "/users/@me", "/oauth2/applications/@me", channel_path(sandbox),
                 f"/channels/{sandbox.voice_channel.id}", f"/guilds/{sandbox.guild_id}?with_counts=1",
                 f"/guilds/{sandbox.guild_id}/members/{sandbox.member.id}"):
        assert (await api("GET", path))[0] == 200, path
    status, dm, _ = await api("POST", "/users/@me/channels", {"recipient_id": str(sandbox.member.id)})
    assert status == 200 and dm["type"] == 1
    assert (await api("GET", f"/channels/{dm['id']}"))[0] == 200
    status, sent, _ = await api("POST", f"/channels/{dm['id']}/messages", {"content": "hello"})
    assert status == 200
    assert (await api("POST", f"/channels/{dm['id']}/typing"))[0] == 204
    theirs = await sandbox.post_message("member", "hi bot", channel=int(dm["id"]))
    status, answer, _ = await api("DELETE", f"/channels/{dm['id']}/messages/{theirs.id}")
    assert (status, answer["code"]) == (403, 50003)  # nobody deletes the other side's messages in a DM
    assert (await api("PATCH", f"/channels/{dm['id']}/messages/{sent['id']}", {"content": "hello!"}))[0] == 200
    assert (await api("DELETE", f"/channels/{dm['id']}/messages/{sent['id']}"))[0] == 204
