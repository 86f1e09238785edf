"""training/evaluation.py: test-case parsing (with line/column errors), comparison and bounded concurrency."""

from __future__ import annotations

import asyncio

import pytest

from errors import BackendError, InvalidInput
from training.evaluation import Case, matches, normalize, parse_cases, run_cases


def test_parse_array_and_lines() -> None:
    arr = parse_cases('[{"input": "hi", "expected": "Hello!"}, {"text": "great", "label": "pos"}]')
    assert [(c.input, c.expected, c.kind) for c in arr] == [("hi", "Hello!", "answer"), ("great", "pos", "label")]
    lines = parse_cases('\ufeff{"input": "a", "expected": "b"}\n\n{"text": "t", "label": "l"}\n')
    assert [(c.kind, c.line) for c in lines] == [("answer", 1), ("label", 3)]


@pytest.mark.parametrize("text, where", [
    ('{"input": "a", "expected": "b"}\n{"input": "a" "expected": "b"}', "line 2, column 15"),
    ('[\n  {"input": "a",\n   "expected": }\n]', "line 3, column 16"),
])
def test_bad_json_names_line_and_column(text: str, where: str) -> None:
    with pytest.raises(InvalidInput, match=where):
        parse_cases(text)


@pytest.mark.parametrize("text, msg", [
    ("", "empty"), ("  \n ", "empty"), ("[]", "no cases"),
    ('{"question": "a"}', "needs"), ('{"input": "a", "expected": 3}', '"expected" must be'),
    ("[1]", "must be an object"), ('{"a": 1}', "Case 1 \\(line 1\\)"),
])
def test_invalid_cases(text: str, msg: str) -> None:
    with pytest.raises(InvalidInput, match=msg):
        parse_cases(text)


def test_normalized_comparison() -> None:
    assert normalize("  The Shop opens at 9 AM! ") == "the shop opens at 9 am"
    assert matches(Case("q", "The shop opens at 9 am."), "the shop   opens at 9 AM")
    assert not matches(Case("q", "9 am"), "10 am")
    assert matches(Case("t", "positive", "label"), " positive ")
    assert not matches(Case("t", "positive", "label"), "Positive")


@pytest.mark.asyncio
async def test_bounded_concurrency_and_accuracy() -> None:
    in_flight = peak = 0

    async def answer(case: Case) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return case.expected.upper() if int(case.input) % 4 else "wrong"

    cases = [Case(str(i), f"answer {i}.") for i in range(20)]
    result = await run_cases(answer, cases, concurrency=3)
    assert peak == 3
    assert (result.total, result.correct) == (20, 15) and result.accuracy == 0.75
    assert [m["input"] for m in result.mismatches] == ["0", "4", "8", "12", "16"]
    assert result.mismatches[0] == {"input": "0", "expected": "answer 0.", "got": "wrong", "kind": "answer",
                                    "line": 0}
    assert "15/20 correct (75%)" in result.summary()


@pytest.mark.asyncio
async def test_backend_error_aborts_the_run() -> None:
    calls = 0

    async def answer(case: Case) -> str:
        nonlocal calls
        calls += 1
        if case.input == "2":
            raise BackendError("OpenAI is down")
        await asyncio.sleep(0.05)
        return "x"

    with pytest.raises(BackendError, match="down"):
        await run_cases(answer, [Case(str(i), "x") for i in range(50)], concurrency=4)
    assert calls < 50
