"""Application commands in the sandbox: what a bot registers (slash commands, user and message context
menus), per application globally and per server, checked as Discord checks them.

Routes (``/applications/{app_id}/commands`` and ``/applications/{app_id}/guilds/{guild_id}/commands``):
GET lists, PUT overwrites the whole scope (discord.py's ``tree.sync``), POST creates or updates one by
name and type, GET/PATCH/DELETE ``/{command_id}`` one. A command Discord would refuse is answered with
its 400 "Invalid Form Body" (50035) and the field errors, nested by index as Discord nests them
(discord.py's ``CommandSyncFailure`` prints them). Bulk overwrite keeps the id of a command whose name
and type stay, as Discord does.

https://discord.com/developers/docs/interactions/application-commands
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]
"""A JSON object as a client sent it (checked here before anything is kept)."""

# Command types.
CHAT_INPUT, USER_COMMAND, MESSAGE_COMMAND, PRIMARY_ENTRY_POINT = 1, 2, 3, 4
# Option types.
SUB_COMMAND, SUB_COMMAND_GROUP, STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
VALUE_TYPES = {STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT}
# Interaction context types: a server, the bot's DM, other DMs and group DMs.
GUILD_CONTEXT, BOT_DM_CONTEXT, PRIVATE_CHANNEL_CONTEXT = 0, 1, 2

# Discord's name rule for slash commands and options (letters of any script, digits, - _ '); context
# menu names are 1-32 characters of anything, spaces included.
CHAT_INPUT_NAME = re.compile(r"^[-_'\w\u0900-\u097F\u0E00-\u0E7F]{1,32}$")
MAX_GLOBAL_CHAT_INPUT = 100  # per scope, as Discord counts slash commands
MAX_OPTIONS = 25
MAX_CHOICES = 25
MAX_SAFE_INTEGER = 2**53


class FormErrors:
    """Field errors collected while checking a request, as Discord's ``errors`` object nests them."""

    def __init__(self) -> None:
        self.tree: JSON = {}
        self.count = 0

    def add(self, path: list[str | int], code: str, message: str) -> None:
        self.count += 1
        node = self.tree
        for key in path:
            node = node.setdefault(str(key), {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def __bool__(self) -> bool:
        return bool(self.tree)

    def body(self) -> JSON:
        return {"message": "Invalid Form Body", "code": 50035, "errors": self.tree}


@dataclass
class AppCommand:
    """One registered command, as Discord keeps it (``guild_id`` None: global)."""

    id: int
    application_id: int
    guild_id: int | None
    type: int
    name: str
    description: str
    options: list[JSON] = field(default_factory=list)
    default_member_permissions: str | None = None
    dm_permission: bool = True
    contexts: list[int] | None = None
    integration_types: list[int] = field(default_factory=lambda: [0])
    nsfw: bool = False
    version: int = 0
    name_localizations: dict[str, str] | None = None
    description_localizations: dict[str, str] | None = None

    def payload(self) -> JSON:
        """https://discord.com/developers/docs/interactions/application-commands#application-command-object"""
        data: JSON = {
            "id": str(self.id), "application_id": str(self.application_id), "version": str(self.version),
            "default_member_permissions": self.default_member_permissions, "type": self.type, "name": self.name,
            "name_localizations": self.name_localizations, "description": self.description,
            "description_localizations": self.description_localizations, "dm_permission": self.dm_permission,
            "contexts": self.contexts, "integration_types": self.integration_types, "nsfw": self.nsfw,
        }
        if self.options:
            data["options"] = self.options
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        return data

    def record(self) -> JSON:
        """What the world file keeps."""
        return {**self.payload(), "id": self.id, "application_id": self.application_id,
                "guild_id": self.guild_id, "version": self.version}

    @classmethod
    def from_record(cls, r: JSON) -> AppCommand:
        return cls(int(r["id"]), int(r["application_id"]), int(r["guild_id"]) if r.get("guild_id") else None,
                   int(r["type"]), str(r["name"]), str(r.get("description") or ""), list(r.get("options") or []),
                   r.get("default_member_permissions"), bool(r.get("dm_permission", True)), r.get("contexts"),
                   list(r.get("integration_types") or [0]), bool(r.get("nsfw")), int(r.get("version") or 0),
                   r.get("name_localizations"), r.get("description_localizations"))

    @property
    def allowed_in_dm(self) -> bool:
        """Whether it can be used in the bot's DM (``contexts`` wins over the older ``dm_permission``)."""
        if self.guild_id is not None:
            return False
        if self.contexts is not None:
            return BOT_DM_CONTEXT in self.contexts
        return self.dm_permission

    @property
    def allowed_in_guild(self) -> bool:
        return self.contexts is None or GUILD_CONTEXT in self.contexts

    def find_path(self, path: list[str]) -> tuple[list[str], list[JSON]] | None:
        """The subcommand ``path`` names (``["model", "list"]`` under ``/train``…) and the options it
        takes; None when the command has no such subcommand, or needs one and ``path`` names none."""
        options, walked = self.options, []
        for name in path:
            sub = next((o for o in options if o.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP)
                        and o.get("name") == name), None)
            if sub is None:
                return None
            walked.append(name)
            options = list(sub.get("options") or [])
        if any(o.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP) for o in options):
            return None
        return walked, options


