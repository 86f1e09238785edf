"""The sandbox's REST API (``/api/v10/...``), reactions and CDN, as the real discord.py calls them.

Every route checks the bot's token, answers with Discord's JSON, and refuses as Discord does: a
handler raises :class:`DiscordError` (an unknown channel, message, user… is :func:`existing`'s 404)
and the middleware turns it into Discord's error body. A route the sandbox does not implement
answers 404 and is recorded in ``Sandbox.unimplemented``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, TypeVar

from aiohttp import BodyPartReader, web

from sandbox.appcommands import JSON, FormErrors
from sandbox.components import check_components
from sandbox.payloads import (
    CurrentUserPayload,
    DMCreateBody,
    EmbedPayload,
    ErrorPayload,
    GatewayPayload,
    MessageBody,
    MessageDeletePayload,
    MessagePayload,
    MessageReactionPayload,
    MessageReactionRemoveAllPayload,
    MessageReactionRemoveEmojiPayload,
    MessageReferenceBody,
    PinnedMessagePayload,
    PinsPayload,
)
from sandbox.ratelimit import RateLimiter
from sandbox.state import (
    ADD_REACTIONS,
    ATTACH_FILES,
    IS_COMPONENTS_V2,
    IS_VOICE_MESSAGE,
    MANAGE_MESSAGES,
    PIN_MESSAGES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    SUPPRESS_EMBEDS,
    SUPPRESS_NOTIFICATIONS,
    VIEW_CHANNEL,
    Attachment,
    Channel,
    Guild,
    Message,
    User,
    iso_time,
)

if TYPE_CHECKING:
    from sandbox.server import Sandbox

log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
UNAUTHENTICATED = (API_PREFIX + "/interactions/", API_PREFIX + "/webhooks/")
MESSAGE_CONTENT = 1 << 15  # the privileged gateway intent
# Flags a bot may set on a message it sends (https://discord.com/developers/docs/resources/message#message-object-message-flags).
SENDABLE_FLAGS = SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | IS_VOICE_MESSAGE | IS_COMPONENTS_V2

# Gateway intents that gate reaction events (https://discord.com/developers/docs/events/gateway#gateway-intents).
GUILD_MESSAGE_REACTIONS = 1 << 10
DIRECT_MESSAGE_REACTIONS = 1 << 13
MAX_REACTIONS = 20  # distinct emojis on one message
# A few shortcodes for people typing in a terminal (/react ID :+1:); any Unicode emoji works as is.
EMOJI_SHORTCODES = {
    ":+1:": "👍", ":thumbsup:": "👍", ":-1:": "👎", ":thumbsdown:": "👎", ":heart:": "❤️",
    ":white_check_mark:": "✅", ":x:": "❌", ":eyes:": "👀", ":tada:": "🎉", ":smile:": "😄",
    ":thinking:": "🤔", ":fire:": "🔥", ":100:": "💯", ":question:": "❓", ":warning:": "⚠️",
}
KEYCAP = re.compile("^[0-9#*]\ufe0f?\u20e3$")

# Discord's JSON error codes for "Unknown …" (https://discord.com/developers/docs/topics/opcodes-and-status-codes).
UNKNOWN_CODES = {"Channel": 10003, "Guild": 10004, "Member": 10007, "Message": 10008, "User": 10013}

T = TypeVar("T")

# Discord's limits on a message (https://discord.com/developers/docs/resources/message#create-message).
MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_FILES = 10
MAX_PINS = 250
# Embed limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits).
EMBED_TEXT_LIMITS = {"title": 256, "description": 4096}
MAX_EMBED_FIELDS = 25
MAX_EMBED_TOTAL = 6000


def field_error(code: str, message: str) -> dict[str, object]:
    """One field's errors in Discord's "Invalid Form Body" (50035)."""
    return {"_errors": [{"code": code, "message": message}]}


def too_long(limit: int) -> dict[str, object]:
    return field_error("BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")


def _inner_text(embed: EmbedPayload, part: str, key: str) -> str:
    """An embed's footer text or author name ("" when it has none)."""
    inner: Any = embed.get(part) or {}
    return str(inner.get(key) or "") if isinstance(inner, dict) else ""


class Answered(NamedTuple):
    """One REST answer the sandbox gave: ``route`` is its template under /api/v10 (e.g.
    ``/channels/{channel_id}/messages``), ``body`` the bytes it sent."""

    method: str
    route: str
    status: int
    body: bytes


