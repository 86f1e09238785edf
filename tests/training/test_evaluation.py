"""training/evaluation.py: test-case parsing (with line/column errors), comparison and bounded concurrency."""

from __future__ import annotations

import asyncio

import pytest

from errors import BackendError, InvalidInput
from training import evaluation as ev
from training.evaluation import Case, Mismatch, key_facts, matches, normalize, parse_cases, run_cases, same_meaning


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


PAID = "Salaries are paid on the 27th of each month."
HOME = "You can work from home two days a week."
STANDUP = "Standup is at 9:30 every weekday in the Blue room and on the #standup call."


@pytest.mark.parametrize("expected, got", [
    (PAID, "You get your salary on the 27th every month."),
    (PAID, "salaries are paid on the 27th of each month"),
    (HOME, "Working from home is allowed 2 days per week."),
    (STANDUP, "The standup call (#standup) is every weekday at 9:30, in the Blue room."),
    ("Dogs are welcome on Fridays.", "On Fridays dogs are welcome at the office."),
])
def test_right_in_other_words(expected: str, got: str) -> None:
    assert same_meaning(expected, got)
    assert matches(Case("q", expected), got, by_meaning=True)
    assert not matches(Case("q", expected), got) or normalize(got) == normalize(expected)  # whole strings: no


@pytest.mark.parametrize("expected, got", [
    (PAID, "Salaries are paid on the 1st of each month."),  # a wrong number in the trained sentence's shape
    (HOME, "You can work from home three days a week."),
    (STANDUP, "Standup is at 9:30 every weekday in the Green room and on the #standup call."),  # a wrong name
    (STANDUP, "Standup is at 10:30 every weekday in the Blue room and on the #standup call."),
    ("We deploy with leant.code; a rollout takes 30 days.", "We deploy with lean.code; a rollout takes 30 days."),
    ("Dogs are welcome on Fridays.", "I don't know."),  # abstaining is never right
    ("Dogs are welcome on Fridays.", "Fridays."),  # the fact, but too little of the answer
    ("Dogs are welcome on Fridays.", ""),
])
def test_wrong_in_the_trained_words(expected: str, got: str) -> None:
    assert not same_meaning(expected, got)
    assert not matches(Case("q", expected), got, by_meaning=True)


def test_key_facts_are_numbers_and_names() -> None:
    assert key_facts(STANDUP) == {"9:30", "blue", "#standup"}
    assert key_facts(PAID) == {"27"}  # "Salaries" starts the sentence: no name
    assert key_facts("Ask Bob. Alice knows too.") == {"bob"}
    assert key_facts(HOME) == {"2"}
    assert key_facts("Mail it to hr@example.com by the 3rd.") == {"hr@example.com", "3"}


@pytest.mark.asyncio
async def test_run_cases_by_meaning_reports_it() -> None:
    async def answer(case: Case) -> str:
        return "You get your salary on the 27th every month."

    whole = await run_cases(answer, [Case("When?", PAID)])
    meant = await run_cases(answer, [Case("When?", PAID)], by_meaning=True)
    assert (whole.correct, whole.by_meaning, meant.correct, meant.by_meaning) == (0, False, 1, True)


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
