"""training/evaluation.py: test-case parsing (with line/column errors), comparison and bounded concurrency."""

from __future__ import annotations

import asyncio

import pytest

from errors import BackendError, InvalidInput
from training import evaluation as ev
from training.evaluation import Case, Mismatch, matches, normalize, parse_cases, run_cases


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
    assert [m.input for m in result.mismatches] == ["0", "4", "8", "12", "16"]
    assert result.mismatches[0] == Mismatch(input="0", expected="answer 0.", got="wrong", kind="answer", line=0)
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


# ---------------------------------------------------------------- the evaluation set and held-out pairs

def test_eval_set_keeps_the_newest_distinct_cases(space, monkeypatch) -> None:
    monkeypatch.setattr(ev, "EVAL_SET_CAP", 3)
    first = [ev.Case("Hours?", "9 to 5"), ev.Case("love it", "positive", "label"), ev.Case("Where?", "Here")]
    assert ev.add_to_eval_set(space, first, author_id=7, author_name="ann") == 3
    # "  HOURS? " is the same question (normalized): the newer expected answer wins and moves to the end.
    assert ev.add_to_eval_set(space, [ev.Case("  HOURS? ", "10 to 6"), ev.Case("New?", "Yes")],
                              author_id=8, author_name="bob") == 3
    kept = ev.eval_set(space)
    assert [(c.input, c.expected, c.kind) for c in kept] == [
        ("Where?", "Here", "answer"), ("  HOURS? ", "10 to 6", "answer"), ("New?", "Yes", "answer")]


def test_holdout_takes_every_tenth_single_turn_pair_up_to_the_cap(space) -> None:
    def line(n: int, turns: int = 1) -> dict:
        msgs = [{"role": "system", "content": "s"}]
        for _ in range(turns):
            msgs += [{"role": "user", "content": f"q{n}"}, {"role": "assistant", "content": f"a{n}"}]
        return {"messages": msgs}

    lines = [line(n, turns=2 if n == 19 else 1) for n in range(1, 1000)]
    held = ev.holdout(lines)
    assert len(held) == ev.HOLDOUT_CAP
    assert [c.input for c in held[:3]] == ["q10", "q21", "q31"]  # multi-turn q19 is skipped, so counting shifts
    ev.save_holdout(space, "job-1", held)
    assert ev.load_holdout(space, "job-1") == held
    ev.drop_holdout(space, "job-1")
    assert ev.load_holdout(space, "job-1") == []
