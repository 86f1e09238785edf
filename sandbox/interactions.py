"""Interactions in the sandbox, as Discord runs them: the application's commands (:mod:`sandbox.appcommands`),
what users do with them (a slash command, a context menu, a button click, a modal submit, autocomplete),
the ``INTERACTION_CREATE`` event the bot gets, and the bot's answers: the callback
(``POST /interactions/{id}/{token}/callback``) and the interaction's webhook (follow-ups, and
``GET/PATCH/DELETE /webhooks/{app_id}/{token}/messages/@original|{id}``).

Discord's rules hold: the first callback must come within :attr:`Interactions.response_deadline` (3 s;
later: 404 Unknown interaction, 10062, and the user sees "The application did not respond"); one
callback per interaction (a second: 400 "Interaction has already been acknowledged.", 40060); the
token works for :attr:`Interactions.token_lifetime` (15 minutes; later: 401 Invalid Webhook Token,
50027). Both are measured on :attr:`Interactions.clock`, which a test may replace to move time on.
An ephemeral response (flag 64) is seen by its user only: it is no gateway event and no channel route
knows it. Users act through :class:`Interactions`' methods, which refuse as Discord's client refuses
(:class:`InteractionRefused`): a command the member lacks the permissions for, a guild-only one in a
DM, an option of the wrong type, a disabled button.

https://discord.com/developers/docs/interactions/receiving-and-responding
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

from sandbox.appcommands import (
    ATTACHMENT,
    BOOLEAN,
    CHANNEL,
    CHAT_INPUT,
    INTEGER,
    JSON,
    MAX_GLOBAL_CHAT_INPUT,
    MAX_SAFE_INTEGER,
    MENTIONABLE,
    MESSAGE_COMMAND,
    NUMBER,
    ROLE,
    STRING,
    SUB_COMMAND,
    SUB_COMMAND_GROUP,
    USER,
    USER_COMMAND,
    AppCommand,
    FormErrors,
    check_command,
)
from sandbox.components import BUTTON, LINK_STYLE, buttons, check_modal, modal_answer, text_inputs
from sandbox.payloads import ComponentPayload, MessageBody, MessageInteractionMetadataPayload
from sandbox.state import (
    ALL_PERMISSIONS,
    EPHEMERAL,
    IS_COMPONENTS_V2,
    LOADING,
    SUPPRESS_EMBEDS,
    SUPPRESS_NOTIFICATIONS,
    Attachment,
    Channel,
    Message,
    Role,
    User,
)

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import UrlDispatcher

    from sandbox.server import Sandbox

log = logging.getLogger(__name__)

# Interaction types.
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
# Callback types.
PONG, CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE = 1, 4, 5, 6, 7
AUTOCOMPLETE_RESULT, MODAL = 8, 9
# Which callbacks answer which interactions.
ALLOWED_CALLBACKS = {
    APPLICATION_COMMAND: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL},
    MESSAGE_COMPONENT: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE, MODAL},
    AUTOCOMPLETE: {AUTOCOMPLETE_RESULT},
    MODAL_SUBMIT: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE},
}
# Message types of interaction responses.
CHAT_INPUT_COMMAND_MESSAGE, CONTEXT_MENU_COMMAND_MESSAGE = 20, 23
RESPONSE_FLAGS = EPHEMERAL | SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | IS_COMPONENTS_V2
RESPONSE_DEADLINE = 3.0  # seconds to the first callback
TOKEN_LIFETIME = 15 * 60.0  # seconds an interaction token works
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024
NOT_RESPONDED = "The application did not respond"


class InteractionRefused(ValueError):
    """What Discord's client would not let a user do (its reason is the message)."""


class InteractionError(Exception):
    """Discord's error answer to a callback or webhook request."""

    def __init__(self, message: str, code: int, status: int) -> None:
        super().__init__(message)
        self.code, self.status = code, status


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"})


@dataclass
class Interaction:
    """One interaction a user started, and what the bot answered."""

    id: int
    token: str
    type: int
    user: User
    channel: Channel
    guild_id: int | None
    created: float  # on Interactions.clock
    data: JSON
    command: AppCommand | None = None
    message: Message | None = None  # the message a component is on (or a modal's origin)
    parent: Interaction | None = None  # the interaction whose modal this submits
    response_type: int | None = None  # the callback type the bot answered with
    response: Message | None = None  # the message @original names
    followups: list[Message] = field(default_factory=list)
    modal: ComponentPayload | None = None  # the modal the bot opened
    choices: list[JSON] | None = None  # autocomplete's answer
    refused: list[tuple[str, int]] = field(default_factory=list)  # (message, code) of refused callbacks
    failed: bool = False  # no response in time: the user saw "The application did not respond"
    edits_before: int = 0  # the component message's edits when the interaction began

    @property
    def acknowledged(self) -> bool:
        return self.response_type is not None

    @property
    def deferred(self) -> bool:
        return self.response_type in (DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE)

    @property
    def messages(self) -> list[Message]:
        """The response (unless it only updated the component's message) and the follow-ups, in order."""
        own = [self.response] if self.response is not None and self.response is not self.message else []
        return [m for m in own + self.followups if not m.deleted]

    @property
    def done(self) -> bool:
        """Answered with something a user sees: a message that is not still "thinking", an updated
        message, a modal or autocomplete choices."""
        if self.response_type in (MODAL, AUTOCOMPLETE_RESULT, UPDATE_MESSAGE, CHANNEL_MESSAGE):
            return True
        if self.response_type == DEFERRED_CHANNEL_MESSAGE:
            return self.response is not None and not self.response.flags & LOADING
        if self.response_type == DEFERRED_UPDATE_MESSAGE:
            return bool(self.followups) or (self.message is not None and self.message.edits > self.edits_before)
        return False


