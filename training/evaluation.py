"""Test a model on cases: ``{"input", "expected"}`` (answers) or ``{"text", "label"}`` (labels).

``parse_cases`` is sync and cheap; ``run_cases`` is async and asks the model with bounded
concurrency so a big test file cannot flood the backend.
"""

from __future__ import annotations

import asyncio
import json
import logging
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from errors import InvalidInput, TooLarge
from storage import GuildSpace, atomic_write_json, read_json, utc_now

if TYPE_CHECKING:
    from dataset.lines import ChatLine

log = logging.getLogger(__name__)

MAX_CASES = 1000
# The evaluation gate (see Model.poll_job): the server's evaluation set keeps the EVAL_SET_CAP newest distinct
# cases of every !test; a training holds out every HOLDOUT_EVERY-th pair, at most HOLDOUT_CAP; a new model more
# than EVAL_MARGIN (accuracy, 0..1) worse than the current one on the evaluation set stays a candidate.
EVAL_SET_CAP = 500
HOLDOUT_EVERY = 10
HOLDOUT_CAP = 50
EVAL_MARGIN = 0.05


@dataclass
class Case:
    """One test: ask ``input``, expect ``expected``; ``kind`` says how to compare."""

    input: str
    expected: str
    kind: Literal["answer", "label"] = "answer"
    line: int = 0


@dataclass(frozen=True)
class Mismatch:
    """A case the model got wrong: what it was asked, what was expected, what it answered."""

    input: str
    expected: str
    got: str
    kind: Literal["answer", "label"] = "answer"
    line: int = 0


@dataclass
class EvalResult:
    total: int
    correct: int
    accuracy: float
    mismatches: list[Mismatch] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the channel."""
        return f"{self.correct}/{self.total} correct ({self.accuracy:.0%}), {len(self.mismatches)} mismatches"


def _case(obj: Any, line: int, number: int) -> Case:
    where = f"Case {number} (line {line})"
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where}: each case must be an object like {{\"input\": ..., \"expected\": ...}}.")
    if "input" in obj or "expected" in obj:
        keys, kind = ("input", "expected"), "answer"
    elif "text" in obj or "label" in obj:
        keys, kind = ("text", "label"), "label"
    else:
        raise InvalidInput(f"{where}: needs \"input\" and \"expected\", or \"text\" and \"label\".")
    values = []
    for key in keys:
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput(f"{where}: \"{key}\" must be a non-empty string.")
        values.append(value)
    return Case(values[0], values[1], kind, line)  # type: ignore[arg-type]


TOO_DEEP = "The JSON is nested too deeply to be test cases: give {\"input\", \"expected\"} objects."


def parse_cases(text: str) -> list[Case]:
    """Cases from a JSON array or JSON Lines; InvalidInput names the line and column of bad JSON."""
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise InvalidInput("The test file is empty: give a JSON array or JSON lines of {\"input\", \"expected\"}.")
    cases: list[Case] = []
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"Invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}.") from None
        except RecursionError:
            raise InvalidInput(TOO_DEEP) from None
        if not isinstance(items, list):
            raise InvalidInput("Expected a JSON array of cases.")
        # Line numbers of array items are not kept by json; count from 1 in order instead.
        for number, obj in enumerate(items, 1):
            if number > MAX_CASES:
                raise TooLarge(f"Too many test cases: at most {MAX_CASES}.")
            cases.append(_case(obj, number, number))
    else:
        for lineno, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"Invalid JSON at line {lineno}, column {exc.colno}: {exc.msg}.") from None
            except RecursionError:
                raise InvalidInput(f"Line {lineno}: {TOO_DEEP}") from None
            if len(cases) >= MAX_CASES:
                raise TooLarge(f"Too many test cases: at most {MAX_CASES}.")
            cases.append(_case(obj, lineno, len(cases) + 1))
    if not cases:
        raise InvalidInput("The test file has no cases.")
    return cases


def normalize(text: str) -> str:
    """Case-, whitespace- and punctuation-insensitive form of an answer."""
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(" " if unicodedata.category(ch).startswith(("P", "S")) else ch for ch in text)
    return " ".join(kept.split())


def matches(case: Case, got: str) -> bool:
    """Labels must match exactly (surrounding spaces aside); answers after ``normalize``."""
    if case.kind == "label":
        return got.strip() == case.expected.strip()
    return normalize(got) == normalize(case.expected)


async def run_cases(
    answer_fn: Callable[[Case], Awaitable[str]], cases: list[Case], concurrency: int = 4
) -> EvalResult:
    """Ask every case with at most ``concurrency`` in flight; the first backend error aborts the run."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    sem = asyncio.Semaphore(concurrency)

    async def one(case: Case) -> str:
        async with sem:
            return await answer_fn(case)

    tasks = [asyncio.ensure_future(one(c)) for c in cases]
    try:
        answers = await asyncio.gather(*tasks)
    except BaseException:
        # A failing backend would otherwise count every case as wrong: stop and report the error.
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    mismatches = [Mismatch(c.input, c.expected, got, c.kind, c.line) for c, got in zip(cases, answers)
                  if not matches(c, got)]
    correct = len(cases) - len(mismatches)
    return EvalResult(len(cases), correct, correct / len(cases) if cases else 0.0, mismatches)


