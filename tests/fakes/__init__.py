"""Test doubles: a fake OpenAI server and stand-ins for the dataset compiler's output."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

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


def chat_line(user: str, assistant: str, system: str = "You are the server's helper.") -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}]}


def dpo_line(user: str, good: str, bad: str) -> dict[str, Any]:
    return {"input": {"messages": [{"role": "user", "content": user}]},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}]}


@dataclass
class FakeReport:
    """Shaped like datasets.CheckReport (the fields Model and the backends read)."""

    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    n_examples: int = 0
    est_tokens: int = 0
    max_tokens: int = 0
    epochs: int = 3
    billed_tokens: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, limit: int = 10) -> str:
        return "\n".join(str(e) for e in self.errors[:limit]) or "ok"


@dataclass
class FakeCompiled:
    """Shaped like datasets.Compiled."""

    supervised: list = field(default_factory=list)
    preference: list = field(default_factory=list)
    labelled: list = field(default_factory=list)
    report: FakeReport = field(default_factory=FakeReport)


def compiled(faq: list[tuple[str, str]] | None = None, *, labelled: list[tuple[str, str]] | None = None,
             preference: list[dict] | None = None) -> FakeCompiled:
    faq = FAQ if faq is None else faq
    lines = [chat_line(u, a) for u, a in faq]
    return FakeCompiled(lines, preference or [], labelled or [],
                        FakeReport(n_examples=len(lines), est_tokens=40 * len(lines), epochs=3,
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
