"""dataset/check.py: the OpenAI cookbook checker (every error kind, warnings, DPO lines, epochs, the report text,
the command line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataset import check
from tests.fakes.samples import chat, codes, good_lines


def test_check_clean_file() -> None:
    report = check.check_lines(good_lines(10))
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.n_examples == 10
    assert report.epochs == 10  # 10 * 3 < 100 -> 100 // 10
    assert report.est_tokens > 0 and report.max_tokens <= report.est_tokens
    assert report.billed_tokens == report.est_tokens * report.epochs
    assert "Check passed" in report.format()


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ('{"messages": [', "invalid_json"),
        ("[1, 2]", "data_type"),
        ('{"prompt": "x"}', "missing_messages_list"),
        ('{"messages": []}', "missing_messages_list"),
        ('{"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}', "message_missing_key"),
        ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}', "message_missing_key"),
        (
            (
                '{"messages": [{"role": "user", "content": "x", "mood": 1}, '
                '{"role": "assistant", "content": "y"}]}'
            ),
            "message_unrecognized_key",
        ),
        (
            '{"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}',
            "unrecognized_role",
        ),
        (
            '{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]}',
            "missing_content",
        ),
        (
            '{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}',
            "missing_content",
        ),
        ('{"messages": [{"role": "user", "content": "x"}]}', "example_missing_assistant_message"),
        (
            (
                '{"messages": [{"role": "user", "content": "x"}, '
                '{"role": "assistant", "content": "y", "weight": 2}]}'
            ),
            "invalid_weight",
        ),
    ],
)
def test_check_each_error_kind(line: str, code: str) -> None:
    lines = good_lines(10)
    lines.insert(3, line)
    report = check.check_lines(lines)
    assert not report.ok
    assert (4, code) in codes(report.errors), report.format()
    assert all(issue.line == 4 for issue in report.errors)
    text = report.format()
    assert "line 4" in text and code in text


def test_check_invalid_json_message_has_column() -> None:
    report = check.check_lines(['{"messages": [{"role": "user" "content": "x"}]}'] + good_lines(10))
    issue = report.errors[0]
    assert issue.line == 1 and issue.code == "invalid_json"
    assert "Expecting ',' delimiter" in issue.message and "column" in issue.message


def test_check_too_few_and_warnings() -> None:
    lines = [json.dumps(chat(system=None))] * 2 + [
        json.dumps({"messages": [{"role": "assistant", "content": "hi"}]})
    ]
    report = check.check_lines(lines)
    assert "too_few_examples" in [c for _, c in codes(report.errors)]
    warn = codes(report.warnings)
    assert (2, "duplicate") in warn
    assert (None, "missing_system_message") in warn and (None, "missing_user_message") in warn
    assert report.epochs == 25  # 100 // 3 = 33, clamped to 25


def test_check_tool_and_function_messages_are_fine() -> None:
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    ex = {
        "messages": [
            {"role": "user", "content": "do"},
            call,
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
            {"role": "assistant", "content": "ok", "weight": 1},
        ]
    }
    legacy = {
        "messages": [
            {"role": "user", "content": "f?"},
            {"role": "assistant", "content": "", "function_call": {"name": "f", "arguments": "{}"}},
            {"role": "function", "name": "f", "content": "42"},
            {"role": "assistant", "content": "42"},
        ]
    }
    report = check.check_lines([json.dumps(ex), json.dumps(legacy)] + good_lines(10))
    assert report.ok, report.format()


def test_check_too_many_tokens_warning() -> None:
    big = json.dumps(chat("x" * (check.TOKEN_LIMIT_PER_EXAMPLE * 4 + 100)))
    report = check.check_lines(good_lines(10) + [big])
    assert report.ok
    assert (11, "too_many_tokens") in codes(report.warnings)
    assert report.max_tokens > check.TOKEN_LIMIT_PER_EXAMPLE
    # Billing caps each example at the cookbook's MAX_TOKENS_PER_EXAMPLE.
    assert report.billed_tokens < report.est_tokens * report.epochs


def test_check_bytes_blank_and_non_utf8_lines() -> None:
    lines = [line.encode() + b"\n" for line in good_lines(10)] + [b"\n", b'{"x": "\xff"}\n']
    report = check.check_lines(lines)
    assert (11, "blank_line") in codes(report.warnings)
    assert (12, "invalid_json") in codes(report.errors)
    assert report.n_examples == 11


def test_check_dpo_lines() -> None:
    good = {
        "input": {"messages": [{"role": "user", "content": "q"}]},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad"}],
    }
    bad = dict(good, preferred_output=[])
    lines = [
        json.dumps(dict(good, input={"messages": [{"role": "user", "content": f"q{i}"}]})) for i in range(10)
    ]
    assert check.check_lines(lines).ok
    report = check.check_lines([*lines, json.dumps(bad)])
    assert (11, "preferred_output") in codes(report.errors)


def test_default_epochs_match_cookbook() -> None:
    assert check.default_epochs(5) == 20  # the cookbook's own example output
    assert check.default_epochs(3) == 25
    assert check.default_epochs(34) == 3
    assert check.default_epochs(100) == 3
    assert check.default_epochs(10_000) == 2
    assert check.default_epochs(30_000) == 1
    assert check.default_epochs(0) == 0


def test_format_limits_and_is_short() -> None:
    report = check.check_lines(["nope"] * 200)
    text = report.format(limit=5)
    assert text.count("\n- line") == 5 and "195 more" in text
    assert len(text) < 2000  # fits one Discord message


def test_main_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(good_lines(12)) + "\n")
    assert check.main(["check", str(good)]) == 0
    assert "Check passed" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(good_lines(12)) + '\n{"messages": [{"role": "user", "content": "x"}]}\n')
    assert check.main(["check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "line 13" in out and "example_missing_assistant_message" in out
    assert check.main(["check", str(tmp_path / "missing.jsonl")]) == 2
    assert check.main([]) == 2