class DiscordError(Exception):
    """What Discord answers instead of doing a request: its ``message``, JSON error ``code`` and
    HTTP ``status`` (and, for a refused form, the per-field ``errors``). Raised in a route, the
    middleware sends it as Discord's error body."""

    def __init__(self, message: str, code: int, status: int = 400, errors: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.code, self.status, self.errors = code, status, errors

    @classmethod
    def form(cls, errors: dict[str, object]) -> DiscordError:
        return cls("Invalid Form Body", 50035, 400, errors)

    def payload(self) -> ErrorPayload:
        data: ErrorPayload = {"message": str(self), "code": self.code}
        if self.errors is not None:
            data["errors"] = self.errors  # type: ignore[typeddict-item]
        return data


def missing_access() -> DiscordError:
    return DiscordError("Missing Access", 50001, 403)


def missing_permissions() -> DiscordError:
    return DiscordError("Missing Permissions", 50013, 403)


class ReactionError(DiscordError, ValueError):
    """A reaction Discord would refuse; ``code`` and ``status`` are Discord's."""


def existing(value: T | None, what: str, error: type[DiscordError] = DiscordError) -> T:
    """``value``, or Discord's 404 "Unknown ``what``" (e.g. ``"Channel"``) when it is None."""
    if value is None:
        raise error(f"Unknown {what}", UNKNOWN_CODES[what], 404)
    return value


def strip_content(data: MessagePayload, bot_id: int) -> MessagePayload:
    """``data`` as an app without the Message Content intent gets it: a server message's content,
    embeds, attachments and components empty, unless the message is the app's own, mentions it, or
    replies to its message (DMs keep theirs). The replied-to message follows the same rule.
    https://discord.com/developers/docs/events/gateway#message-content-intent"""
    ref = data.get("referenced_message")
    exempt = (
        "guild_id" not in data or int(data["author"]["id"]) == bot_id
        or any(int(m["id"]) == bot_id for m in data.get("mentions", []))
        or (ref is not None and int(ref["author"]["id"]) == bot_id)
    )
    out: MessagePayload = {**data}
    if ref is not None:
        out["referenced_message"] = strip_content(ref, bot_id)
    if not exempt:
        out["content"], out["embeds"], out["attachments"], out["components"] = "", [], [], []
    return out


def parse_emoji(text: str) -> str:
    """The emoji a reaction names, as Discord keys it: the Unicode emoji itself.

    Accepts the emoji, a shortcode from :data:`EMOJI_SHORTCODES`, or what discord.py puts in a
    URL. Custom emojis (``name:id``) are refused as unknown: the sandbox guild has none."""
    emoji = EMOJI_SHORTCODES.get(text.strip(), text.strip())
    if emoji and (KEYCAP.match(emoji) or (len(emoji) <= 16 and all(ord(c) > 0x7F for c in emoji))):
        return emoji
    raise ReactionError("Unknown Emoji", 10014)


def _json(data: object, status: int = 200) -> web.Response:
    """``data`` (a payload, a list of them, an error body) as Discord's JSON answer."""
    # discord.py only parses bodies whose Content-Type is exactly application/json.
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


class Rest:
    """The HTTP routes of one sandbox (REST, reactions, CDN) and the message and reaction events
    they and the sandbox's users cause."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.state, self.gateway, self.store = sandbox.state, sandbox.gateway, sandbox.store
        self.typing: list[int] = []  # channel ids of the bot's typing indicators, in order
        self.downloads: list[int] = []  # attachment ids fetched from the CDN, in order
        # Files users picked for slash command options: on the CDN though on no message.
        self.uploads: dict[int, Attachment] = {}
        self._listeners: list[Callable[[str, Message], None]] = []
        self._reaction_listeners: list[Callable[[str, Message, User, str], None]] = []
        # Every REST answer, once a test sets it to a list (tests/api_spec.py checks them against Discord's spec).
        self.responses: list[Answered] | None = None
        self.limiter = RateLimiter(sandbox.rate_limits)

    # ----------------------------------------------------------------- messages
    def add_listener(self, callback: Callable[[str, Message], None]) -> None:
        """``callback(event, message)`` for every message created/updated/deleted (any author)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[str, Message], None]) -> None:
        self._listeners.remove(callback)

    async def notify(self, event: str, msg: Message) -> None:
        """Tell the listeners and :meth:`Sandbox.wait_for` that ``msg`` was created/updated/deleted."""
        for callback in list(self._listeners):
            callback(event, msg)
        await self.sandbox.wake()

    def store_attachment(self, channel_id: int, name: str, data: bytes, ctype: str | None,
                         duration: float | None) -> Attachment:
        """A new attachment and its CDN url (its bytes stay in memory until the world saves them)."""
        att_id = self.state.ids.next()
        url = f"{self.sandbox.base_url}/attachments/{channel_id}/{att_id}/{name}"
        return Attachment(att_id, name, data, ctype, url, duration)

    async def create_message(self, msg: Message) -> None:
        """Add ``msg`` (from the bot or a user) as Discord does: resolve its mentions, MESSAGE_CREATE."""
        self.state.resolve_mentions(msg, msg.allowed_mentions)
        self.state.messages[msg.id] = msg
        await self.gateway.dispatch("MESSAGE_CREATE", self.state.message_payload(msg))
        await self.notify("create", msg)
        await self.store.save_attachments(msg)
        self.state.changed()

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=200 * 1024 * 1024)
        p = API_PREFIX
        r = app.router
        r.add_get("/gateway", self.gateway.handle)
        r.add_get(p + "/gateway", self._gateway_info)
        r.add_get(p + "/gateway/bot", self._gateway_info)
        r.add_get(p + "/users/@me", self._me)
        r.add_get(p + "/oauth2/applications/@me", self._application)
        r.add_post(p + "/users/@me/channels", self._dm)
        r.add_get(p + "/guilds/{guild_id}", self._guild)
        # Fixed paths before the {id} ones they would otherwise match ("search" is no member id).
        r.add_get(p + "/guilds/{guild_id}/members/search", self._search_members)
        r.add_get(p + "/guilds/{guild_id}/members/{user_id}", self._member)
        r.add_get(p + "/channels/{channel_id}", self._get_channel_route)
        r.add_post(p + "/channels/{channel_id}/messages", self._send_message)
        r.add_get(p + "/channels/{channel_id}/messages", self._history)
        r.add_get(p + "/channels/{channel_id}/messages/pins", self._pins)
        r.add_put(p + "/channels/{channel_id}/messages/pins/{message_id}", self._pin)
        r.add_delete(p + "/channels/{channel_id}/messages/pins/{message_id}", self._pin)
        r.add_get(p + "/channels/{channel_id}/messages/{message_id}", self._fetch_message)
        r.add_patch(p + "/channels/{channel_id}/messages/{message_id}", self._edit_message)
        r.add_delete(p + "/channels/{channel_id}/messages/{message_id}", self._delete_message)
        r.add_post(p + "/channels/{channel_id}/typing", self._typing)
        reactions = p + "/channels/{channel_id}/messages/{message_id}/reactions"
        r.add_put(reactions + "/{emoji}/@me", self._reaction_route)
        r.add_delete(reactions + "/{emoji}/{user}", self._reaction_route)
        r.add_get(reactions + "/{emoji}", self._reaction_route)
        r.add_delete(reactions + "/{emoji}", self._reaction_route)
        r.add_delete(reactions, self._reaction_route)
        self.sandbox.interactions.add_routes(r, p)
        r.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn)
        r.add_route("*", "/{tail:.*}", self._unknown)
        return app

    # ----------------------------------------------------------------- REST
    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.sandbox.bot_token}"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX):  # the gateway and the CDN
            return await handler(request)
        resource = request.match_info.route.resource
        template = resource.canonical.removeprefix(API_PREFIX) if resource is not None else request.path
        known = template != "/{tail}"
        headers: dict[str, str] = {"Via": "1.1 google"}  # discord.py takes a 429 without Via for a Cloudflare ban
        response: web.StreamResponse
        # Interaction callbacks and webhooks are authorised by their token in the path, not the bot's.
        if not request.path.startswith(UNAUTHENTICATED) and not self._authorized(request):
            response = _json({"message": "401: Unauthorized", "code": 0}, 401)
        else:
            verdict = self.limiter.check(request.method, template, dict(request.match_info)) if known else None
            headers.update(verdict.headers if verdict is not None else {})
            if verdict is not None and verdict.refused:
                response = _json(verdict.body(), 429)
            else:
                try:
                    self._check_snowflakes(request)
                    response = await handler(request)
                except DiscordError as exc:
                    response = _json(exc.payload(), exc.status)
        response.headers.update(headers)
        if self.responses is not None and known:  # unknown routes: Sandbox.unimplemented has them
            body = response.body if isinstance(response, web.Response) else b""
            self.responses.append(Answered(request.method, template, response.status,
                                           bytes(body) if isinstance(body, (bytes, bytearray)) else b""))
        return response

    @staticmethod
    def _check_snowflakes(request: web.Request) -> None:
        """Discord's 400 for an id in the path that is not a snowflake (e.g. ``/messages/abc``)."""
        for name, value in request.match_info.items():
            # "@me", "@original": Discord's names for the caller and an interaction's first response
            if name.endswith("_id") and not value.isdigit() and not value.startswith("@"):
                raise DiscordError.form({name: field_error("NUMBER_TYPE_COERCE", f'Value "{value}" is not snowflake.')})

    async def _unknown(self, request: web.Request) -> web.Response:
        route = f"{request.method} {request.path}"
        log.warning("sandbox: unimplemented route %s", route)
        self.sandbox.unimplemented.append(route)
        return _json({"message": "404: Not Found", "code": 0}, 404)

    async def _me(self, request: web.Request) -> web.Response:
        me: CurrentUserPayload = {**self.state.bot_user.payload(), "mfa_enabled": False, "locale": "en-US",
                                  "verified": True, "email": None, "premium_type": 0}
        return _json(me)

    async def _application(self, request: web.Request) -> web.Response:
        # No install link is set up: Discord leaves install_params and custom_install_url out then.
        return _json({
            "id": str(self.state.application_id), "name": "trainer", "icon": None, "description": "",
            "type": None, "bot_public": False, "bot_require_code_grant": False, "verify_key": "0" * 64,
            "flags": 0, "flags_new": "0", "owner": self.state.owner.payload(), "team": None, "summary": "",
            "rpc_origins": [], "approximate_guild_count": len(self.state.guilds),
            "approximate_user_install_count": 0, "approximate_user_authorization_count": 0,
            "redirect_uris": [], "interactions_endpoint_url": None, "role_connections_verification_url": None,
            "explicit_content_filter": 0, "eligible_oauth2_scopes": ["bot", "applications.commands"],
            "tags": [], "integration_types_config": {},
        })

    async def _gateway_info(self, request: web.Request) -> web.Response:
        data: GatewayPayload = {"url": self.sandbox.gateway_url}
        if request.path.endswith("/bot"):
            data["shards"] = self.gateway.recommended_shards
            data["session_start_limit"] = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return _json(data)

    def _get_channel(self, request: web.Request, *needed: int) -> Channel:
        """The channel the path names, which the bot must see (50001 Missing Access) and in which it
        must have the ``needed`` permissions (50013 Missing Permissions)."""
        channel = existing(self.state.channels.get(int(request.match_info["channel_id"])), "Channel")
        perms = self.state.permissions_for(self.state.bot_user, channel)
        if not perms & VIEW_CHANNEL:
            raise missing_access()
        for permission in needed:
            if not perms & permission:
                raise missing_permissions()
        return channel

    def _bot_may(self, channel: Channel, permission: int) -> bool:
        return bool(self.state.permissions_for(self.state.bot_user, channel) & permission)

    def _get_message(self, request: web.Request, *needed: int) -> Message:
        channel = self._get_channel(request, *needed)
        return self._message_in(channel.id, int(request.match_info["message_id"]))

    def _message_in(self, channel_id: int, message_id: int, error: type[DiscordError] = DiscordError) -> Message:
        msg = self.state.messages.get(message_id)
        # An ephemeral message exists only for its user's client: the channel routes do not know it.
        return existing(msg if msg is not None and not msg.deleted and not msg.ephemeral
                        and msg.channel_id == channel_id else None, "Message", error)

    async def _get_channel_route(self, request: web.Request) -> web.Response:
        channel = self._get_channel(request)
        return _json(channel.payload())

    async def _read_message_body(self, request: web.Request, channel_id: int) -> tuple[MessageBody, list[Attachment]]:
        """The JSON of a message create/edit request (as the client sent it: taken to be a
        :class:`MessageBody`) and the files it uploads (Discord's 413 for one over the upload limit)."""
        files: list[Attachment] = []
        payload: MessageBody = {}
        if request.content_type.startswith("multipart/"):
            limit = self.state.upload_limit(self.state.channels[channel_id])
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):  # a nested multipart: Discord's clients send none
                    continue
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                elif part.name and part.name.startswith("files["):
                    data = bytes(await part.read())
                    if len(data) > limit:
                        raise DiscordError("Request entity too large", 40005, 413)
                    ctype = part.headers.get("Content-Type")
                    files.append(self.store_attachment(channel_id, part.filename or "file", data, ctype, None))
            return payload, files
        body = await request.read()
        if body:
            payload = json.loads(body)
        return payload, files

    @staticmethod
    def limit_errors(payload: MessageBody, files: list[Attachment]) -> dict[str, object]:
        """Discord's field errors for content, embeds and files over its limits (empty: none)."""
        errors: dict[str, object] = {}
        content = payload.get("content") or ""
        if len(content) > MAX_CONTENT:
            errors["content"] = too_long(MAX_CONTENT)
        embeds = payload.get("embeds") or []
        if len(embeds) > MAX_EMBEDS:
            errors["embeds"] = too_long(MAX_EMBEDS)
        else:
            embed_errors = {str(i): e for i, embed in enumerate(embeds) if (e := Rest._embed_errors(embed))}
            if embed_errors:
                errors["embeds"] = embed_errors
            elif sum(Rest._embed_size(e) for e in embeds) > MAX_EMBED_TOTAL:
                errors["embeds"] = field_error("MAX_EMBED_SIZE_EXCEEDED",
                                               f"Embed size exceeds maximum size of {MAX_EMBED_TOTAL}")
        if len(files) > MAX_FILES:
            errors["files"] = too_long(MAX_FILES)
        return errors

    @staticmethod
    def _embed_errors(embed: EmbedPayload) -> dict[str, object]:
        errors: dict[str, object] = {}
        for key, limit in EMBED_TEXT_LIMITS.items():
            if len(str(embed.get(key) or "")) > limit:
                errors[key] = too_long(limit)
        fields = embed.get("fields") or []
        if len(fields) > MAX_EMBED_FIELDS:
            errors["fields"] = too_long(MAX_EMBED_FIELDS)
        else:
            bad = {}
            for i, f in enumerate(fields):
                one = {k: too_long(n) for k, n in (("name", 256), ("value", 1024)) if len(str(f.get(k) or "")) > n}
                if one:
                    bad[str(i)] = one
            if bad:
                errors["fields"] = bad
        if len(_inner_text(embed, "footer", "text")) > 2048:
            errors["footer"] = {"text": too_long(2048)}
        if len(_inner_text(embed, "author", "name")) > 256:
            errors["author"] = {"name": too_long(256)}
        return errors

    @staticmethod
    def _embed_size(embed: EmbedPayload) -> int:
        """The characters Discord counts towards the 6,000 of a message's embeds."""
        size = len(str(embed.get("title") or "")) + len(str(embed.get("description") or ""))
        size += len(_inner_text(embed, "footer", "text")) + len(_inner_text(embed, "author", "name"))
        return size + sum(len(str(f.get("name") or "")) + len(str(f.get("value") or ""))
                          for f in embed.get("fields") or [])

    def body_error(self, payload: MessageBody, files: list[Attachment], *, creating: bool) -> JSON | None:
        """Discord's 400 for a message body it refuses (over its limits, empty, bad allowed_mentions or
        components), or None; the components get Discord's ids."""
        if too_big := self.limit_errors(payload, files):
            return {"message": "Invalid Form Body", "code": 50035, "errors": too_big}
        content = payload.get("content") or ""
        if creating and not content and not files and not payload.get("embeds") and not payload.get("components"):
            return {"message": "Cannot send an empty message", "code": 50006}
        allowed = payload.get("allowed_mentions")
        if allowed is not None and (error := self.state.allowed_mentions_error(allowed)):
            return dict(error)
        if payload.get("components") is not None:
            errors = FormErrors()
            check_components(payload.get("components"), errors, ["components"])
            if errors:
                return errors.body()
        return None

    async def _send_message(self, request: web.Request) -> web.Response:
        channel = self._get_channel(request, SEND_MESSAGES)
        payload, files = await self._read_message_body(request, channel.id)
        if (error := self.body_error(payload, files, creating=True)) is not None:
            return _json(error, 400)
        if files and not self._bot_may(channel, ATTACH_FILES):
            raise missing_permissions()
        ref_id = self._reply_target(channel, payload.get("message_reference"))
        msg = Message(self.state.ids.next(), channel.id, channel.guild_id, self.state.bot_user,
                      payload.get("content") or "", files, embeds=payload.get("embeds") or [], reference_id=ref_id,
                      allowed_mentions=payload.get("allowed_mentions"),
                      flags=int(payload.get("flags") or 0) & SENDABLE_FLAGS,
                      components=list(payload.get("components") or []))
        await self.create_message(msg)
        return _json(self.message_for_bot(msg))

    def _reply_target(self, channel: Channel, ref: MessageReferenceBody | None) -> int | None:
        """The id of the message a new message replies to; Discord's 400 when it is not there (unless
        the reply says ``fail_if_not_exists: false``: then the message goes out as no reply)."""
        if not ref or not ref.get("message_id"):
            return None
        if not self._bot_may(channel, READ_MESSAGE_HISTORY):
            raise DiscordError("Cannot reply without permission to read message history", 160002, 403)
        target = self.state.messages.get(int(ref["message_id"]))
        channel_id = int(ref.get("channel_id") or channel.id)
        if target is not None and not target.deleted and target.channel_id == channel_id == channel.id:
            return target.id
        if ref.get("fail_if_not_exists", True) is False:
            return None
        raise DiscordError.form({"message_reference": field_error("MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                                                                  "Unknown message")})

    async def _edit_message(self, request: web.Request) -> web.Response:
        msg = self._get_message(request)
        if msg.author.id != self.state.bot_user.id:
            return _json({"message": "Cannot edit a message authored by another user", "code": 50005}, 403)
        payload, files = await self._read_message_body(request, msg.channel_id)
        if (error := self.body_error(payload, files, creating=False)) is not None:
            return _json(error, 400)
        return _json(await self.edit_message(msg, payload, files))

    async def edit_message(self, msg: Message, payload: MessageBody, files: list[Attachment]) -> MessagePayload:
        """Apply a checked edit to ``msg`` as Discord does (MESSAGE_UPDATE unless it is ephemeral)."""
        allowed = payload.get("allowed_mentions")
        if "content" in payload:
            msg.earlier.append(msg.content)
            msg.content = payload["content"] or ""
        if "embeds" in payload:
            msg.embeds = payload["embeds"] or []
        if "components" in payload:
            msg.components = list(payload["components"] or [])
        if "flags" in payload and payload["flags"] is not None:
            # Only SUPPRESS_EMBEDS can be changed by an edit; the rest stays as it was.
            msg.flags = (msg.flags & ~SUPPRESS_EMBEDS) | (int(payload["flags"]) & SUPPRESS_EMBEDS)
        if "attachments" in payload:
            keep = {str(a.get("id")) for a in payload["attachments"]}
            msg.attachments = [a for a in msg.attachments if str(a.id) in keep]
        msg.attachments.extend(files)
        if "content" in payload or "allowed_mentions" in payload:
            # Discord rebuilds the mentions from the new content with this request's
            # allowed_mentions, or the defaults when it has none (not the original request's).
            msg.allowed_mentions = allowed
            self.state.resolve_mentions(msg, allowed)
            if msg.ephemeral:
                msg.notifies = msg.pinged = set()
        else:
            msg.pinged = set()
        msg.edited = time.time()
        msg.edits += 1
        data = self.state.message_payload(msg)
        if not msg.ephemeral:
            await self.gateway.dispatch("MESSAGE_UPDATE", data)
        await self.notify("update", msg)
        await self.store.save_attachments(msg)
        self.state.changed()
        return data

    def message_for_bot(self, msg: Message) -> MessagePayload:
        """A message as REST shows it to the bot: without the Message Content intent enabled for the
        application, a server message's content is empty unless Discord's exceptions apply."""
        data = self.state.message_payload(msg)
        if not self.sandbox.message_content_enabled:
            data = strip_content(data, self.state.bot_user.id)
        return data

    async def delete_message(self, msg: Message) -> None:
        msg.deleted = True
        deleted: MessageDeletePayload = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
        if msg.guild_id:
            deleted["guild_id"] = str(msg.guild_id)
        if not msg.ephemeral:
            await self.gateway.dispatch("MESSAGE_DELETE", deleted)
        await self.notify("delete", msg)
        self.state.changed()

    async def _delete_message(self, request: web.Request) -> web.Response:
        msg = self._get_message(request)
        channel = self.state.channels[msg.channel_id]
        if msg.author.id != self.state.bot_user.id:
            if channel.type == 1:  # nobody deletes the other side's messages in a DM
                raise DiscordError("Cannot execute action on a DM channel", 50003, 403)
            if not self._bot_may(channel, MANAGE_MESSAGES):
                raise missing_permissions()
        await self.delete_message(msg)
        return web.Response(status=204)

    async def _fetch_message(self, request: web.Request) -> web.Response:
        msg = self._get_message(request, READ_MESSAGE_HISTORY)
        return _json(self.message_for_bot(msg))

    @staticmethod
    def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        if not raw.lstrip("-").isdigit():
            raise DiscordError.form({name: field_error("NUMBER_TYPE_COERCE", f'Value "{raw}" is not int.')})
        value = int(raw)
        if value < low:
            raise DiscordError.form({name: field_error("NUMBER_TYPE_MIN", f"int value should be greater than or equal to {low}.")})
        if value > high:
            raise DiscordError.form({name: field_error("NUMBER_TYPE_MAX", f"int value should be less than or equal to {high}.")})
        return value

    @staticmethod
    def _snowflake_query(request: web.Request, name: str) -> int | None:
        raw = request.query.get(name)
        if raw is None:
            return None
        if not raw.isdigit():
            raise DiscordError.form({name: field_error("NUMBER_TYPE_COERCE", f'Value "{raw}" is not snowflake.')})
        return int(raw)

    async def _history(self, request: web.Request) -> web.Response:
        channel = self._get_channel(request)
        limit = self._int_query(request, "limit", 50, 1, 100)
        before, after = self._snowflake_query(request, "before"), self._snowflake_query(request, "after")
        if not self._bot_may(channel, READ_MESSAGE_HISTORY):
            return _json([])  # Discord: "no messages will be returned"
        found = [m for m in self.state.messages.values() if m.channel_id == channel.id and not m.deleted
                 and not m.ephemeral and (before is None or m.id < before) and (after is None or m.id > after)]
        # The page nearest to `after` (or, without it, the newest), listed newest first either
        # way as Discord does (discord.py reverses an `after` page itself).
        found.sort(key=lambda m: m.id, reverse=after is None)
        page = sorted(found[:limit], key=lambda m: m.id, reverse=True)
        return _json([self.message_for_bot(m) for m in page])

    async def _pins(self, request: web.Request) -> web.Response:
        """GET .../messages/pins: the pinned messages, the latest pin first, ``limit`` (1-50) at a time
        from ``before`` (an ISO 8601 time); none without Read Message History."""
        channel = self._get_channel(request)
        limit = self._int_query(request, "limit", 50, 1, 50)
        before: float | None = None
        if "before" in request.query:
            try:
                before = datetime.fromisoformat(request.query["before"]).timestamp()
            except ValueError:
                raise DiscordError.form({"before": field_error("DATE_TIME_TYPE_PARSE", "Could not parse "
                                                               f"{request.query['before']}. Should be ISO8601.")}) from None
        pinned = [] if not self._bot_may(channel, READ_MESSAGE_HISTORY) else sorted(
            (m for m in self.state.messages.values() if m.channel_id == channel.id and not m.deleted
             and m.pinned_at is not None and (before is None or m.pinned_at < before)),
            key=lambda m: m.pinned_at or 0.0, reverse=True)
        items: list[PinnedMessagePayload] = [
            {"pinned_at": iso_time(m.pinned_at), "message": self.state.message_payload(m)} for m in pinned[:limit]]
        data: PinsPayload = {"items": items, "has_more": len(pinned) > limit}
        return _json(data)

    async def _pin(self, request: web.Request) -> web.Response:
        """PUT/DELETE .../messages/pins/{message_id}: pin or unpin (Pin Messages or Manage Messages)."""
        msg = self._get_message(request)
        channel = self.state.channels[msg.channel_id]
        if channel.type != 1 and not (self._bot_may(channel, PIN_MESSAGES) or self._bot_may(channel, MANAGE_MESSAGES)):
            raise missing_permissions()
        pin = request.method == "PUT"
        if pin and msg.pinned_at is None:
            if sum(1 for m in self.state.messages.values()
                   if m.channel_id == channel.id and m.pinned_at is not None and not m.deleted) >= MAX_PINS:
                raise DiscordError(f"Maximum number of pins reached ({MAX_PINS})", 30003)
            msg.pinned_at = time.time()
        elif not pin and msg.pinned_at is not None:
            msg.pinned_at = None
        else:
            return web.Response(status=204)
        data = self.state.message_payload(msg)
        await self.gateway.dispatch("MESSAGE_UPDATE", data)
        last = max((m.pinned_at for m in self.state.messages.values()
                    if m.channel_id == channel.id and m.pinned_at is not None and not m.deleted), default=None)
        pins_update: dict[str, object] = {"channel_id": str(channel.id),
                                          "last_pin_timestamp": iso_time(last) if last is not None else None}
        if channel.guild_id:
            pins_update["guild_id"] = str(channel.guild_id)
        await self.gateway.dispatch("CHANNEL_PINS_UPDATE", pins_update)
        await self.notify("update", msg)
        self.state.changed()
        return web.Response(status=204)

    async def _typing(self, request: web.Request) -> web.Response:
        channel = self._get_channel(request, SEND_MESSAGES)
        self.typing.append(channel.id)
        return web.Response(status=204)

    # ----------------------------------------------------------------- reactions
    def _reaction_event(self, msg: Message, user: User, emoji: str, added: bool) -> MessageReactionPayload:
        """MESSAGE_REACTION_ADD / _REMOVE as Discord sends them (the add carries the member,
        the message's author and burst colours; the remove does not)."""
        data: MessageReactionPayload = {
            "user_id": str(user.id), "type": 0, "message_id": str(msg.id), "emoji": {"id": None, "name": emoji},
            "channel_id": str(msg.channel_id), "burst": False,
        }
        if msg.guild_id:
            data["guild_id"] = str(msg.guild_id)
        if added:
            data["message_author_id"] = str(msg.author.id)
            data["burst_colors"] = []
            if msg.guild_id and self.state.is_member(user, msg.guild_id):
                data["member"] = self.state.member_payload(user, msg.guild_id)
        return data

    def _reaction_intent(self, msg: Message) -> int:
        return GUILD_MESSAGE_REACTIONS if msg.guild_id else DIRECT_MESSAGE_REACTIONS

    async def react(self, user: User | str, channel_id: int, message_id: int, emoji: str) -> bool:
        """``user`` reacts to a message, as Discord checks and announces it (MESSAGE_REACTION_ADD).

        Returns False when that reaction was already there (Discord does nothing then); raises
        :class:`ReactionError` for an unknown message or emoji, a channel the user cannot see, a
        new emoji without Add Reactions, or a 21st distinct emoji."""
        if isinstance(user, str):
            user = self.state.user_named(user)
        msg = self._message_in(channel_id, message_id, ReactionError)
        emoji = parse_emoji(emoji)
        channel = self.state.channels[msg.channel_id]
        perms = self.state.permissions_for(user, channel)
        if not perms & VIEW_CHANNEL or not perms & READ_MESSAGE_HISTORY:
            raise ReactionError("Missing Access", 50001, 403)
        users = msg.reactions.get(emoji)
        if users is None:
            if not perms & ADD_REACTIONS:
                raise ReactionError("Missing Permissions", 50013, 403)
            if len(msg.reactions) >= MAX_REACTIONS:
                raise ReactionError(f"Maximum number of reactions reached ({MAX_REACTIONS})", 30010)
            users = msg.reactions[emoji] = []
        if user.id in users:
            return False
        users.append(user.id)
        await self.gateway.dispatch("MESSAGE_REACTION_ADD", self._reaction_event(msg, user, emoji, True),
                                    intent=self._reaction_intent(msg))
        await self._notify_reaction("add", msg, user, emoji)
        return True

    async def unreact(self, user: User | str, channel_id: int, message_id: int, emoji: str) -> bool:
        """Take ``user``'s reaction off (MESSAGE_REACTION_REMOVE); False when there was none."""
        if isinstance(user, str):
            user = self.state.user_named(user)
        msg = self._message_in(channel_id, message_id, ReactionError)
        emoji = parse_emoji(emoji)
        users = msg.reactions.get(emoji)
        if users is None or user.id not in users:
            return False
        users.remove(user.id)
        if not users:
            del msg.reactions[emoji]
        await self.gateway.dispatch("MESSAGE_REACTION_REMOVE", self._reaction_event(msg, user, emoji, False),
                                    intent=self._reaction_intent(msg))
        await self._notify_reaction("remove", msg, user, emoji)
        return True

    def add_reaction_listener(self, callback: Callable[[str, Message, User, str], None]) -> None:
        """``callback(event, message, user, emoji)`` for every reaction "add" / "remove" (any user),
        and "clear" when the bot clears one emoji (``emoji``) or all of them (``emoji == ""``)."""
        self._reaction_listeners.append(callback)

    async def _notify_reaction(self, event: str, msg: Message, user: User, emoji: str) -> None:
        self.state.changed()
        for callback in list(self._reaction_listeners):
            callback(event, msg, user, emoji)
        await self.sandbox.wake()

    def _route_reaction(self, request: web.Request) -> tuple[Message, str | None]:
        """The message and emoji a reaction route names (Discord's 404/400 as ReactionError)."""
        msg = self._message_in(int(request.match_info["channel_id"]), int(request.match_info["message_id"]),
                               ReactionError)
        raw = request.match_info.get("emoji")
        return msg, (parse_emoji(raw) if raw is not None else None)

    def _bot_may_manage(self, msg: Message) -> None:
        if not self.state.permissions_for(self.state.bot_user, self.state.channels[msg.channel_id]) & MANAGE_MESSAGES:
            raise ReactionError("Missing Permissions", 50013, 403)

    async def _reaction_route(self, request: web.Request) -> web.Response:
        """PUT/DELETE .../reactions/{emoji}/@me|{user_id}, GET .../reactions/{emoji},
        DELETE .../reactions[/{emoji}]: what discord.py's add_reaction, remove_reaction,
        Reaction.users(), clear_reaction and clear_reactions call."""
        msg, emoji = self._route_reaction(request)
        target = request.match_info.get("user")
        if request.method == "PUT":
            assert emoji is not None
            await self.react(self.state.bot_user, msg.channel_id, msg.id, emoji)
        elif request.method == "GET":
            assert emoji is not None
            return self._reaction_users(request, msg, emoji)
        elif target is not None:
            assert emoji is not None
            user = existing(self.state.bot_user if target == "@me" else
                            self.state.users.get(int(target)) if target.isdigit() else None, "User")
            if user is not self.state.bot_user:
                self._bot_may_manage(msg)
            await self.unreact(user, msg.channel_id, msg.id, emoji)
        else:
            self._bot_may_manage(msg)
            await self._clear_reactions(msg, emoji)
        return web.Response(status=204)

    def _reaction_users(self, request: web.Request, msg: Message, emoji: str) -> web.Response:
        try:
            limit = int(request.query.get("limit", 25))
            after = int(request.query.get("after", 0))
            kind = int(request.query.get("type", 0))
        except ValueError:
            return _json({"message": "Invalid Form Body", "code": 50035}, 400)
        if not 1 <= limit <= 100:
            return _json({"message": "Invalid Form Body", "code": 50035, "errors": {"limit": {"_errors": [
                {"code": "NUMBER_TYPE_MAX", "message": "int value should be less than or equal to 100."}]}}}, 400)
        # Discord lists reactors by user id; burst (super) reactions do not exist here.
        ids = sorted(u for u in msg.reactions.get(emoji, []) if u > after) if kind == 0 else []
        return _json([self.state.users[u].payload() for u in ids[:limit]])

    async def _clear_reactions(self, msg: Message, emoji: str | None) -> None:
        where: MessageReactionRemoveAllPayload = {"channel_id": str(msg.channel_id), "message_id": str(msg.id)}
        if msg.guild_id:
            where["guild_id"] = str(msg.guild_id)
        if emoji is None:
            if not msg.reactions:
                return
            msg.reactions.clear()
            await self.gateway.dispatch("MESSAGE_REACTION_REMOVE_ALL", where, intent=self._reaction_intent(msg))
        else:
            if msg.reactions.pop(emoji, None) is None:
                return
            removed: MessageReactionRemoveEmojiPayload = {**where, "emoji": {"id": None, "name": emoji}}
            await self.gateway.dispatch("MESSAGE_REACTION_REMOVE_EMOJI", removed, intent=self._reaction_intent(msg))
        await self._notify_reaction("clear", msg, self.state.bot_user, emoji or "")

    def _get_guild(self, request: web.Request) -> Guild:
        return existing(self.state.guilds.get(int(request.match_info["guild_id"])), "Guild")

    async def _member(self, request: web.Request) -> web.Response:
        guild = self._get_guild(request)
        user = self.state.users.get(int(request.match_info["user_id"]))
        member = existing(user if user is not None and self.state.is_member(user, guild.id) else None, "Member")
        return _json(self.state.member_payload(member, guild.id))

    async def _search_members(self, request: web.Request) -> web.Response:
        """GET /guilds/{id}/members/search?query=&limit=: members whose username or display name
        begins with ``query`` (no case), ``limit`` (1-1000, default 1) of them."""
        guild = self._get_guild(request)
        query = request.query.get("query")
        if query is None:
            raise DiscordError.form({"query": field_error("BASE_TYPE_REQUIRED", "This field is required")})
        limit = self._int_query(request, "limit", 1, 1, 1000)
        q = query.casefold()
        found = [u for u in self.state.users.values()
                 if self.state.is_member(u, guild.id) and u.name.casefold().startswith(q)]
        return _json([self.state.member_payload(u, guild.id) for u in found[:limit]])

    async def _guild(self, request: web.Request) -> web.Response:
        guild = self._get_guild(request)
        data = self.state.guild_payload(guild)
        # Get Guild's server has no GUILD_CREATE lists.
        for key in ("members", "channels", "voice_states", "presences", "threads", "joined_at", "large",
                    "unavailable", "member_count", "stage_instances", "guild_scheduled_events", "soundboard_sounds"):
            data.pop(key, None)  # type: ignore[misc]
        if request.query.get("with_counts", "").lower() in ("1", "true"):
            members = [u for u in self.state.users.values() if self.state.is_member(u, guild.id)]
            data["approximate_member_count"] = len(members)
            # The sandbox keeps no presences: the one member known to be online is the bot, while it is connected.
            data["approximate_presence_count"] = 1 if self.gateway.sessions else 0
        return _json(data)

    async def _dm(self, request: web.Request) -> web.Response:
        body: DMCreateBody = await request.json()
        user = existing(self.state.users.get(int(body["recipient_id"])), "User")
        return _json(self.state.dm_channel(user).payload())

    async def _cdn(self, request: web.Request) -> web.Response:
        att_id = int(request.match_info["attachment_id"])
        self.downloads.append(att_id)
        for msg in self.state.messages.values():
            for att in msg.attachments:
                if att.id == att_id:
                    try:
                        body = await att.read()
                    except OSError as exc:  # its file went missing from the world's folder
                        log.warning("sandbox: attachment %s unreadable: %s", att_id, exc)
                        return web.Response(status=404)
                    return web.Response(body=body, content_type=att.content_type or "application/octet-stream")
        if (upload := self.uploads.get(att_id)) is not None:
            return web.Response(body=await upload.read(),
                                content_type=upload.content_type or "application/octet-stream")
        return web.Response(status=404)

