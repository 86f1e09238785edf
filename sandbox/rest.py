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
from typing import TYPE_CHECKING, Callable, TypeVar

from aiohttp import BodyPartReader, web

from sandbox.appcommands import JSON, FormErrors
from sandbox.components import check_components
from sandbox.payloads import (
    DMCreateBody,
    GatewayPayload,
    MessageBody,
    MessageDeletePayload,
    MessagePayload,
    MessageReactionPayload,
    MessageReactionRemoveAllPayload,
    MessageReactionRemoveEmojiPayload,
)
from sandbox.state import (
    ADD_REACTIONS,
    IS_COMPONENTS_V2,
    IS_VOICE_MESSAGE,
    MANAGE_MESSAGES,
    READ_MESSAGE_HISTORY,
    SUPPRESS_EMBEDS,
    SUPPRESS_NOTIFICATIONS,
    VIEW_CHANNEL,
    Attachment,
    Channel,
    Guild,
    Message,
    User,
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


class DiscordError(Exception):
    """What Discord answers instead of doing a request: its ``message``, JSON error ``code`` and
    HTTP ``status``. Raised in a route, the middleware sends it as Discord's error body."""

    def __init__(self, message: str, code: int, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.status = code, status


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
        r.add_get(p + "/guilds/{guild_id}/members/{user_id}", self._member)
        r.add_get(p + "/channels/{channel_id}", self._get_channel_route)
        r.add_post(p + "/channels/{channel_id}/messages", self._send_message)
        r.add_get(p + "/channels/{channel_id}/messages", self._history)
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
        # Interaction callbacks and webhooks are authorised by their token in the path, not the bot's.
        if (request.path.startswith(API_PREFIX) and not request.path.startswith(UNAUTHENTICATED)
                and not self._authorized(request)):
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        try:
            return await handler(request)
        except DiscordError as exc:
            return _json({"message": str(exc), "code": exc.code}, exc.status)

    async def _unknown(self, request: web.Request) -> web.Response:
        route = f"{request.method} {request.path}"
        log.warning("sandbox: unimplemented route %s", route)
        self.sandbox.unimplemented.append(route)
        return _json({"message": "404: Not Found", "code": 0}, 404)

    async def _me(self, request: web.Request) -> web.Response:
        return _json(self.state.bot_user.payload())

    async def _application(self, request: web.Request) -> web.Response:
        return _json({
            "id": str(self.state.application_id), "name": "trainer", "icon": None, "description": "",
            "bot_public": False, "bot_require_code_grant": False, "verify_key": "0" * 64, "flags": 0,
            "owner": self.state.owner.payload(), "team": None, "summary": "", "rpc_origins": [],
            "approximate_guild_count": len(self.state.guilds), "redirect_uris": [], "interactions_endpoint_url": None,
            "tags": [], "install_params": None, "custom_install_url": None, "integration_types_config": {},
        })

    async def _gateway_info(self, request: web.Request) -> web.Response:
        data: GatewayPayload = {"url": self.sandbox.gateway_url}
        if request.path.endswith("/bot"):
            data["shards"] = self.gateway.recommended_shards
            data["session_start_limit"] = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return _json(data)

    def _get_channel(self, request: web.Request) -> Channel:
        return existing(self.state.channels.get(int(request.match_info["channel_id"])), "Channel")

    def _get_message(self, request: web.Request) -> Message:
        return self._message_in(int(request.match_info["channel_id"]), int(request.match_info["message_id"]))

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
        :class:`MessageBody`) and the files it uploads."""
        files: list[Attachment] = []
        payload: MessageBody = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):  # a nested multipart: Discord's clients send none
                    continue
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                elif part.name and part.name.startswith("files["):
                    data = bytes(await part.read())
                    ctype = part.headers.get("Content-Type")
                    files.append(self.store_attachment(channel_id, part.filename or "file", data, ctype, None))
            return payload, files
        body = await request.read()
        if body:
            payload = json.loads(body)
        return payload, files

    def body_error(self, payload: MessageBody, files: list[Attachment], *, creating: bool) -> JSON | None:
        """Discord's 400 for a message body it refuses (too long, empty, bad allowed_mentions or
        components), or None; the components get Discord's ids."""
        content = payload.get("content") or ""
        if len(content) > 2000:
            return {"message": "Invalid Form Body", "code": 50035,
                    "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH",
                                                        "message": "Must be 2000 or fewer in length."}]}}}
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
        channel = self._get_channel(request)
        payload, files = await self._read_message_body(request, channel.id)
        if (error := self.body_error(payload, files, creating=True)) is not None:
            return _json(error, 400)
        ref = payload.get("message_reference") or {}
        ref_message = ref.get("message_id")
        ref_id = int(ref_message) if ref_message else None
        msg = Message(self.state.ids.next(), channel.id, channel.guild_id, self.state.bot_user,
                      payload.get("content") or "", files, embeds=payload.get("embeds") or [], reference_id=ref_id,
                      allowed_mentions=payload.get("allowed_mentions"),
                      flags=int(payload.get("flags") or 0) & SENDABLE_FLAGS,
                      components=list(payload.get("components") or []))
        await self.create_message(msg)
        return _json(self.message_for_bot(msg))

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
        await self.delete_message(self._get_message(request))
        return web.Response(status=204)

    async def _fetch_message(self, request: web.Request) -> web.Response:
        msg = self._get_message(request)
        return _json(self.message_for_bot(msg))

    async def _history(self, request: web.Request) -> web.Response:
        channel = self._get_channel(request)
        limit = min(int(request.query.get("limit", 50)), 100)
        before = int(request.query["before"]) if "before" in request.query else None
        after = int(request.query["after"]) if "after" in request.query else None
        found = [m for m in self.state.messages.values() if m.channel_id == channel.id and not m.deleted
                 and not m.ephemeral                 and (before is None or m.id < before) and (after is None or m.id > after)]
        # The page nearest to `after` (or, without it, the newest), listed newest first either
        # way as Discord does (discord.py reverses an `after` page itself).
        found.sort(key=lambda m: m.id, reverse=after is None)
        page = sorted(found[:limit], key=lambda m: m.id, reverse=True)
        return _json([self.message_for_bot(m) for m in page])

    async def _typing(self, request: web.Request) -> web.Response:
        channel = self._get_channel(request)
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

    async def _guild(self, request: web.Request) -> web.Response:
        data = self.state.guild_payload(self._get_guild(request))
        # Get Guild's server has no GUILD_CREATE lists.
        data.pop("members", None)
        data.pop("channels", None)
        data.pop("voice_states", None)
        data.pop("presences", None)
        data.pop("threads", None)
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