def _text(value: object, low: int, high: int) -> bool:
    return isinstance(value, str) and low <= len(value) <= high


def check_command(body: object, errors: FormErrors, path: list[str | int]) -> JSON | None:
    """``body`` (one command of a request) checked as Discord checks it: field errors go to ``errors``
    under ``path``; the normalised command, or None when it was refused."""
    if not isinstance(body, dict):
        errors.add(path, "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType")
        return None
    before = errors.count
    ctype = body.get("type", CHAT_INPUT)
    if ctype not in (CHAT_INPUT, USER_COMMAND, MESSAGE_COMMAND, PRIMARY_ENTRY_POINT):
        errors.add([*path, "type"], "BASE_TYPE_CHOICES", "Value must be one of {1, 2, 3, 4}.")
        return None
    name = body.get("name")
    if ctype == CHAT_INPUT:
        if not isinstance(name, str) or not CHAT_INPUT_NAME.match(name) or name != name.lower():
            errors.add([*path, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
        description = body.get("description")
        if not _text(description, 1, 100):
            errors.add([*path, "description"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        _check_options(body.get("options") or [], errors, [*path, "options"], depth=0)
    else:
        if not _text(name, 1, 32):
            errors.add([*path, "name"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
        if body.get("description"):
            errors.add([*path, "description"], "APPLICATION_COMMAND_CONTEXT_MENU_DESCRIPTION",
                       "Context menu commands cannot have description")
        if body.get("options"):
            errors.add([*path, "options"], "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                       "Context menu commands cannot have options")
    perms = body.get("default_member_permissions")
    if perms is not None and not (isinstance(perms, (str, int)) and str(perms).isdigit()):
        errors.add([*path, "default_member_permissions"], "NUMBER_TYPE_COERCE", f"Value \"{perms}\" is not snowflake.")
    contexts = body.get("contexts")
    if contexts is not None and (not isinstance(contexts, list) or any(c not in (0, 1, 2) for c in contexts)):
        errors.add([*path, "contexts"], "BASE_TYPE_CHOICES", "Value must be one of {0, 1, 2}.")
    installs = body.get("integration_types")
    if installs is not None and (not isinstance(installs, list) or any(i not in (0, 1) for i in installs)):
        errors.add([*path, "integration_types"], "BASE_TYPE_CHOICES", "Value must be one of {0, 1}.")
    dm = body.get("dm_permission")
    if dm is not None and not isinstance(dm, bool):
        errors.add([*path, "dm_permission"], "BASE_TYPE_BOOLEAN", "Must be either true or false.")
    if errors.count != before:
        return None
    return body


def _check_options(options: object, errors: FormErrors, path: list[str | int], depth: int) -> None:
    if not isinstance(options, list):
        errors.add(path, "BASE_TYPE_LIST", "Must be a list.")
        return
    if len(options) > MAX_OPTIONS:
        errors.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_OPTIONS} or fewer in length.")
    names: set[str] = set()
    kinds: set[bool] = set()
    optional_seen = False
    for i, opt in enumerate(options):
        where = [*path, i]
        if not isinstance(opt, dict):
            errors.add(where, "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType")
            continue
        otype, name = opt.get("type"), opt.get("name")
        if otype not in (SUB_COMMAND, SUB_COMMAND_GROUP, *VALUE_TYPES):
            errors.add([*where, "type"], "BASE_TYPE_CHOICES", "Value must be one of {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}.")
            continue
        if not isinstance(name, str) or not CHAT_INPUT_NAME.match(name) or name != name.lower():
            errors.add([*where, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
        elif name in names:
            errors.add([*where, "name"], "APPLICATION_COMMAND_OPTION_NAME_ALREADY_EXISTS", "Option name already exists")
        else:
            names.add(name)
        if not _text(opt.get("description"), 1, 100):
            errors.add([*where, "description"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        is_sub = otype in (SUB_COMMAND, SUB_COMMAND_GROUP)
        kinds.add(is_sub)
        if is_sub:
            if otype == SUB_COMMAND_GROUP and depth > 0 or otype == SUB_COMMAND and depth > 1:
                errors.add([*where, "type"], "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID", "Sub-command groups nest too deep")
            sub = opt.get("options") or []
            if otype == SUB_COMMAND_GROUP and any(isinstance(o, dict) and o.get("type") != SUB_COMMAND for o in sub):
                errors.add([*where, "options"], "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                           "Sub-command groups can only contain sub-commands")
            _check_options(sub, errors, [*where, "options"], depth + 1)
            continue
        if opt.get("required"):
            if optional_seen:
                errors.add(path, "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                           "Required options must be placed before non-required options")
        else:
            optional_seen = True
        choices = opt.get("choices")
        if choices:
            if otype not in (STRING, INTEGER, NUMBER) or not isinstance(choices, list):
                errors.add([*where, "choices"], "APPLICATION_COMMAND_OPTION_CHOICES_INVALID", "Choices are invalid")
            elif len(choices) > MAX_CHOICES:
                errors.add([*where, "choices"], "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CHOICES} or fewer in length.")
            else:
                for j, choice in enumerate(choices):
                    if not isinstance(choice, dict) or not _text(choice.get("name"), 1, 100):
                        errors.add([*where, "choices", j, "name"], "BASE_TYPE_BAD_LENGTH",
                                   "Must be between 1 and 100 in length.")
                    elif otype == STRING and not _text(choice.get("value"), 1, 100):
                        errors.add([*where, "choices", j, "value"], "BASE_TYPE_BAD_LENGTH",
                                   "Must be between 1 and 100 in length.")
                    elif otype != STRING and (isinstance(choice.get("value"), bool)
                                              or not isinstance(choice.get("value"), (int, float))):
                        errors.add([*where, "choices", j, "value"], "NUMBER_TYPE_COERCE", "Value is not a number.")
            if opt.get("autocomplete"):
                errors.add([*where, "autocomplete"], "APPLICATION_COMMAND_OPTION_AUTOCOMPLETE_CHOICES",
                           "Autocomplete cannot be set with choices")
        if opt.get("autocomplete") and otype not in (STRING, INTEGER, NUMBER):
            errors.add([*where, "autocomplete"], "APPLICATION_COMMAND_OPTION_AUTOCOMPLETE_INVALID",
                       "Autocomplete is only for string, integer and number options")
        for key in ("min_length", "max_length"):
            if key in opt and opt[key] is not None and (otype != STRING or not isinstance(opt[key], int)
                                                        or not 0 <= opt[key] <= 6000):
                errors.add([*where, key], "NUMBER_TYPE_MAX", "int value should be between 0 and 6000.")
    if len(kinds) > 1:
        errors.add(path, "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                   "Sub-command and sub-command group option types are mutually exclusive to all other types")


class CommandRegistry:
    """Every application command of the sandbox's application, global and per server."""

    def __init__(self) -> None:
        self.commands: dict[int, AppCommand] = {}

    def scope(self, guild_id: int | None) -> list[AppCommand]:
        return [c for c in self.commands.values() if c.guild_id == guild_id]

    def get(self, command_id: int, guild_id: int | None) -> AppCommand | None:
        cmd = self.commands.get(command_id)
        return cmd if cmd is not None and cmd.guild_id == guild_id else None

    def find(self, name: str, ctype: int, guild_id: int | None) -> AppCommand | None:
        """The command a user picks by name in a server (its own commands first, then global ones) or,
        with ``guild_id`` None, in a DM (global ones)."""
        for scope in ([guild_id, None] if guild_id is not None else [None]):
            for cmd in self.scope(scope):
                if cmd.name == name and cmd.type == ctype:
                    return cmd
        return None

    def put(self, cmd: AppCommand | None, body: JSON, next_id: int, *, application_id: int,
            guild_id: int | None) -> AppCommand:
        """A new or updated command from a checked ``body`` (``cmd``: the one it replaces, or None)."""
        ctype = int(body.get("type", CHAT_INPUT))
        contexts = body.get("contexts")
        new = AppCommand(
            cmd.id if cmd is not None else next_id, application_id, guild_id,
            ctype, str(body["name"]), str(body.get("description") or ""),
            list(body.get("options") or []) if ctype == CHAT_INPUT else [],
            str(body["default_member_permissions"]) if body.get("default_member_permissions") is not None else None,
            bool(body.get("dm_permission", True)) if body.get("dm_permission") is not None else True,
            [int(c) for c in contexts] if contexts is not None else None,
            [int(i) for i in body.get("integration_types") or [0]], bool(body.get("nsfw", False)),
            next_id, body.get("name_localizations"), body.get("description_localizations"),
        )
        return new

    def too_many(self, commands: list[JSON]) -> FormErrors | None:
        """Discord's limits per scope: 100 slash commands; names unique per type."""
        errors = FormErrors()
        slash = [c for c in commands if c.get("type", CHAT_INPUT) == CHAT_INPUT]
        if len(slash) > MAX_GLOBAL_CHAT_INPUT:
            errors.add([], "APPLICATION_COMMANDS_TOO_MANY",
                       f"Maximum number of application commands reached ({MAX_GLOBAL_CHAT_INPUT})")
        seen: set[tuple[int, str]] = set()
        for i, c in enumerate(commands):
            key = (int(c.get("type", CHAT_INPUT)), str(c.get("name")))
            if key in seen:
                errors.add([i, "name"], "APPLICATION_COMMANDS_DUPLICATE_NAME", "Application command names must be unique")
            seen.add(key)
        return errors or None
