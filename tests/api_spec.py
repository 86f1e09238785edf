"""Discord's own OpenAPI description as a check on the sandbox: every REST answer it gives in a test
must match the spec's response schema for that route, method and status.

The spec is vendored in ``tests/discord_api_spec/`` (see its README). The sandbox records what it
answers (``Sandbox.rest.responses``, switched on by the autouse fixture in ``tests/conftest.py``);
:func:`problems` says what in those answers the spec refuses. Schemas are JSON Schema Draft 2020-12
with ``$ref``s resolved inside the spec; fields the spec does not list are allowed (its schemas
allow them). A route or status the spec has no response for is a problem too: a new sandbox route
must be one that Discord has.

Where Discord's documentation and the spec disagree, the documentation wins: :data:`DOCS_WIN` lists
each such difference with the documentation's words, and only those differences are let through.
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
    """One place where the sandbox follows Discord's documentation, not the spec: answers of
    ``method`` ``route`` (the spec's path, ``{...}`` names ignored) whose error is at ``where`` (a
    regex on the error's JSON path in the body, e.g. ``$.install_params``). ``docs`` quotes the
    documentation, with its page."""

    method: str
    route: str
    where: str
    docs: str

    def covers(self, method: str, route: str, json_path: str) -> bool:
        return (method == self.method and _PARAM.sub("{}", route) == _PARAM.sub("{}", self.route)
                and re.fullmatch(self.where, json_path) is not None)


DOCS_WIN: tuple[DocsWin, ...] = ()


@functools.cache
def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
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


def problems(answers: list[Answered]) -> list[str]:
    """What the spec refuses in ``answers``, one line each (identical answers are checked once)."""
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
        for error in validator.iter_errors(body):
            if any(d.covers(answer.method, answer.route, error.json_path) for d in DOCS_WIN):
                continue
            found.append(f"{what}: at {error.json_path}: {error.message[:300]}")
    return found
