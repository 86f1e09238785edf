"""Discord's own OpenAPI description as a check on the sandbox: every REST answer it gives in a test
must match the spec's response schema for that route, method and status.

The spec is vendored in ``tests/discord_api_spec/`` (see its README). The sandbox records what it
answers (``Sandbox.rest.responses``, switched on by the autouse fixture in ``tests/conftest.py``);
:func:`problems` says what in those answers the spec refuses. Schemas are JSON Schema Draft 2020-12
with ``$ref``s resolved inside the spec; fields the spec does not list are allowed (its schemas
allow them). A route or status the spec has no response for is a problem too: a new sandbox route
must be one that Discord has.

Where Discord's documentation and the spec disagree, the documentation wins: :data:`DOCS_WIN` lists
each such difference with the documentation's words, as the schema that replaces the spec's there.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from sandbox.rest import Answered

SPEC_FILE = Path(__file__).parent / "discord_api_spec" / "openapi.json"
SPEC_URI = "urn:discord-api-spec"
_PARAM = re.compile(r"\{[^}]+\}")


@dataclass(frozen=True)
class DocsWin:
    """One place where Discord's documentation and the spec disagree, and the sandbox follows the
    documentation: the spec's schema at ``pointer`` (a JSON pointer into openapi.json) is replaced by
    ``schema`` before anything is checked. ``docs`` quotes the documentation, ``url`` is its page."""

    pointer: str
    schema: dict[str, Any]
    docs: str
    url: str


DOCS_WIN: tuple[DocsWin, ...] = (
    DocsWin(
        "/components/schemas/InnerErrors/properties/_errors/items",
        {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
         "required": ["code", "message"]},
        'The spec gives a field error the integer "code" of the top-level error; the documentation\'s examples '
        'of "Invalid Form Body" give each field error a string code: {"code": 50035, "errors": {"access_token": '
        '{"_errors": [{"code": "BASE_TYPE_REQUIRED", "message": "This field is required"}]}}, '
        '"message": "Invalid Form Body"}',
        "https://discord.com/developers/docs/reference#error-messages",
    ),
    DocsWin(
        "/components/schemas/RatelimitedResponse",
        {"type": "object", "properties": {
            "message": {"type": "string"}, "retry_after": {"type": "number"}, "global": {"type": "boolean"},
            "code": {"type": "integer"}}, "required": ["message", "retry_after", "global"]},
        'The spec requires "code" in a 429\'s body; the documentation\'s Rate Limit Response Structure has '
        '"code?  integer  An error code for some limits" (optional), and its example has none: '
        '{"message": "You are being rate limited.", "retry_after": 64.57, "global": false}',
        "https://discord.com/developers/docs/topics/rate-limits#exceeding-a-rate-limit-rate-limit-response-structure",
    ),
    DocsWin(
        "/components/schemas/InteractionCallbackResponse/properties/resource",
        {"type": "object", "properties": {
            "type": {"$ref": "#/components/schemas/InteractionCallbackTypes"},
            "activity_instance": {"$ref": "#/components/schemas/ActivityInstanceCallbackResponse"},
            "message": {"$ref": "#/components/schemas/MessageResponse"}}, "required": ["type"]},
        'The spec allows a callback\'s resource only for types 4, 7 and 12; the documentation\'s Interaction '
        'Callback Resource Object is one shape for every callback type: "type  interaction callback type  '
        'Interaction callback type", "activity_instance?  ...  Only present if type is LAUNCH_ACTIVITY", '
        '"message?  message object  Message created by the interaction. Only present if type is either '
        'CHANNEL_MESSAGE_WITH_SOURCE or UPDATE_MESSAGE"',
        "https://discord.com/developers/docs/interactions/receiving-and-responding"
        "#interaction-callback-interaction-callback-resource-object",
    ),
)


def _resolve(document: Any, pointer: str) -> tuple[Any, str]:
    """The object holding what ``pointer`` names, and its key there."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.removeprefix("/").split("/")]
    for p in parts[:-1]:
        document = document[int(p) if isinstance(document, list) else p]
    return document, parts[-1]


