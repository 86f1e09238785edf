"""datasets.py: the checker, every ingestion format, the dataset state, and the compiler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataset import check, formats
from dataset import compile as compiler
from dataset import corrections as records
from dataset import folder as dataset_folder
from errors import InvalidInput, NotFound, PathRefused
from storage import GuildSpace, read_json


@pytest.fixture
def space(tmp_path: Path) -> GuildSpace:
    return GuildSpace(11, tmp_path / "data", tmp_path / "corrections").ensure()


def chat(user: str = "hi", answer: str = "hello", system: str | None = "be nice") -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": [*msgs, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def good_lines(n: int = 10) -> list[str]:
    return [json.dumps(chat(f"question {i}", f"answer {i}")) for i in range(n)]


def codes(issues: list[check.Issue]) -> list[tuple[int | None, str]]:
    return [(i.line, i.code) for i in issues]


# --- checker -------------------------------------------------------------------------------


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


# --- ingestion ------------------------------------------------------------------------------


def write(space: GuildSpace, name: str, content: str | bytes) -> Path:
    path = space.data / "uploads" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def test_parse_jsonl_formats_and_bad_lines(space: GuildSpace) -> None:
    lines = [
        json.dumps(chat("hi", "hello")),
        json.dumps({"prompt": "2+2?", "completion": "4"}),
        json.dumps({"input": "capital?", "output": "Paris"}),
        '{"messages": [{"role": "user", "content": "x"} {"role": "assistant"}]}',
        json.dumps({"text": "great product", "label": "good"}),
        "",
        json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
        json.dumps({"prompt": "only prompt"}),
        json.dumps({"text": "   "}),
        json.dumps({"foo": 1}),
        json.dumps(["a"]),
    ]
    report = formats.parse_file(write(space, "a.jsonl", "\n".join(lines)))
    assert report.added == 4
    reasons = dict(report.skipped)
    assert reasons[4].startswith("line 4: not valid JSON (Expecting ',' delimiter, column ")
    assert reasons[7] == "line 7: no assistant message"
    assert reasons[8] == "line 8: no `completion`"
    assert reasons[9] == "line 9: empty text"
    assert "no `messages`" in reasons[10]
    assert "got an array" in reasons[11]
    kinds = [(e["kind"], e.get("label")) for e in report.examples]
    assert kinds == [("chat", None), ("chat", None), ("chat", None), ("text", "good")]
    pair = report.examples[1]
    assert pair["messages"] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    for ex in report.examples:
        assert set(ex) >= {"id", "kind", "positive", "source", "added_by", "added_at", "hash"}
        assert ex["positive"] is True and ex["source"] == "a.jsonl" and ex["added_at"].endswith("Z")


def test_parse_json_array_and_concatenated(space: GuildSpace) -> None:
    array = '[\n  {"prompt": "a", "completion": "b"},\n  {"text": "t"},\n  {"bad": 1}\n]\n'
    report = formats.parse_file(write(space, "x.json", array), positive=False)
    assert report.added == 2
    assert report.skipped[0][0] == 4 and report.skipped[0][1].startswith("line 4: no `messages`")
    assert report.examples[1]["label"] == "negative" and report.examples[0]["positive"] is False
    pretty = json.dumps(chat("q1", "a1"), indent=2) + "\n" + json.dumps(chat("q2", "a2"), indent=2)
    report = formats.parse_file(write(space, "y.json", pretty))
    assert report.added == 2 and report.skipped == []
    broken = '[{"prompt": "a", "completion": "b"},\n {"prompt": "c" "completion": "d"}]'
    report = formats.parse_file(write(space, "z.json", broken))
    assert report.added == 1 and report.skipped[0][0] == 2


def test_parse_json_array_bigger_than_a_chunk(space: GuildSpace) -> None:
    items = [{"prompt": f"p{i} " + "z" * 300, "completion": f"c{i}"} for i in range(8000)]  # ~2.6 MB
    text = "[\n" + ",\n".join(json.dumps(i) for i in items) + "\n]"
    report = formats.parse_file(write(space, "big.json", text))
    assert report.added == 8000 and report.skipped == []
    assert report.examples[-1]["messages"][1]["content"] == "c7999"


def test_parse_csv(space: GuildSpace) -> None:
    content = 'Prompt,Completion\nhello,hi there\n"multi\nline prompt","ok, fine"\n,missing\n\nlast,one\n'
    report = formats.parse_file(write(space, "a.csv", content))
    assert report.added == 3
    assert report.skipped == [(5, "line 5: empty prompt")]
    assert report.examples[1]["messages"][0]["content"] == "multi\nline prompt"
    labelled = formats.parse_file(write(space, "b.csv", "text,label\nnice,pos\nbad,\n"))
    assert [(e["text"], e["label"]) for e in labelled.examples] == [("nice", "pos"), ("bad", "positive")]
    with pytest.raises(InvalidInput, match="header row"):
        formats.parse_file(write(space, "c.csv", "a,b\n1,2\n"))


def test_parse_txt_and_inline(space: GuildSpace) -> None:
    report = formats.parse_file(write(space, "a.txt", "first line\n\n  second  \r\nthird\n"), positive=False)
    assert [(e["text"], e["label"], e["positive"]) for e in report.examples] == [
        ("first line", "negative", False),
        ("second", "negative", False),
        ("third", "negative", False),
    ]
    inline = formats.parse_text("what is 2+2? => 4\njust text\n => nothing\nq =>   ")
    assert inline.added == 2
    assert inline.examples[0]["messages"][1]["content"] == "4"
    assert inline.examples[1]["kind"] == "text"
    assert [n for n, _ in inline.skipped] == [3, 4]
    assert "empty prompt" in inline.skipped[0][1] and "empty completion" in inline.skipped[1][1]


def test_parse_refusals(space: GuildSpace) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        formats.parse_file(write(space, "e.jsonl", ""))
    with pytest.raises(InvalidInput, match="only blank"):
        formats.parse_file(write(space, "b.txt", "\n \n"))
    with pytest.raises(InvalidInput, match="UTF-8.*line 2"):
        formats.parse_file(write(space, "l.txt", b"fine\ncaf\xe9\n"))
    with pytest.raises(InvalidInput, match="UTF-8"):
        formats.parse_file(write(space, "l.json", b'[{"text": "caf\xe9"}]'))
    with pytest.raises(InvalidInput, match="unsupported file type"):
        formats.parse_file(write(space, "x.pdf", "%PDF"))
    with pytest.raises(InvalidInput):
        formats.parse_text("  \n ")


def test_parse_unicode_and_bom(space: GuildSpace) -> None:
    content = "\ufeff" + json.dumps({"prompt": "Привет 👋", "completion": "你好"}, ensure_ascii=False) + "\n"
    report = formats.parse_file(write(space, "u.jsonl", content))
    assert report.added == 1
    assert report.examples[0]["messages"][0]["content"] == "Привет 👋"


def test_parse_path_folder_skips_hidden_symlinks_and_bad_files(space: GuildSpace, tmp_path: Path) -> None:
    folder = space.data / "incoming"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("one\ntwo\n")
    (folder / "sub" / "b.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n{oops\n")
    (folder / ".secret.txt").write_text("hidden\n")
    (folder / "empty.txt").write_text("")
    (folder / "notes.pdf").write_text("ignored")
    outside = tmp_path / "outside.txt"
    outside.write_text("leaked\n")
    (folder / "link.txt").symlink_to(outside)
    report = formats.parse_path(space, "incoming")
    texts = sorted(e.get("text", "") for e in report.examples)
    assert texts == ["", "one", "two"]
    reasons = [r for _, r in report.skipped]
    assert any(r.startswith("incoming/sub/b.jsonl line 2: not valid JSON") for r in reasons)
    assert any("empty.txt" in r and "empty" in r for r in reasons)
    assert not any("leaked" in json.dumps(e) for e in report.examples)
    with pytest.raises(PathRefused):
        formats.parse_path(space, "../outside.txt")
    with pytest.raises(NotFound):
        formats.parse_path(space, "nothing-here")


# --- the dataset ----------------------------------------------------------------------------


def test_ingest_writes_new_files_and_skips_duplicates(space: GuildSpace) -> None:
    assert dataset_folder.dataset_name(space) == "datasets/main"
    first = dataset_folder.ingest_text(space, "a => b\nhello\nhello", author="ann")
    assert first.added == 2 and first.duplicates == 1
    assert first.skipped == [(3, "line 3: already in the dataset")]
    files = sorted(dataset_folder.current_dataset(space).glob("ingested-*.jsonl"))
    assert len(files) == 1
    before = files[0].read_bytes()
    second = dataset_folder.ingest_text(space, "hello\nnew", author="bob")
    assert second.added == 1 and second.duplicates == 1
    files = sorted(dataset_folder.current_dataset(space).glob("ingested-*.jsonl"))
    assert len(files) == 2 and before in (files[0].read_bytes(), files[1].read_bytes())  # never rewritten
    # Same text with the other flag is a different example.
    assert dataset_folder.ingest_text(space, "hello", author="c", positive=False).added == 1
    # Nothing new: no empty file is created.
    assert dataset_folder.ingest_text(space, "hello", author="c").added == 0
    assert len(list(dataset_folder.current_dataset(space).glob("*.jsonl"))) == 3
    loaded = dataset_folder.load_dataset(space, dataset_folder.current_dataset(space))
    assert loaded.added == 4 and loaded.skipped == []
    record = next(e for e in loaded.examples if e.get("text") == "new")
    assert record["added_by"] == "bob" and record["source"] == "inline"
    assert not any(p.name.startswith(".") for p in dataset_folder.current_dataset(space).iterdir())


def test_ingest_file_and_add_examples(space: GuildSpace) -> None:
    path = dataset_folder.store_upload(space, "../../evil name.jsonl", b'{"prompt": "p", "completion": "c"}\n')
    assert path.parent == space.uploads and ".." not in path.name and path.name.endswith("evil_name.jsonl")
    report = dataset_folder.ingest_file(space, path, author="ann", source="evil name.jsonl")
    assert report.added == 1
    parsed = formats.parse_text("x => y\np => c")
    assert (
        dataset_folder.add_examples(space, parsed.examples, source="inline", author="bob") == 1
    )  # p => c is known


def test_ingest_non_utf8_writes_nothing(space: GuildSpace) -> None:
    path = write(space, "bad.txt", b"ok\n" * 100 + b"\xff\xfe\n")
    with pytest.raises(InvalidInput):
        dataset_folder.ingest_file(space, path, author="ann")
    assert not dataset_folder.current_dataset(space).exists() or not any(dataset_folder.current_dataset(space).iterdir())


def test_ingest_path_into_dataset(space: GuildSpace) -> None:
    (space.data / "raw").mkdir()
    (space.data / "raw" / "a.txt").write_text("x\ny\n")
    report = dataset_folder.ingest_path(space, "raw", author="ann")
    assert report.added == 2 and report.files == 1
    assert dataset_folder.ingest_path(space, "raw", author="ann").duplicates == 2
    (space.data / "nothing").mkdir()
    with pytest.raises(InvalidInput):
        dataset_folder.ingest_path(space, "nothing", author="ann")


def test_select_dataset(space: GuildSpace) -> None:
    folder = space.data / "datasets" / "reviews"
    folder.mkdir(parents=True)
    (folder / "good.txt").write_text("love it\ngreat\n")
    result = dataset_folder.select_dataset(space, "datasets/reviews", positive=False)
    assert result.name == "datasets/reviews" and result.examples == 2
    assert result.archive.path.is_file() and result.archive.files == 1
    state = read_json(space.state_file)
    assert state["dataset"] == "datasets/reviews" and state["dataset_positive"] is False
    assert dataset_folder.current_dataset(space) == folder.resolve()
    loaded = dataset_folder.load_dataset(space, dataset_folder.current_dataset(space))
    assert {e["label"] for e in loaded.examples} == {"negative"}
    (space.data / "datasets" / "empty").mkdir()
    with pytest.raises(InvalidInput):
        dataset_folder.select_dataset(space, "datasets/empty")
    with pytest.raises(PathRefused):
        dataset_folder.select_dataset(space, "../x")


def test_state_with_bad_dataset_path_falls_back(space: GuildSpace) -> None:
    dataset_folder.update_state(space, dataset="../../etc")
    assert dataset_folder.dataset_name(space) == "datasets/main"
    dataset_folder.update_state(space, dataset=None, system_prompt="hi")
    assert dataset_folder.read_state(space) == {"system_prompt": "hi"}


# --- compiler -------------------------------------------------------------------------------


def test_compile_with_corrections_makes_dpo(space: GuildSpace) -> None:
    examples = "\n".join(f"question {i} => answer {i}" for i in range(8)) + "\nnice text"
    dataset_folder.ingest_text(space, examples, author="ann")
    # A bad answer stored as a negative example, with a good one for the same prompt.
    dataset_folder.ingest_text(space, "question 1 => wrong answer", author="ann", positive=False)
    dataset_folder.ingest_text(space, "unmatched => bad", author="ann", positive=False)
    dataset_folder.update_state(space, system_prompt="You are helpful.")
    for i in range(3):
        records.add_correction(
            space,
            message_id=i,
            prompt=f"asked {i}",
            answer=f"bot said {i}",
            correction=f"should be {i}",
            author_id=1,
            author_name="ann",
            channel_id=2,
        )
    records.add_test_errors(space, [{"input": "test q", "expected": "test a", "got": "test wrong"}])
    compiled = compiler.compile_guild(space)
    assert len(compiled.supervised) == 8 + 1 + 3 + 1
    assert compiled.labelled == [("nice text", "positive")]
    for line in compiled.supervised:
        assert line["messages"][0] == {"role": "system", "content": "You are helpful."}
    corrected = [line for line in compiled.supervised if line["messages"][1]["content"] == "asked 0"]
    assert corrected[0]["messages"][2] == {"role": "assistant", "content": "should be 0"}
    assert len(compiled.preference) == 3 + 1 + 1
    dpo = compiled.preference[0]
    assert dpo["input"]["messages"] == [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "asked 0"},
    ]
    assert dpo["preferred_output"] == [{"role": "assistant", "content": "should be 0"}]
    assert dpo["non_preferred_output"] == [{"role": "assistant", "content": "bot said 0"}]
    neg = [p for p in compiled.preference if p["non_preferred_output"][0]["content"] == "wrong answer"]
    assert neg and neg[0]["preferred_output"][0]["content"] == "answer 1"
    assert compiled.report.ok, compiled.report.format()
    assert (None, "negative_without_positive") in codes(compiled.report.warnings)
    assert compiled.preference_report is not None
    assert (None, "too_few_examples") in codes(compiled.preference_report.errors)  # only 5 pairs
    blob = compiler.to_jsonl(compiled.supervised)
    assert blob.endswith(b"\n") and len(blob.splitlines()) == len(compiled.supervised)
    assert check.check_lines(blob.splitlines()).ok


def test_compile_corrected_answer_replaces_dataset_example(space: GuildSpace) -> None:
    dataset_folder.ingest_text(space, "\n".join(f"q{i} => a{i}" for i in range(12)), author="ann")
    records.add_correction(
        space,
        message_id=1,
        prompt="q3",
        answer="a3",
        correction="better a3",
        author_id=1,
        author_name="ann",
        channel_id=2,
    )
    compiled = compiler.compile_guild(space)
    answers = [line["messages"][-1]["content"] for line in compiled.supervised]
    assert "a3" not in answers and "better a3" in answers
    assert len(compiled.preference) == 1


def test_compile_empty_guild_reports_too_few(space: GuildSpace) -> None:
    compiled = compiler.compile_guild(space)
    assert compiled.supervised == [] and compiled.preference == [] and compiled.preference_report is None
    assert not compiled.report.ok
    assert codes(compiled.report.errors) == [(None, "too_few_examples")]
