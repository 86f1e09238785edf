"""dataset/corrections.py: answers index, corrections, feedback, test errors."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from dataset import corrections as records
from errors import InvalidInput
from storage import GuildSpace, read_records

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def space(tmp_path: Path) -> GuildSpace:
    return GuildSpace(5, tmp_path / "data", tmp_path / "corrections").ensure()


def _answer(space: GuildSpace, mid: int, prompt: str = "p", answer: str = "a") -> None:
    records.record_answer(
        space,
        message_id=mid,
        channel_id=9,
        prompt=prompt,
        answer=answer,
        prompt_message_id=mid - 1,
        author_id=3,
        model="m",
    )


def test_record_and_find_answer(space: GuildSpace) -> None:
    assert records.find_answer(space, 1) is None  # no file yet
    _answer(space, 100, "what is 2+2?", "5")
    _answer(space, 200, "capital of France?", "Paris")
    found = records.find_answer(space, 100)
    assert found is not None
    assert found["prompt"] == "what is 2+2?" and found["answer"] == "5"
    assert found["channel_id"] == 9 and found["prompt_message_id"] == 99 and found["model"] == "m"
    assert ISO_UTC.match(found["time"])
    assert records.find_answer(space, 300) is None
    _answer(space, 300, "later", "yes")  # appended after the index was built
    assert records.find_answer(space, 300)["answer"] == "yes"


def test_find_answer_survives_torn_line(space: GuildSpace) -> None:
    _answer(space, 1)
    with open(space.answers_file, "ab") as fh:
        fh.write(b'{"message_id": 2, "prompt": "cut')
    assert records.find_answer(space, 2) is None
    _answer(space, 3, answer="after crash")
    assert records.find_answer(space, 3)["answer"] == "after crash"
    assert records.find_answer(space, 1)["answer"] == "a"


def test_answers_index_is_per_guild(tmp_path: Path) -> None:
    a = GuildSpace(1, tmp_path / "d", tmp_path / "c")
    b = GuildSpace(2, tmp_path / "d", tmp_path / "c")
    _answer(a, 10, answer="from a")
    assert records.find_answer(b, 10) is None
    assert records.find_answer(a, 10)["answer"] == "from a"


def test_find_answer_threads(space: GuildSpace) -> None:
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        try:
            for i in range(50):
                _answer(space, base + i, answer=str(base + i))
                assert records.find_answer(space, base + i)["answer"] == str(base + i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k * 1000,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(read_records(space.answers_file).records) == 200


def test_correction(space: GuildSpace) -> None:
    rec = records.add_correction(
        space,
        message_id=100,
        prompt="2+2?",
        answer="5",
        correction=" 4 ",
        author_id=7,
        author_name="ann",
        channel_id=9,
    )
    assert re.fullmatch(r"C-[0-9a-f]{6}", rec["ref"])
    assert rec["correction"] == "4" and ISO_UTC.match(rec["time"])
    listed = records.list_corrections(space)
    assert listed == [rec]
    with pytest.raises(InvalidInput):
        records.add_correction(
            space,
            message_id=1,
            prompt="p",
            answer="a",
            correction="   ",
            author_id=7,
            author_name="ann",
            channel_id=9,
        )
    assert len(records.list_corrections(space)) == 1


def test_feedback(space: GuildSpace) -> None:
    reply = {"message_id": 5, "author": "bot", "content": "hello"}
    rec = records.add_feedback(
        space, text="nice bot", author_id=1, author_name="bo", channel_id=2, reply_to=reply
    )
    assert re.fullmatch(r"F-[0-9a-f]{6}", rec["ref"])
    assert records.list_feedback(space) == [rec]
    assert records.list_feedback(space)[0]["reply_to"] == reply
    with pytest.raises(InvalidInput):
        records.add_feedback(space, text="", author_id=1, author_name="bo", channel_id=2, reply_to=None)
    # Stored in the corrections tree, not in the data tree.
    assert space.feedback_file.is_relative_to(space.corrections)


def test_test_errors(space: GuildSpace) -> None:
    n = records.add_test_errors(
        space, [{"input": "q", "expected": "a", "got": "b"}, {"input": "r", "expected": "c"}]
    )
    assert n == 2
    stored = records.list_test_errors(space)
    assert [s["input"] for s in stored] == ["q", "r"]
    assert all(ISO_UTC.match(s["time"]) for s in stored)
    with pytest.raises(InvalidInput):
        records.add_test_errors(space, ["not a dict"])  # type: ignore[list-item]


def test_find_answer_typed_id(space: GuildSpace) -> None:
    _answer(space, 123456789012345678, answer="typed")
    assert records.find_answer(space, " 123456789012345678 ")["answer"] == "typed"  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        records.find_answer(space, "abc")  # type: ignore[arg-type]