# --- the server's evaluation set and a training's held-out pairs (sync: the Model runs these in a thread) ---


def _key(kind: str, text: str) -> str:
    return f"{kind}:{normalize(text)}"


def add_to_eval_set(space: GuildSpace, cases: list[Case], *, author_id: int | None,
                    author_name: str | None) -> int:
    """Keep ``cases`` in the server's evaluation set: one per (kind, normalized input), the newest wins, the
    EVAL_SET_CAP newest kept. Returns the set's size. Each case records who gave it (``!forget`` removes it)."""
    now = utc_now()
    latest: dict[str, Case] = {_key(c.kind, c.input): c for c in cases}  # the last of a file's duplicates wins
    with space.db.tx() as tx:
        # Re-added cases move to the newest end: delete, then insert with a new id.
        tx.executemany("DELETE FROM eval_cases WHERE guild_id = ? AND key = ?",
                       [(space.guild_id, key) for key in latest])
        tx.executemany("INSERT INTO eval_cases (guild_id, key, kind, input, expected, author_id, author_name,"
                       " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [(space.guild_id, key, c.kind, c.input, c.expected, author_id, author_name, now)
                        for key, c in latest.items()])
        tx.execute("DELETE FROM eval_cases WHERE guild_id = ? AND id NOT IN (SELECT id FROM eval_cases"
                   " WHERE guild_id = ? ORDER BY id DESC LIMIT ?)", (space.guild_id, space.guild_id, EVAL_SET_CAP))
        return int(tx.scalar("SELECT COUNT(*) FROM eval_cases WHERE guild_id = ?", (space.guild_id,), 0))


def keep_apart(space: GuildSpace, passed: list[Case], failed: list[Case], *, author_id: int | None,
               author_name: str | None) -> int:
    """A !test's cases into the evaluation set, kept apart from what is trained on; the set's size.

    A mismatch becomes training data (``dataset.corrections.add_test_errors``), so a model is scored on it never
    again: its case leaves the evaluation set. A case that passed joins the set, unless a mismatch of an earlier
    !test already made it training data. So no case is both trained on (as a mismatch) and scored on.
    """
    with space.db.tx(write=False) as tx:
        trained = {_key(k, i) for k, i in tx.all("SELECT kind, input FROM test_errors WHERE guild_id = ?",
                                                  (space.guild_id,))}
    dropped = {_key(c.kind, c.input) for c in failed}
    if dropped:
        with space.db.tx() as tx:
            tx.executemany("DELETE FROM eval_cases WHERE guild_id = ? AND key = ?",
                           [(space.guild_id, key) for key in dropped])
    kept = [c for c in passed if _key(c.kind, c.input) not in trained | dropped]
    return add_to_eval_set(space, kept, author_id=author_id, author_name=author_name)


def eval_set(space: GuildSpace) -> list[Case]:
    """The server's evaluation set, oldest first."""
    with space.db.tx(write=False) as tx:
        rows = tx.all("SELECT input, expected, kind FROM eval_cases WHERE guild_id = ? ORDER BY id",
                      (space.guild_id,))
    return [Case(i, e, "label" if k == "label" else "answer") for i, e, k in rows]


def holdout(lines: list[ChatLine]) -> list[Case]:
    """Every HOLDOUT_EVERY-th single-turn pair of compiled chat lines (the 10th, 20th, …), at most HOLDOUT_CAP.

    They are still trained on: a small server cannot spare a tenth of its examples, so the held-out score says
    whether the new model still gives the answers it was taught (a contradicting or broken training fails it),
    not how it generalizes; the evaluation set (people's !test cases) is the one the gate decides on.
    """
    pairs: list[Case] = []
    for line in lines:
        turns = [m for m in line.get("messages") or [] if isinstance(m, dict) and m.get("role") != "system"]
        if len(turns) != 2:
            continue
        question, answer = turns[0].get("content"), turns[1].get("content")
        if (turns[0].get("role") == "user" and turns[1].get("role") == "assistant"
                and isinstance(question, str) and isinstance(answer, str) and question.strip() and answer.strip()):
            pairs.append(Case(question, answer))
    return pairs[HOLDOUT_EVERY - 1::HOLDOUT_EVERY][:HOLDOUT_CAP]


def save_holdout(space: GuildSpace, job_id: str, cases: list[Case]) -> None:
    """Keep a training's held-out pairs until its model is scored (under models/: they are that training's data)."""
    atomic_write_json(space.heldout_dir / f"{job_id}.json", [{"input": c.input, "expected": c.expected}
                                                              for c in cases])


def load_holdout(space: GuildSpace, job_id: str) -> list[Case]:
    """A training's held-out pairs ([] when none were kept)."""
    rows = read_json(space.heldout_dir / f"{job_id}.json", []) or []
    return [Case(r["input"], r["expected"]) for r in rows if isinstance(r, dict)
            and isinstance(r.get("input"), str) and isinstance(r.get("expected"), str)]


def drop_holdout(space: GuildSpace, job_id: str) -> None:
    """The job ended (scored, failed or cancelled): its held-out pairs go."""
    (space.heldout_dir / f"{job_id}.json").unlink(missing_ok=True)
