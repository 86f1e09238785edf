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
from typing import Any, Literal

from errors import InvalidInput, TooLarge

log = logging.getLogger(__name__)

MAX_CASES = 1000


@dataclass
class Case:
    """One test: ask ``input``, expect ``expected``; ``kind`` says how to compare."""

    input: str
    expected: str
    kind: Literal["answer", "label"] = "answer"
    line: int = 0


@dataclass
class EvalResult:
    total: int
    correct: int
    accuracy: float
    mismatches: list[dict[str, Any]] = field(default_factory=list)  # {input, expected, got, kind}

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
    mismatches = [
        {"input": c.input, "expected": c.expected, "got": got, "kind": c.kind, "line": c.line}
        for c, got in zip(cases, answers)
        if not matches(c, got)
    ]
    correct = len(cases) - len(mismatches)
    return EvalResult(len(cases), correct, correct / len(cases) if cases else 0.0, mismatches)