@dataclass
class OpenModal:
    """A modal open on a user's screen: the interaction that opened it and the modal itself."""

    interaction: Interaction
    modal: ComponentPayload

    @property
    def fields(self) -> list[ComponentPayload]:
        return text_inputs(self.modal.get("components", []))


class Interactions:
    """The sandbox's application commands and interactions."""

    def __init__(self, sandbox: Sandbox, *, response_deadline: float = RESPONSE_DEADLINE) -> None:
        self.sandbox = sandbox
        self.state = sandbox.state
        self.clock: Callable[[], float] = time.monotonic  # replaceable: tests move time on
        self.response_deadline = response_deadline
        self.token_lifetime = TOKEN_LIFETIME
        self.interactions: dict[int, Interaction] = {}
        self.open_modals: dict[int, OpenModal] = {}  # user id -> the modal on their screen
        self._listeners: list[Callable[[str, Interaction], None]] = []
        self._timers: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- observing
    def add_interaction_listener(self, callback: Callable[[str, Interaction], None]) -> None:
        """``callback(event, interaction)``: "modal" (the bot opened one), "choices" (autocomplete
        answered), "failed" (no response in time), "acknowledged" (any first callback)."""
        self._listeners.append(callback)

    async def _notify(self, event: str, inter: Interaction) -> None:
        for callback in list(self._listeners):
            callback(event, inter)
        await self.sandbox.wake()

    def last(self, user: User | str | None = None) -> Interaction | None:
        """The latest interaction (of ``user``)."""
        user_obj = self._user(user) if user is not None else None
        found = [i for i in self.interactions.values() if user_obj is None or i.user.id == user_obj.id]
        return found[-1] if found else None

    def ephemeral_messages(self, user: User | str) -> list[Message]:
        """The ephemeral messages ``user`` was shown, oldest first."""
        user_obj = self._user(user)
        return [m for m in self.state.messages.values()
                if m.ephemeral and not m.deleted and m.visible_to is not None and user_obj.id in m.visible_to]

    async def wait_for_response(self, inter: Interaction, timeout: float = 10.0) -> Interaction:
        """Wait until the bot answered ``inter`` with something the user sees (see :attr:`Interaction.done`)."""
        await self.sandbox.wait_for(lambda: inter.done, timeout)
        return inter

    def close(self) -> None:
        for task in list(self._timers):
            task.cancel()

    # ----------------------------------------------------------------- users' actions
    def _user(self, user: User | str) -> User:
        return self.state.user_named(user) if isinstance(user, str) else user

    async def slash(self, user: User | str, name: str, options: dict[str, Any] | None = None, /, *,
                    in_channel: Channel | int | None = None, in_guild: int | None = None,
                    **kw_options: Any) -> Interaction:
        """``user`` runs ``/name`` (``"group sub"`` for a subcommand) with its options (``options`` and
        keywords) in ``in_channel`` (default: #general of ``in_guild``, else of the first server; a DM
        channel for a DM). Option values: text, numbers, booleans, a :class:`User`/:class:`Role`/
        :class:`Channel` or its name, and for an attachment option a ``Path`` or
        ``(filename, bytes[, content type])``. Refused as Discord's client refuses: :class:`InteractionRefused`."""
        return await self._command_interaction(self._user(user), name, in_channel, in_guild,
                                               {**(options or {}), **kw_options}, focused=None)

    async def autocomplete(self, user: User | str, name: str, focused: str, options: dict[str, Any] | None = None,
                           /, *, in_channel: Channel | int | None = None, in_guild: int | None = None,
                           **kw_options: Any) -> Interaction:
        """``user`` types in option ``focused`` of ``/name`` (its text so far among the options): an
        autocomplete interaction; the bot's answer is in :attr:`Interaction.choices`."""
        return await self._command_interaction(self._user(user), name, in_channel, in_guild,
                                               {**(options or {}), **kw_options}, focused=focused)

    async def menu(self, user: User | str, target: int | User | str, command: str, /, *,
                   in_channel: Channel | int | None = None) -> Interaction:
        """``user`` runs the context-menu ``command`` on message id ``target`` (a message command) or
        on a user (a :class:`User` or name: a user command)."""
        who = self._user(user)
        if isinstance(target, int) and target not in self.state.users:
            msg = self.state.messages.get(target)
            if msg is None or msg.deleted or not msg.visible(who.id):
                raise InteractionRefused(f"no message {target}")
            ch = self.state.channels[msg.channel_id]
            if not self.state.can_see(who, ch):
                raise InteractionRefused(f"no message {target}")
            cmd = self._command(who, command, MESSAGE_COMMAND, ch)
            payload = self.state.message_payload(msg)  # the target's content reaches the app, intent or not
            data: JSON = {"id": str(cmd.id), "name": cmd.name, "type": MESSAGE_COMMAND, "target_id": str(msg.id),
                          "resolved": {"messages": {str(msg.id): payload}}}
        else:
            target_user = self.state.users[target] if isinstance(target, int) else self._user(target)
            ch = self.state.channel(in_channel)
            cmd = self._command(who, command, USER_COMMAND, ch)
            resolved: JSON = {"users": {str(target_user.id): target_user.payload()}}
            if ch.guild_id is not None and self.state.is_member(target_user, ch.guild_id):
                resolved["members"] = {str(target_user.id): {
                    **self.state.member_payload(target_user, ch.guild_id, with_user=False),
                    "permissions": str(self.state.permissions_for(target_user, ch))}}
            data = {"id": str(cmd.id), "name": cmd.name, "type": USER_COMMAND, "target_id": str(target_user.id),
                    "resolved": resolved}
        if cmd.guild_id is not None:
            data["guild_id"] = str(cmd.guild_id)
        return await self._start(APPLICATION_COMMAND, who, ch, data, command=cmd)

    async def click(self, user: User | str, message_id: int, n: int = 0, /, *,
                    forged_custom_id: str | None = None) -> Interaction:
        """``user`` presses button ``n`` (from 1, left to right, row by row) of a bot message.

        ``forged_custom_id``: send a click on that ``custom_id`` instead, whatever the message holds,
        as only a modified client could (Discord's client cannot): for tests of a bot's own checks."""
        who = self._user(user)
        if forged_custom_id is not None:
            forged = self.state.messages.get(message_id)
            if forged is None or forged.deleted:
                raise InteractionRefused(f"no message {message_id}")
            return await self._start(MESSAGE_COMPONENT, who, self.state.channels[forged.channel_id],
                                     {"custom_id": forged_custom_id, "component_type": BUTTON}, message=forged)
        msg = self.state.messages.get(message_id)
        if msg is None or msg.deleted or not msg.visible(who.id) \
                or not self.state.can_see(who, self.state.channels[msg.channel_id]):
            raise InteractionRefused(f"no message {message_id}")
        found = [b for row in buttons(msg.components) for b in row]
        if not found:
            raise InteractionRefused(f"message {message_id} has no buttons")
        if not 1 <= n <= len(found):
            raise InteractionRefused(f"message {message_id} has buttons 1 to {len(found)}")
        button = found[n - 1]
        if button.get("disabled"):
            raise InteractionRefused(f"button {n} is disabled")
        if button.get("style") == LINK_STYLE:
            raise InteractionRefused(f"button {n} opens a link: {button.get('url')}")
        if msg.author.id != self.state.bot_user.id or "custom_id" not in button:
            raise InteractionRefused(f"button {n} does nothing")
        channel = self.state.channels[msg.channel_id]
        data: JSON = {"custom_id": button["custom_id"], "component_type": BUTTON}
        return await self._start(MESSAGE_COMPONENT, who, channel, data, message=msg)

    async def submit_modal(self, user: User | str, fields: dict[str, str] | None = None, /, *,
                           resend: OpenModal | None = None, **kw_fields: str) -> Interaction:
        """``user`` fills in and submits the modal open on their screen (``resend``: an earlier one,
        submitted again as a replaying client would). Fields by ``custom_id`` (or label)."""
        who = self._user(user)
        modal = resend
        fields = {**(fields or {}), **kw_fields}
        resent = modal is not None
        opened = modal if modal is not None else self.open_modals.get(who.id)
        if opened is None:
            raise InteractionRefused("no modal is open")
        inputs = opened.fields
        values: dict[str, str] = {}
        for key, value in fields.items():
            target = next((f for f in inputs if f.get("custom_id") == key), None) or next(
                (f for f in inputs if str(f.get("label", "")).lower().replace(" ", "_") == key.lower()), None)
            if target is None:
                names = ", ".join(str(f.get("custom_id")) for f in inputs)
                raise InteractionRefused(f"the modal has no field {key!r}; its fields: {names}")
            values[str(target.get("custom_id"))] = str(value)
        for f in inputs:
            cid = str(f.get("custom_id"))
            text = values.setdefault(cid, f.get("value") or "")  # untouched: what the bot filled in
            label = f.get("label") or cid
            if f.get("required", True) and not text:
                raise InteractionRefused(f"{label} is required")
            if text and len(text) < int(f.get("min_length") or 0):
                raise InteractionRefused(f"{label} needs at least {f.get('min_length')} characters")
            if len(text) > int(f.get("max_length") or 4000):
                raise InteractionRefused(f"{label} takes at most {f.get('max_length') or 4000} characters")
        if not resent:
            self.open_modals.pop(who.id, None)
        parent = opened.interaction
        data: JSON = {"custom_id": opened.modal.get("custom_id"),
                      "components": modal_answer(opened.modal.get("components", []), values)}
        return await self._start(MODAL_SUBMIT, who, parent.channel, data, message=parent.message, parent=parent)

    def close_modal(self, user: User | str) -> None:
        """The user closes the modal without submitting it (Discord tells the bot nothing)."""
        self.open_modals.pop(self._user(user).id, None)

    # ----------------------------------------------------------------- building interactions
    def _command(self, who: User, name: str, ctype: int, channel: Channel) -> AppCommand:
        """The command ``who`` may use by that name in ``channel``, as Discord's client lists them."""
        cmd = self.state.commands.find(name, ctype, channel.guild_id)
        kind = {CHAT_INPUT: "/", USER_COMMAND: "user command ", MESSAGE_COMMAND: "message command "}[ctype]
        if cmd is None:
            raise InteractionRefused(f"no {kind}{name!r} is registered here")
        if channel.guild_id is None and not cmd.allowed_in_dm:
            raise InteractionRefused(f"{kind}{name} cannot be used in DMs")
        if channel.guild_id is not None:
            if not cmd.allowed_in_guild:
                raise InteractionRefused(f"{kind}{name} can only be used in DMs")
            needed = int(cmd.default_member_permissions) if cmd.default_member_permissions is not None else None
            if needed is not None:
                # "0": administrators only (and the owner); otherwise every listed permission.
                have = self.state.base_permissions(who, channel.guild_id)
                if (have & needed != needed) if needed else have != ALL_PERMISSIONS:
                    raise InteractionRefused(f"you do not have permission to use {kind}{name}")
        return cmd

    async def _command_interaction(self, who: User, name: str, channel: Channel | int | None, guild: int | None,
                                   options: dict[str, Any], focused: str | None) -> Interaction:
        ch = self._channel_for(who, channel, guild)
        top, *path = name.strip().lstrip("/").split()
        cmd = self._command(who, top, CHAT_INPUT, ch)
        found = cmd.find_path(path)
        if found is None:
            subs = [o.get("name") for o in cmd.options if o.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP)]
            raise InteractionRefused(f"/{top} needs one of its subcommands: {', '.join(map(str, subs))}"
                                     if subs else f"/{top} has no subcommand {' '.join(path)}")
        _, spec = found
        resolved: JSON = {}
        values = [await self._option(cmd, o, options, resolved, ch, focused) for o in spec if o.get("name") in options]
        unknown = sorted(set(options) - {str(o.get("name")) for o in spec})
        if unknown:
            raise InteractionRefused(f"/{name} has no option {unknown[0]!r}; its options: "
                                     + (", ".join(str(o.get("name")) for o in spec) or "none"))
        missing = [str(o.get("name")) for o in spec if o.get("required") and o.get("name") not in options]
        if missing and focused is None:
            raise InteractionRefused(f"/{name} needs {', '.join(missing)}")
        if focused is not None and focused not in options:
            raise InteractionRefused(f"/{name}: give the text typed so far in {focused}")
        for depth in reversed(range(len(path))):
            kind = SUB_COMMAND if depth == len(path) - 1 else SUB_COMMAND_GROUP
            values = [{"name": path[depth], "type": kind, "options": values}]
        data: JSON = {"id": str(cmd.id), "name": cmd.name, "type": CHAT_INPUT, "options": values}
        if resolved:
            data["resolved"] = resolved
        if cmd.guild_id is not None:
            data["guild_id"] = str(cmd.guild_id)
        return await self._start(AUTOCOMPLETE if focused is not None else APPLICATION_COMMAND, who, ch, data,
                                 command=cmd)

    def _channel_for(self, who: User, channel: Channel | int | None, guild: int | None) -> Channel:
        ch = self.state.channel(channel, guild)
        if not self.state.can_see(who, ch):
            raise InteractionRefused(f"{who.name} cannot see #{ch.name}")
        return ch

    async def _option(self, cmd: AppCommand, spec: JSON, given: dict[str, Any], resolved: JSON, channel: Channel,
                      focused: str | None) -> JSON:
        """One option as Discord sends it: its value typed as the option's type (the user-facing
        check of Discord's client: it does not send a word for a number)."""
        name, otype = str(spec["name"]), int(spec["type"])
        raw = given[name]
        where = f"/{cmd.name}: {name}"
        if name == focused:
            return {"name": name, "type": otype, "value": str(raw), "focused": True}
        value: Any
        if otype == STRING:
            value = str(raw)
            low, high = int(spec.get("min_length") or 0), int(spec.get("max_length") or 6000)
            if not low <= len(value) <= high:
                raise InteractionRefused(f"{where} must be {low} to {high} characters")
        elif otype == INTEGER:
            try:
                if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                    raise ValueError
                value = int(raw)
            except (TypeError, ValueError):
                raise InteractionRefused(f"{where} must be a whole number, not {raw!r}") from None
            if abs(value) > MAX_SAFE_INTEGER:
                raise InteractionRefused(f"{where} is out of range")
        elif otype == NUMBER:
            try:
                if isinstance(raw, bool):
                    raise ValueError
                value = float(raw)
            except (TypeError, ValueError):
                raise InteractionRefused(f"{where} must be a number, not {raw!r}") from None
        elif otype == BOOLEAN:
            text = str(raw).lower()
            if isinstance(raw, bool):
                value = raw
            elif text in ("true", "yes", "1", "on"):
                value = True
            elif text in ("false", "no", "0", "off"):
                value = False
            else:
                raise InteractionRefused(f"{where} must be True or False, not {raw!r}")
        elif otype in (USER, MENTIONABLE, ROLE, CHANNEL):
            value = self._resolve_entity(otype, raw, resolved, channel, where)
        elif otype == ATTACHMENT:
            att = await self._upload(raw, channel, where)
            resolved.setdefault("attachments", {})[str(att.id)] = {**att.payload(), "ephemeral": True}
            value = str(att.id)
        else:
            raise InteractionRefused(f"{where}: unknown option type {otype}")
        if otype in (INTEGER, NUMBER):
            if spec.get("min_value") is not None and value < spec["min_value"]:
                raise InteractionRefused(f"{where} must be at least {spec['min_value']}")
            if spec.get("max_value") is not None and value > spec["max_value"]:
                raise InteractionRefused(f"{where} must be at most {spec['max_value']}")
        choices = spec.get("choices")
        if choices and value not in [c.get("value") for c in choices]:
            raise InteractionRefused(f"{where} must be one of: " + ", ".join(str(c.get("name")) for c in choices))
        return {"name": name, "type": otype, "value": value}

    def _resolve_entity(self, otype: int, raw: Any, resolved: JSON, channel: Channel, where: str) -> str:
        state = self.state
        if otype in (USER, MENTIONABLE):
            user: User | None = raw if isinstance(raw, User) else None
            if user is None and isinstance(raw, (str, int)):
                key = str(raw).lstrip("@")
                user = next((u for u in state.users.values() if u.name == key or str(u.id) == key), None)
            if user is not None:
                resolved.setdefault("users", {})[str(user.id)] = user.payload()
                if channel.guild_id is not None and state.is_member(user, channel.guild_id):
                    resolved.setdefault("members", {})[str(user.id)] = {
                        **state.member_payload(user, channel.guild_id, with_user=False),
                        "permissions": str(state.permissions_for(user, channel))}
                return str(user.id)
            if otype == USER:
                raise InteractionRefused(f"{where} must be a user, not {raw!r}")
        if otype in (ROLE, MENTIONABLE):
            role: Role | None = raw if isinstance(raw, Role) else None
            if role is None and isinstance(raw, (str, int)):
                key = str(raw).lstrip("@")
                role = next((r for r in state.roles.values() if state.role_guild(r) == channel.guild_id
                             and (r.name == key or str(r.id) == key)), None)
            if role is None:
                raise InteractionRefused(f"{where} must be a {'role' if otype == ROLE else 'user or role'}, not {raw!r}")
            resolved.setdefault("roles", {})[str(role.id)] = role.payload()
            return str(role.id)
        target: Channel | None = raw if isinstance(raw, Channel) else None
        if target is None and isinstance(raw, (str, int)):
            key = str(raw).lstrip("#")
            target = next((c for c in state.channels.values() if c.guild_id == channel.guild_id and c.type != 1
                           and (c.name == key or str(c.id) == key)), None)
        if target is None:
            raise InteractionRefused(f"{where} must be a channel, not {raw!r}")
        resolved.setdefault("channels", {})[str(target.id)] = {
            "id": str(target.id), "name": target.name, "type": target.type,
            "permissions": str(state.permissions_for(self.state.bot_user, target)), "parent_id": None,
            "position": target.position, "nsfw": False, "flags": 0, "rate_limit_per_user": 0,
            "last_message_id": None}
        return str(target.id)

    async def _upload(self, raw: Any, channel: Channel, where: str) -> Attachment:
        """A file a user picks for an attachment option: uploaded to the CDN as Discord's client does."""
        import mimetypes

        if isinstance(raw, Attachment):
            return raw
        if isinstance(raw, (str, Path)):
            path = Path(raw)
            try:
                data = await asyncio.to_thread(lambda: path.expanduser().read_bytes())
            except OSError as exc:
                raise InteractionRefused(f"{where}: cannot read {path}: {exc.strerror}") from None
            name, ctype = path.name, mimetypes.guess_type(path.name)[0]
        elif isinstance(raw, tuple) and len(raw) in (2, 3) and isinstance(raw[1], bytes):
            name, data = str(raw[0]), raw[1]
            ctype = raw[2] if len(raw) == 3 else mimetypes.guess_type(name)[0]
        else:
            raise InteractionRefused(f"{where} must be a file, not {raw!r}")
        if len(data) > ATTACHMENT_SIZE_LIMIT:
            raise InteractionRefused(f"{where}: the file is over {ATTACHMENT_SIZE_LIMIT // (1024 * 1024)} MB")
        att = self.sandbox.rest.store_attachment(channel.id, name, data, ctype, None)
        self.sandbox.rest.uploads[att.id] = att
        return att

    async def _start(self, itype: int, who: User, channel: Channel, data: JSON, *, command: AppCommand | None = None,
                     message: Message | None = None, parent: Interaction | None = None) -> Interaction:
        inter = Interaction(self.state.ids.next(), "aW50ZXJhY3Rpb24." + secrets.token_urlsafe(48), itype, who,
                            channel, channel.guild_id, self.clock(), data, command=command, message=message,
                            parent=parent)
        if message is not None:
            inter.edits_before = message.edits
        self.interactions[inter.id] = inter
        await self.sandbox.gateway.dispatch("INTERACTION_CREATE", self.payload(inter))
        if itype != AUTOCOMPLETE:
            task = asyncio.ensure_future(self._watch_deadline(inter))
            self._timers.add(task)
            task.add_done_callback(self._timers.discard)
        return inter

    async def _watch_deadline(self, inter: Interaction) -> None:
        """After the deadline the user's client says "The application did not respond"."""
        await asyncio.sleep(self.response_deadline + 0.05)
        if not inter.acknowledged and self.clock() - inter.created > self.response_deadline:
            inter.failed = True
            await self._notify("failed", inter)

    def payload(self, inter: Interaction) -> JSON:
        """INTERACTION_CREATE's ``d``: https://discord.com/developers/docs/interactions/receiving-and-responding#interaction-object"""
        state, ch, who = self.state, inter.channel, inter.user
        perms = state.permissions_for(who, ch)
        channel_data: JSON = {**ch.payload(), "permissions": str(perms)}
        data: JSON = {
            "id": str(inter.id), "application_id": str(state.application_id), "type": inter.type,
            "token": inter.token, "version": 1, "channel_id": str(ch.id), "channel": channel_data,
            "app_permissions": str(state.permissions_for(state.bot_user, ch)), "locale": "en-US",
            "entitlements": [], "entitlement_sku_ids": [], "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
            "authorizing_integration_owners": {"0": str(inter.guild_id or 0)},
            "context": 0 if inter.guild_id is not None else 1, "data": inter.data,
        }
        if inter.guild_id is not None:
            data["guild_id"] = str(inter.guild_id)
            data["guild"] = {"id": str(inter.guild_id), "locale": "en-US", "features": []}
            data["guild_locale"] = "en-US"
            data["member"] = {**state.member_payload(who, inter.guild_id), "permissions": str(perms)}
        else:
            data["user"] = who.payload()
        if inter.message is not None:
            data["message"] = state.message_payload(inter.message)
        return data

    def _metadata(self, inter: Interaction) -> MessageInteractionMetadataPayload:
        meta: MessageInteractionMetadataPayload = {
            "id": str(inter.id), "type": inter.type, "user": inter.user.payload(),
            "authorizing_integration_owners": {"0": str(inter.guild_id or 0)},
        }
        if inter.command is not None:
            meta["name"] = inter.command.name
            meta["command_type"] = inter.command.type
            target = inter.data.get("target_id")
            if inter.command.type == USER_COMMAND and target:
                meta["target_user"] = self.state.users[int(target)].payload()
            elif inter.command.type == MESSAGE_COMMAND and target:
                meta["target_message_id"] = str(target)
        if inter.type == MESSAGE_COMPONENT and inter.message is not None:
            meta["interacted_message_id"] = str(inter.message.id)
        return meta

    # ----------------------------------------------------------------- routes
    def add_routes(self, r: UrlDispatcher, p: str) -> None:
        app = p + "/applications/{app_id}"
        for base in (app + "/commands", app + "/guilds/{guild_id}/commands"):
            r.add_get(base, self._list_commands)
            r.add_put(base, self._overwrite_commands)
            r.add_post(base, self._create_command)
            r.add_get(base + "/{command_id}", self._get_command)
            r.add_patch(base + "/{command_id}", self._edit_command)
            r.add_delete(base + "/{command_id}", self._delete_command)
        r.add_post(p + "/interactions/{interaction_id}/{token}/callback", self._callback)
        hook = p + "/webhooks/{app_id}/{token}"
        r.add_post(hook, self._followup)
        r.add_get(hook + "/messages/{message_id}", self._get_webhook_message)
        r.add_patch(hook + "/messages/{message_id}", self._edit_webhook_message)
        r.add_delete(hook + "/messages/{message_id}", self._delete_webhook_message)

    def _scope(self, request: web.Request) -> int | None:
        from sandbox.rest import DiscordError

        if request.match_info["app_id"] != str(self.state.application_id):
            raise DiscordError("Unknown Application", 10002, 404)
        guild = request.match_info.get("guild_id")
        if guild is None:
            return None
        if not guild.isdigit() or int(guild) not in self.state.guilds:
            raise DiscordError("Missing Access", 50001, 403)
        return int(guild)

    async def _list_commands(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        return _json([c.payload() for c in self.state.commands.scope(scope)])

    def _store(self, body: JSON, scope: int | None, existing: AppCommand | None) -> AppCommand:
        cmd = self.state.commands.put(existing, body, self.state.ids.next(), application_id=self.state.application_id,
                                      guild_id=scope)
        self.state.commands.commands[cmd.id] = cmd
        return cmd

    async def _overwrite_commands(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        body = await request.json()
        errors = FormErrors()
        if not isinstance(body, list):
            errors.add([], "BASE_TYPE_LIST", "Must be a list.")
            return _json(errors.body(), 400)
        checked = [check_command(c, errors, [i]) for i, c in enumerate(body)]
        if not errors and (limits := self.state.commands.too_many(cast(list[JSON], checked))):
            errors = limits
        if errors:
            return _json(errors.body(), 400)
        old = {(c.type, c.name): c for c in self.state.commands.scope(scope)}
        for c in old.values():
            del self.state.commands.commands[c.id]
        stored = [self._store(c, scope, old.get((int(c.get("type", CHAT_INPUT)), str(c["name"]))))
                  for c in checked if c is not None]
        self.state.changed()
        return _json([c.payload() for c in stored])

    async def _create_command(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        body = await request.json()
        errors = FormErrors()
        checked = check_command(body, errors, [])
        if checked is None:
            return _json(errors.body(), 400)
        existing = self.state.commands.find(str(checked["name"]), int(checked.get("type", CHAT_INPUT)), scope)
        if existing is not None and existing.guild_id != scope:
            existing = None
        if existing is None and checked.get("type", CHAT_INPUT) == CHAT_INPUT and len(
                [c for c in self.state.commands.scope(scope) if c.type == CHAT_INPUT]) >= MAX_GLOBAL_CHAT_INPUT:
            return _json({"message": f"Maximum number of application commands reached ({MAX_GLOBAL_CHAT_INPUT})",
                          "code": 30032}, 400)
        if existing is not None:
            del self.state.commands.commands[existing.id]
        cmd = self._store(checked, scope, existing)
        self.state.changed()
        return _json(cmd.payload(), 200 if existing is not None else 201)

    def _one_command(self, request: web.Request) -> AppCommand:
        from sandbox.rest import DiscordError

        scope = self._scope(request)
        raw = request.match_info["command_id"]
        cmd = self.state.commands.get(int(raw), scope) if raw.isdigit() else None
        if cmd is None:
            raise DiscordError("Unknown application command", 10063, 404)
        return cmd

    async def _get_command(self, request: web.Request) -> web.Response:
        return _json(self._one_command(request).payload())

    async def _edit_command(self, request: web.Request) -> web.Response:
        cmd = self._one_command(request)
        body = await request.json()
        merged = {k: v for k, v in cmd.payload().items() if k not in ("id", "application_id", "version", "guild_id")}
        merged.update(body if isinstance(body, dict) else {})
        errors = FormErrors()
        checked = check_command(merged, errors, [])
        if checked is None:
            return _json(errors.body(), 400)
        del self.state.commands.commands[cmd.id]
        new = self._store(checked, cmd.guild_id, cmd)
        self.state.changed()
        return _json(new.payload())

    async def _delete_command(self, request: web.Request) -> web.Response:
        cmd = self._one_command(request)
        del self.state.commands.commands[cmd.id]
        self.state.changed()
        return web.Response(status=204)

    # ----------------------------------------------------------------- the callback
    async def _callback(self, request: web.Request) -> web.Response:
        raw_id = request.match_info["interaction_id"]
        inter = self.interactions.get(int(raw_id)) if raw_id.isdigit() else None
        if inter is None or inter.token != request.match_info["token"]:
            return _json({"message": "Unknown interaction", "code": 10062}, 404)
        if inter.acknowledged:
            return self._refuse(inter, "Interaction has already been acknowledged.", 40060, 400)
        if self.clock() - inter.created > self.response_deadline:
            return self._refuse(inter, "Unknown interaction", 10062, 404)
        body, files = await self._read_body(request, inter.channel.id)
        ctype = body.get("type") if isinstance(body, dict) else None
        data = (body.get("data") or {}) if isinstance(body, dict) else {}
        if not isinstance(data, dict):
            data = {}
        if ctype not in ALLOWED_CALLBACKS.get(inter.type, set()) or (
                ctype in (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE) and inter.message is None):
            return self._refuse(inter, "Interaction response type is invalid for this interaction", 50035, 400,
                                errors={"type": {"_errors": [{"code": "INTERACTION_RESPONSE_TYPE_INVALID",
                                                              "message": "Invalid interaction response type"}]}})
        resource: JSON = {"type": ctype}
        if ctype in (CHANNEL_MESSAGE, UPDATE_MESSAGE):
            error = self.sandbox.rest.body_error(cast(MessageBody, data), files, creating=ctype == CHANNEL_MESSAGE)
            if error is not None:
                inter.refused.append((str(error.get("message")), int(error.get("code", 0))))
                return _json(error, 400)
        if ctype == MODAL:
            errors = FormErrors()
            modal = check_modal(data, errors, ["data"])
            if modal is None:
                return _json(errors.body(), 400)
            inter.response_type = ctype
            inter.modal = modal
            self.open_modals[inter.user.id] = OpenModal(inter, modal)
            await self._notify("modal", inter)
        elif ctype == AUTOCOMPLETE_RESULT:
            choices = data.get("choices")
            if not isinstance(choices, list) or len(choices) > 25:
                return _json(FormErrors().body() | {"errors": {"data": {"choices": {"_errors": [
                    {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 25 or fewer in length."}]}}}}, 400)
            inter.response_type = ctype
            inter.choices = choices
            await self._notify("choices", inter)
        elif ctype == CHANNEL_MESSAGE:
            inter.response_type = ctype
            inter.response = await self._new_message(inter, cast(MessageBody, data), files)
            resource["message"] = self.state.message_payload(inter.response)
        elif ctype == DEFERRED_CHANNEL_MESSAGE:
            inter.response_type = ctype
            inter.response = await self._new_message(inter, {"content": "", "flags": int(data.get("flags") or 0)},
                                                     [], loading=True)
            resource["message"] = self.state.message_payload(inter.response)
        elif ctype == UPDATE_MESSAGE:
            assert inter.message is not None
            inter.response_type = ctype
            inter.response = inter.message
            await self.sandbox.rest.edit_message(inter.message, cast(MessageBody, data), files)
            resource["message"] = self.state.message_payload(inter.message)
        else:  # DEFERRED_UPDATE_MESSAGE
            inter.response_type = ctype
            inter.response = inter.message
        await self._notify("acknowledged", inter)
        if request.query.get("with_response", "").lower() not in ("1", "true"):
            return web.Response(status=204)
        answer: JSON = {"id": str(inter.id), "type": inter.type}
        if inter.response is not None and ctype in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, UPDATE_MESSAGE):
            answer["response_message_id"] = str(inter.response.id)
            answer["response_message_loading"] = bool(inter.response.flags & LOADING)
            answer["response_message_ephemeral"] = inter.response.ephemeral
        return _json({"interaction": answer, "resource": resource})

    def _refuse(self, inter: Interaction, message: str, code: int, status: int, errors: JSON | None = None
                ) -> web.Response:
        inter.refused.append((message, code))
        log.info("sandbox: interaction %s callback refused: %s (%s)", inter.id, message, code)
        body: JSON = {"message": message, "code": code}
        if errors:
            body["errors"] = errors
        return _json(body, status)

    async def _read_body(self, request: web.Request, channel_id: int) -> tuple[JSON, list[Attachment]]:
        body, files = await self.sandbox.rest._read_message_body(request, channel_id)
        return cast(JSON, body), files

    async def _new_message(self, inter: Interaction, body: MessageBody, files: list[Attachment], *,
                           loading: bool = False, followup: bool = False) -> Message:
        """A response or follow-up message in the interaction's channel (ephemeral: its user's only)."""
        flags = int(body.get("flags") or 0) & RESPONSE_FLAGS
        if loading:
            flags |= LOADING
        ephemeral = bool(flags & EPHEMERAL)
        if followup:
            mtype = 0
        elif inter.command is not None:
            mtype = CHAT_INPUT_COMMAND_MESSAGE if inter.command.type == CHAT_INPUT else CONTEXT_MENU_COMMAND_MESSAGE
        else:
            mtype = 0
        meta = self._metadata(inter)
        if followup and inter.response is not None:
            meta["original_response_message_id"] = str(inter.response.id)
        msg = Message(self.state.ids.next(), inter.channel.id, inter.guild_id, self.state.bot_user,
                      body.get("content") or "", files, embeds=body.get("embeds") or [], flags=flags,
                      allowed_mentions=body.get("allowed_mentions"), components=list(body.get("components") or []),
                      visible_to={inter.user.id} if ephemeral else None, type=mtype,
                      webhook_id=self.state.application_id, interaction_metadata=meta)
        if ephemeral:
            self.state.resolve_mentions(msg, msg.allowed_mentions)
            msg.notifies = msg.pinged = set()  # an ephemeral message pings nobody
            self.state.messages[msg.id] = msg
            await self.sandbox.rest.notify("create", msg)
            await self.sandbox.store.save_attachments(msg)
            self.state.changed()
        else:
            await self.sandbox.rest.create_message(msg)
        return msg

    # ----------------------------------------------------------------- the interaction's webhook
    def _hook(self, request: web.Request) -> Interaction:
        if request.match_info["app_id"] != str(self.state.application_id):
            raise InteractionError("Unknown Webhook", 10015, 404)
        token = request.match_info["token"]
        inter = next((i for i in reversed(self.interactions.values()) if i.token == token), None)
        if inter is None or self.clock() - inter.created > self.token_lifetime:
            raise InteractionError("Invalid Webhook Token", 50027, 401)
        if not inter.acknowledged:
            raise InteractionError("Unknown Webhook", 10015, 404)
        return inter

    def _hook_message(self, inter: Interaction, raw: str) -> Message:
        if raw == "@original":
            msg = inter.response
        else:
            msg = next((m for m in [inter.response, *inter.followups] if m is not None and str(m.id) == raw), None)
        if msg is None or msg.deleted:
            raise InteractionError("Unknown Message", 10008, 404)
        return msg

    async def _webhook(self, request: web.Request, action: Callable[[Interaction], Any]) -> web.Response:
        try:
            inter = self._hook(request)
            return cast(web.Response, await action(inter))
        except InteractionError as exc:
            return _json({"message": str(exc), "code": exc.code}, exc.status)

    async def _followup(self, request: web.Request) -> web.Response:
        async def act(inter: Interaction) -> web.Response:
            body, files = await self.sandbox.rest._read_message_body(request, inter.channel.id)
            error = self.sandbox.rest.body_error(body, files, creating=True)
            if error is not None:
                return _json(error, 400)
            loading = inter.response if inter.response is not None and inter.response.flags & LOADING else None
            if loading is not None:
                # The first follow-up of a "thinking" defer takes the place of the thinking message,
                # ephemeral or not as the defer was.
                loading.flags &= ~LOADING
                edit: MessageBody = {**body}
                edit.pop("flags", None)
                data = await self.sandbox.rest.edit_message(loading, edit, files)
                loading.edited = None
                data["edited_timestamp"] = None
                return _json(data)
            msg = await self._new_message(inter, body, files, followup=True)
            inter.followups.append(msg)
            await self.sandbox.wake()
            return _json(self.state.message_payload(msg))
        return await self._webhook(request, act)

    async def _get_webhook_message(self, request: web.Request) -> web.Response:
        async def act(inter: Interaction) -> web.Response:
            return _json(self.state.message_payload(self._hook_message(inter, request.match_info["message_id"])))
        return await self._webhook(request, act)

    async def _edit_webhook_message(self, request: web.Request) -> web.Response:
        async def act(inter: Interaction) -> web.Response:
            msg = self._hook_message(inter, request.match_info["message_id"])
            body, files = await self.sandbox.rest._read_message_body(request, msg.channel_id)
            error = self.sandbox.rest.body_error(body, files, creating=False)
            if error is not None:
                return _json(error, 400)
            was_loading = bool(msg.flags & LOADING)
            msg.flags &= ~LOADING
            data = await self.sandbox.rest.edit_message(msg, body, files)
            if was_loading:  # filling in a "thinking" message is no edit for the reader
                msg.edited = None
                data["edited_timestamp"] = None
            return _json(data)
        return await self._webhook(request, act)

    async def _delete_webhook_message(self, request: web.Request) -> web.Response:
        async def act(inter: Interaction) -> web.Response:
            msg = self._hook_message(inter, request.match_info["message_id"])
            await self.sandbox.rest.delete_message(msg)
            return web.Response(status=204)
        return await self._webhook(request, act)