@functools.cache
def _spec() -> dict[str, Any]:
    """The vendored spec, with the documentation's corrections (:data:`DOCS_WIN`) in place."""
    spec: dict[str, Any] = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    for win in DOCS_WIN:
        parent, key = _resolve(spec, win.pointer)
        if key not in parent:
            raise KeyError(f"DOCS_WIN: the spec has nothing at {win.pointer}")
        parent[key] = win.schema
    return spec


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource(SPEC_URI, Resource(contents=_spec(), specification=DRAFT202012))


@functools.cache
def _paths() -> dict[str, str]:
    """The spec's paths by their shape (``/channels/{}/messages``): the sandbox names parameters its own way."""
    return {_PARAM.sub("{}", path): path for path in _spec()["paths"]}


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _deref(node: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """An OpenAPI object that may be a ``$ref`` into the spec, and where it lives."""
    parts: list[str] = []
    while "$ref" in node:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in node["$ref"].removeprefix("#/").split("/")]
        node = _spec()
        for p in parts:
            node = node[p]
    return node, parts


@functools.cache
def _validator(method: str, route: str, status: int) -> Draft202012Validator | str | None:
    """The validator for that answer's JSON body; None when the spec says it has none (204); a
    string saying why there is no schema for it."""
    path = _paths().get(_PARAM.sub("{}", route))
    if path is None:
        return f"the spec has no route {route}"
    op = _spec()["paths"][path].get(method.lower())
    if op is None:
        return f"the spec has no {method} {path}"
    responses = op["responses"]
    key = next((k for k in (str(status), f"{str(status)[0]}XX", "default") if k in responses), None)
    if key is None:
        return f"the spec has no {status} answer for {method} {path} (it has {', '.join(responses)})"
    response, parts = _deref(responses[key])
    content = response.get("content")
    if not content:
        return None
    if "application/json" not in content:
        return f"the spec's {status} answer for {method} {path} is not JSON"
    where = parts or ["paths", path, method.lower(), "responses", key]
    ref = SPEC_URI + _pointer(*where, "content", "application/json", "schema")
    return Draft202012Validator({"$ref": ref}, registry=_registry())


_ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT")


def _shape(value: Any) -> Any:
    """What of a JSON value a schema can tell apart, as a hashable key: keys, ints, booleans and nulls as
    they are; strings by kind (digits like a snowflake, an ISO time, other); lists by the set of their
    items' shapes. Two bodies of one shape pass or fail the spec's schemas alike (its string patterns
    tell these kinds apart; the string enums it has are fixed values in the sandbox's answers), so each
    shape is checked once."""
    if isinstance(value, dict):
        return tuple(sorted((k, _shape(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("[]", frozenset(_shape(v) for v in value))
    if isinstance(value, str):
        return "<digits>" if value.isdigit() else "<time>" if _ISO_TIME.match(value) else "<text>"
    if isinstance(value, float):
        return "<float>"
    return value


# (method, route, status, shape) of every answer that passed, for the whole session: the suite's
# thousands of answers come in a few hundred shapes.
_PASSED: set[tuple[str, str, int, Any]] = set()


def problems(answers: list[Answered]) -> list[str]:
    """What the spec refuses in ``answers``, one line each (each shape of answer is checked once)."""
    found: list[str] = []
    for answer in dict.fromkeys(answers):
        validator = _validator(answer.method, answer.route, answer.status)
        what = f"{answer.method} {answer.route} -> {answer.status}"
        if isinstance(validator, str):
            found.append(f"{what}: {validator}")
            continue
        if validator is None:
            if answer.body:
                found.append(f"{what}: the spec says this answer has no body, the sandbox sent {answer.body[:80]!r}")
            continue
        try:
            body = json.loads(answer.body)
        except ValueError:
            found.append(f"{what}: not JSON: {answer.body[:80]!r}")
            continue
        key = (answer.method, answer.route, answer.status, _shape(body))
        if key in _PASSED:
            continue
        errors = [f"{what}: at {e.json_path}: {e.message[:300]}" for e in validator.iter_errors(body)]
        if errors:
            found.extend(errors)
        else:
            _PASSED.add(key)
    return list(dict.fromkeys(found))
