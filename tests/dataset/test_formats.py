"""dataset/formats.py: every ingestion format (.jsonl, .json, .csv, .txt, inline) and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataset import formats
from errors import InvalidInput, NotFound, PathRefused
from storage import GuildSpace
from tests.fakes.samples import chat, write_upload


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
    report = formats.parse_file(write_upload(space, "a.jsonl", "\n".join(lines)))
    assert report.added == 4
    reasons = dict(report.skipped)
    assert reasons[4].startswith("line 4: not valid JSON (Expecting ',' delimiter, column ")
    assert reasons[7] == "line 7: no assistant message"
    assert reasons[8] == "line 8: no `completion`"
    assert reasons[9] == "line 9: empty text"
    assert "no `messages`" in reasons[10]
    assert "got an array" in reasons[11]
    kinds = [(e.kind, e.to_json().get("label")) for e in report.examples]
    assert kinds == [("chat", None), ("chat", None), ("chat", None), ("text", "good")]
    pair = report.examples[1]
    assert pair.messages == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    for ex in report.examples:
        assert set(ex.to_json()) >= {"id", "kind", "positive", "source", "added_by", "added_at", "hash"}
        assert ex.positive is True and ex.source == "a.jsonl" and ex.added_at is not None and ex.added_at.endswith("Z")


def test_parse_json_array_and_concatenated(space: GuildSpace) -> None:
    array = '[\n  {"prompt": "a", "completion": "b"},\n  {"text": "t"},\n  {"bad": 1}\n]\n'
    report = formats.parse_file(write_upload(space, "x.json", array), positive=False)
    assert report.added == 2
    assert report.skipped[0][0] == 4 and report.skipped[0][1].startswith("line 4: no `messages`")
    assert report.examples[1].label == "negative" and report.examples[0].positive is False
    pretty = json.dumps(chat("q1", "a1"), indent=2) + "\n" + json.dumps(chat("q2", "a2"), indent=2)
    report = formats.parse_file(write_upload(space, "y.json", pretty))
    assert report.added == 2 and report.skipped == []
    broken = '[{"prompt": "a", "completion": "b"},\n {"prompt": "c" "completion": "d"}]'
    report = formats.parse_file(write_upload(space, "z.json", broken))
    assert report.added == 1 and report.skipped[0][0] == 2


def test_parse_json_array_bigger_than_a_chunk(space: GuildSpace) -> None:
    items = [{"prompt": f"p{i} " + "z" * 300, "completion": f"c{i}"} for i in range(8000)]  # ~2.6 MB
    text = "[\n" + ",\n".join(json.dumps(i) for i in items) + "\n]"
    report = formats.parse_file(write_upload(space, "big.json", text))
    assert report.added == 8000 and report.skipped == []
    assert report.examples[-1].messages[1]["content"] == "c7999"


def test_parse_csv(space: GuildSpace) -> None:
    content = 'Prompt,Completion\nhello,hi there\n"multi\nline prompt","ok, fine"\n,missing\n\nlast,one\n'
    report = formats.parse_file(write_upload(space, "a.csv", content))
    assert report.added == 3
    assert report.skipped == [(5, "line 5: empty prompt")]
    assert report.examples[1].messages[0]["content"] == "multi\nline prompt"
    labelled = formats.parse_file(write_upload(space, "b.csv", "text,label\nnice,pos\nbad,\n"))
    assert [(e.text, e.label) for e in labelled.examples] == [("nice", "pos"), ("bad", "positive")]
    with pytest.raises(InvalidInput, match="header row"):
        formats.parse_file(write_upload(space, "c.csv", "a,b\n1,2\n"))


def test_parse_txt_and_inline(space: GuildSpace) -> None:
    report = formats.parse_file(write_upload(space, "a.txt", "first line\n\n  second  \r\nthird\n"), positive=False)
    assert [(e.text, e.label, e.positive) for e in report.examples] == [
        ("first line", "negative", False),
        ("second", "negative", False),
        ("third", "negative", False),
    ]
    inline = formats.parse_text("what is 2+2? => 4\njust text\n => nothing\nq =>   ")
    assert inline.added == 2
    assert inline.examples[0].messages[1]["content"] == "4"
    assert inline.examples[1].kind == "text"
    assert [n for n, _ in inline.skipped] == [3, 4]
    assert "empty prompt" in inline.skipped[0][1] and "empty completion" in inline.skipped[1][1]


def test_parse_refusals(space: GuildSpace) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        formats.parse_file(write_upload(space, "e.jsonl", ""))
    with pytest.raises(InvalidInput, match="only blank"):
        formats.parse_file(write_upload(space, "b.txt", "\n \n"))
    with pytest.raises(InvalidInput, match="UTF-8.*line 2"):
        formats.parse_file(write_upload(space, "l.txt", b"fine\ncaf\xe9\n"))
    with pytest.raises(InvalidInput, match="UTF-8"):
        formats.parse_file(write_upload(space, "l.json", b'[{"text": "caf\xe9"}]'))
    with pytest.raises(InvalidInput, match="unsupported file type"):
        formats.parse_file(write_upload(space, "x.pdf", "%PDF"))
    with pytest.raises(InvalidInput):
        formats.parse_text("  \n ")


def test_parse_unicode_and_bom(space: GuildSpace) -> None:
    content = "\ufeff" + json.dumps({"prompt": "Привет 👋", "completion": "你好"}, ensure_ascii=False) + "\n"
    report = formats.parse_file(write_upload(space, "u.jsonl", content))
    assert report.added == 1
    assert report.examples[0].messages[0]["content"] == "Привет 👋"


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
    texts = sorted(e.text for e in report.examples)
    assert texts == ["", "one", "two"]
    reasons = [r for _, r in report.skipped]
    assert any(r.startswith("incoming/sub/b.jsonl line 2: not valid JSON") for r in reasons)
    assert any("empty.txt" in r and "empty" in r for r in reasons)
    assert not any("leaked" in json.dumps(e.to_json()) for e in report.examples)
    with pytest.raises(PathRefused):
        formats.parse_path(space, "../outside.txt")
    with pytest.raises(NotFound):
        formats.parse_path(space, "nothing-here")


def test_stored_records_read_back_unchanged(space: GuildSpace) -> None:
    """A dataset file an earlier version wrote is read back into the same records, written out byte for byte."""
    legacy = Path(__file__).parent.parent / "fakes" / "legacy_c46fa9c" / "data" / "guild" / "datasets" / "main"
    lines = [line for path in sorted(legacy.glob("*.jsonl")) for line in path.read_text(encoding="utf-8").splitlines()]
    lines += [  # a text, one without added_by_id/origin, a negative chat
        '{"id":"t1","kind":"text","text":"great product","label":"good","positive":true,"source":"a.csv",'
        '"added_by":"ann (5)","added_by_id":5,"origin":"upload uploads/x-a.csv","added_at":"2026-01-01T00:00:00.000Z",'
        '"hash":"0123456789abcdef"}',
        '{"id":"c1","kind":"chat","messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],'
        '"positive":false,"source":"inline","added_by":"bob","added_at":"2026-01-01T00:00:00.000Z","hash":"fedcba9876543210"}',
    ]
    assert len(lines) > 2
    report = formats.parse_file(write_upload(space, "copy.jsonl", "\n".join(lines) + "\n"), author="someone else")
    assert report.skipped == [] and len(report.examples) == len(lines)
    for line, ex in zip(lines, report.examples):
        assert json.dumps(ex.to_json(), ensure_ascii=False, separators=(",", ":")) == line
    assert report.examples[-2].kind == "text" and report.examples[-2].added_by_id == 5
    assert report.examples[-1].positive is False and report.examples[-1].origin is None


def test_finish_record_provenance() -> None:
    """A parsed example takes the given provenance; a stored record keeps its own (a null author still marks it)."""
    (parsed,), _ = formats._from_obj({"prompt": "p", "completion": "c"}, True)
    done = formats.finish_record(parsed, source="f.jsonl", author="ann", now="T", author_id=7, origin="message 1")
    assert done.to_json() == {
        "id": done.hash and done.hash[:12], "kind": "chat", "messages": parsed.messages, "positive": True,
        "source": "f.jsonl", "added_by": "ann", "added_by_id": 7, "origin": "message 1", "added_at": "T",
        "hash": formats.content_hash(parsed)}
    (stored,), _ = formats._from_obj({"kind": "text", "text": "t", "added_by": None, "source": None}, True)
    again = formats.finish_record(stored, source="g.jsonl", author="bob", now="U", author_id=8, origin="message 2")
    assert list(again.to_json()) == ["id", "kind", "text", "label", "positive", "source", "added_by", "added_at",
                                     "hash"]
    assert (again.added_by, again.added_by_id, again.origin, again.source) == ("bob", None, None, "g.jsonl")
