"""Sample data: the FAQ, training lines in the chat and preference formats, check reports and compiled
datasets made without the compiler, uploads written into a data space, and tracked injected clients."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dataset.check import CheckReport, Issue
from dataset.compile import Compiled
from dataset.lines import ChatLine, PreferenceLine
from storage import GuildSpace

log = logging.getLogger(__name__)

FAQ = [
    ("When does the shop open?", "The shop opens at 9 am."),
    ("Where is the office?", "The office is on the second floor."),
    ("Who is the admin of this server?", "Alice is the admin."),
    ("How do I reset my password?", "Use the reset link on the login page."),
    ("What is the wifi password?", "The wifi password is on the fridge."),
    ("Can I bring my dog to work?", "Dogs are welcome on Fridays."),
    ("When is the team meeting?", "The team meeting is every Monday at 10."),
    ("Where do I park my bike?", "Bikes go in the basement rack."),
    ("How much holiday do I get?", "You get 25 days of holiday a year."),
    ("Who do I ask about payroll?", "Ask Bob in finance about payroll."),
    ("Is there coffee in the kitchen?", "Yes, fresh coffee every morning."),
    ("What time is lunch?", "Lunch is at half past twelve."),
]


def chat_line(user: str, assistant: str, system: str = "You are the server's helper.") -> ChatLine:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}]}


def dpo_line(user: str, good: str, bad: str) -> PreferenceLine:
    return {"input": {"messages": [{"role": "user", "content": user}]},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}]}


def chat(user: str = "hi", answer: str = "hello", system: str | None = "be nice") -> dict:
    """A chat-format example; ``system=None`` leaves the system message out."""
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": [*msgs, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def good_lines(n: int = 10) -> list[str]:
    """``n`` valid chat-format JSONL lines, each a different question."""
    return [json.dumps(chat(f"question {i}", f"answer {i}")) for i in range(n)]


def codes(issues: list[Issue]) -> list[tuple[int | None, str]]:
    """A check report's issues as (line, code) pairs."""
    return [(i.line, i.code) for i in issues]


def write_upload(space: GuildSpace, name: str, content: str | bytes) -> Path:
    """Write ``content`` as the upload ``name`` in the space's uploads folder."""
    path = space.data / "uploads" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def jsonl(*objs: dict) -> bytes:
    """``objs`` as the bytes of a UTF-8 JSONL file."""
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs).encode("utf-8")


def pair(q: str, a: str) -> dict:
    """A prompt/completion example."""
    return {"prompt": q, "completion": a}


def report(**fields: Any) -> CheckReport:
    """A dataset check report with the given fields (the rest empty)."""
    base: dict[str, Any] = {"errors": [], "warnings": [], "n_examples": 0, "est_tokens": 0, "max_tokens": 0,
                            "epochs": 3, "billed_tokens": 0}
    return CheckReport(**{**base, **fields})


def compiled(faq: list[tuple[str, str]] | None = None, *, labelled: list[tuple[str, str]] | None = None,
             preference: list[PreferenceLine] | None = None) -> Compiled:
    faq = FAQ if faq is None else faq
    lines = [chat_line(u, a) for u, a in faq]
    return Compiled(lines, preference or [], labelled or [],
                    report(n_examples=len(lines), est_tokens=40 * len(lines), epochs=3,
                           billed_tokens=120 * len(lines)))


# Clients a test injects into the code under test are not closed by that code (it does not own them):
# tests register them here and conftest closes them after each test.
_tracked_clients: list[Any] = []


def track_client(client: Any) -> Any:
    """Register an injected client (anything with an async close()) to be closed after the test."""
    _tracked_clients.append(client)
    return client


async def close_tracked_clients() -> None:
    while _tracked_clients:
        await _tracked_clients.pop().close()
