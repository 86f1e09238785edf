"""The check of the sandbox against Discord's OpenAPI spec (tests/api_spec.py) itself: it refuses what
the spec refuses, every sandbox route has a schema in the spec, and each documented exception
(``DOCS_WIN``, with the documentation's words) names a real place in the spec."""

from __future__ import annotations

import json

from sandbox.rest import Answered
from sandbox.server import Sandbox
from tests import api_spec


def test_every_documented_exception_replaces_a_real_part_of_the_spec() -> None:
    raw = json.loads(api_spec.SPEC_FILE.read_text(encoding="utf-8"))
    for win in api_spec.DOCS_WIN:
        parent, key = api_spec._resolve(raw, win.pointer)
        assert key in parent, win.pointer
        assert parent[key] != win.schema, f"the spec now agrees with the docs at {win.pointer}: drop the exception"
        assert win.docs and win.url.startswith("https://discord.com/developers/docs/")


def test_an_answer_the_spec_refuses_is_a_problem() -> None:
    user = {"id": "1", "username": "a", "discriminator": "0", "avatar": None, "global_name": None,
            "public_flags": 0, "flags": 0, "primary_guild": None, "mfa_enabled": False, "locale": "en-US"}
    assert api_spec.problems([Answered("GET", "/users/@me", 200, json.dumps(user).encode())]) == []
    del user["locale"]
    [problem] = api_spec.problems([Answered("GET", "/users/@me", 200, json.dumps(user).encode())])
    assert "'locale' is a required property" in problem
    # Discord's error bodies, field errors included (their string codes are the docs' exception).
    error = {"message": "Invalid Form Body", "code": 50035,
             "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer"}]}}}
    assert api_spec.problems([Answered("POST", "/channels/{channel_id}/messages", 400,
                                       json.dumps(error).encode())]) == []
    assert api_spec.problems([Answered("POST", "/channels/{channel_id}/messages", 400, b'{"message": "x"}')])
    # An empty answer where the spec has one, and a body where it has none, are problems too.
    assert api_spec.problems([Answered("DELETE", "/channels/{x}/messages/{y}", 204, b"{}")])


def test_a_route_or_status_the_spec_does_not_have_is_a_problem() -> None:
    [problem] = api_spec.problems([Answered("GET", "/channels/{channel_id}/recipes", 200, b"[]")])
    assert "the spec has no route" in problem
    [problem] = api_spec.problems([Answered("PATCH", "/gateway/bot", 200, b"{}")])
    assert "the spec has no PATCH" in problem
    [problem] = api_spec.problems([Answered("DELETE", "/channels/{c}/messages/{m}", 200, b"{}")])
    assert "no 200 answer" in problem


def test_every_route_of_the_sandbox_is_in_the_spec() -> None:
    """A route added to the sandbox must be one of Discord's, with a schema for what it answers."""
    app = Sandbox().make_app()
    checked = 0
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if not path.startswith("/api/v10/") or route.method == "HEAD":
            continue
        route_path = path.removeprefix("/api/v10")
        success = [api_spec._validator(route.method, route_path, status) for status in (200, 204)]
        assert any(not isinstance(v, str) for v in success), f"{route.method} {route_path}: {success}"
        for status in (404, 429):
            refused = api_spec._validator(route.method, route_path, status)
            assert not isinstance(refused, str), refused
        checked += 1
    assert checked >= 20
