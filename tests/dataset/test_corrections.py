"""dataset/corrections.py on both engines: answers, corrections, feedback, test errors, reactions and asks."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from dataset import corrections as records
from dataset.corrections import Answer, Correction, Feedback, TestError
from errors import InvalidInput
from records.db import Database
from storage import GuildSpace

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _answer(space: GuildSpace, mid: int, prompt: str = "p", answer: str = "a", *, parts: int = 1,
            channel_id: int = 9, author_id: int = 3) -> None:
    records.record_answer(
        space,
        message_ids=[mid + i for i in range(parts)],
        channel_id=channel_id,
        prompt=prompt,
        answer=answer,
        prompt_message_id=mid - 1,
        author_id=author_id,
        model="m",
        author_name="asker",
    )


def test_record_and_find_answer(space: GuildSpace) -> None:
    assert records.find_answer(space, 1) is None  # nothing recorded yet
    _answer(space, 100, "what is 2+2?", "5")
    _answer(space, 200, "capital of France?", "Paris")
    found = records.find_answer(space, 100)
    assert isinstance(found, Answer)
    assert found.prompt == "what is 2+2?" and found.answer == "5" and found.message_id == 100
    assert found.channel_id == 9 and found.prompt_message_id == 99 and found.model == "m"
    assert found.author_id == 3 and found.author_name == "asker"
    assert ISO_UTC.match(found.time)
    assert records.find_answer(space, 300) is None
    _answer(space, 300, "later", "yes")
    later = records.find_answer(space, 300)
    assert later is not None and later.answer == "yes"


def test_a_long_answer_is_found_by_any_of_its_messages(space: GuildSpace) -> None:
    _answer(space, 500, "tell me a lot", "part one and two", parts=3)
    for mid in (500, 501, 502):
        found = records.find_answer(space, mid)
        assert found is not None and found.message_id == mid and found.answer == "part one and two"
    # !correct <text> corrects the latest answer to this person here: its first message.
    _answer(space, 600, "newer", "newest answer", parts=2)
    _answer(space, 700, "elsewhere", "other channel", channel_id=10)
    _answer(space, 800, "someone else", "other person", author_id=4)
    latest = records.latest_answer(space, 9, 3)
    assert latest is not None and latest.message_id == 600 and latest.answer == "newest answer"
    assert records.latest_answer(space, 9, 999) is None


def test_answers_are_per_guild(db: Database, tmp_path: Path) -> None:
    a = GuildSpace(1, tmp_path / "d", tmp_path / "c", db)
    b = GuildSpace(2, tmp_path / "d", tmp_path / "c", db)
    _answer(a, 10, answer="from a")
    assert records.find_answer(b, 10) is None and records.latest_answer(b, 9, 3) is None
    found = records.find_answer(a, 10)
    assert found is not None and found.answer == "from a"
    # The same message id may be logged by another server (ids are only unique per server here).
    _answer(b, 10, answer="from b")
    assert records.find_answer(a, 10).answer == "from a"  # type: ignore[union-attr]
    assert records.find_answer(b, 10).answer == "from b"  # type: ignore[union-attr]


def test_find_answer_threads(space: GuildSpace) -> None:
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        try:
            for i in range(50):
                _answer(space, base + i, answer=str(base + i))
                found = records.find_answer(space, base + i)
                assert found is not None and found.answer == str(base + i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k * 1000,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with space.db.tx(write=False) as tx:
        assert tx.scalar("SELECT COUNT(*) FROM answers WHERE guild_id = ?", (space.guild_id,)) == 200


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
        source_message_id=101,
    )
    assert isinstance(rec, Correction)
    assert re.fullmatch(r"C-[0-9a-f]{6}", rec.ref)
    assert rec.correction == "4" and ISO_UTC.match(rec.time)
    assert rec.status == "approved" and rec.approved and rec.applies
    listed = records.list_corrections(space)
    assert listed == [rec]
    assert records.approved_corrections(space) == [rec] and records.pending_corrections(space) == []
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
    with pytest.raises(InvalidInput, match="limit is 20,000"):
        records.add_correction(space, message_id=1, prompt="p", answer="a", correction="x" * 20_001,
                               author_id=7, author_name="ann", channel_id=9)
    assert len(records.list_corrections(space)) == 1


def test_corrections_signature_changes_with_every_change_that_applies(space: GuildSpace) -> None:
    seen = {records.corrections_signature(space)}
    pending = records.add_correction(space, message_id=1, prompt="p", answer="a", correction="c", author_id=7,
                                     author_name="ann", channel_id=9, approved=False)
    assert records.corrections_signature(space) not in seen
    seen.add(records.corrections_signature(space))
    records.review(space, [pending.ref], approve=True, by_id=1, by_name="admin")
    assert records.corrections_signature(space) not in seen


def test_feedback(space: GuildSpace) -> None:
    reply = {"message_id": 5, "author": "bot", "content": "hello"}
    rec = records.add_feedback(
        space, text="nice bot", author_id=1, author_name="bo", channel_id=2, reply_to=reply, source_message_id=6
    )
    assert isinstance(rec, Feedback)
    assert re.fullmatch(r"F-[0-9a-f]{6}", rec.ref) and ISO_UTC.match(rec.time)
    assert records.list_feedback(space) == [rec]
    assert records.list_feedback(space)[0].reply_to == reply
    plain = records.add_feedback(space, text=" more ", author_id=1, author_name="bo", channel_id=2, reply_to=None)
    assert plain.text == "more" and plain.reply_to is None
    assert records.list_feedback(space) == [rec, plain]
    with pytest.raises(InvalidInput):
        records.add_feedback(space, text="", author_id=1, author_name="bo", channel_id=2, reply_to=None)
    assert len(records.list_feedback(space)) == 2


def test_test_errors(space: GuildSpace) -> None:
    n = records.add_test_errors(
        space, [TestError("q", "a", "b", line=3, model="local-v1"), TestError("r", "c", kind="label")]
    )
    assert n == 2
    stored = records.list_test_errors(space)
    assert [(s.input, s.expected, s.got, s.kind, s.line, s.model) for s in stored] == [
        ("q", "a", "b", "answer", 3, "local-v1"), ("r", "c", None, "label", None, None)]
    assert all(ISO_UTC.match(s.time) for s in stored)
    assert all(re.fullmatch(r"T-[0-9a-f]{6}", s.ref) for s in stored) and stored[0].ref != stored[1].ref
    assert records.add_test_errors(space, []) == 0
    assert len(records.list_test_errors(space)) == 2


def test_find_answer_typed_id(space: GuildSpace) -> None:
    _answer(space, 123456789012345678, answer="typed")
    found = records.find_answer(space, " 123456789012345678 ")
    assert found is not None and found.answer == "typed" and found.message_id == 123456789012345678
    with pytest.raises(InvalidInput):
        records.find_answer(space, "abc")


def test_each_persons_latest_reaction_stands(space: GuildSpace) -> None:
    assert records.reaction_kind("👍🏽") == "up" and records.reaction_kind("👎️") == "down"
    assert records.reaction_kind("🎉") is None

    def react(kind: str, added: bool, who: int, mid: int = 100, model: str | None = "local-v1") -> bool:
        return records.add_reaction(space, message_id=mid, channel_id=9, kind=kind, added=added, author_id=who,
                                    author_name=f"user{who}", model=model)

    assert react("up", True, 1) is False
    assert react("up", True, 1) is False  # the same 👍 twice counts once
    assert react("down", True, 2) is True  # a new 👎: ask this person for the right answer
    assert react("up", True, 3, mid=200, model=None) is False
    counts = records.reaction_counts(space)
    assert {m: (c.up, c.down) for m, c in counts.items()} == {"local-v1": (1, 1), "untrained": (1, 0)}
    react("up", False, 1)  # taken off: no longer counts
    react("down", False, 2)
    react("down", True, 1)
    assert {m: (c.up, c.down) for m, c in records.reaction_counts(space).items()} == {
        "local-v1": (0, 1), "untrained": (1, 0)}
    with pytest.raises(InvalidInput):
        react("sideways", True, 1)


def test_the_bot_asks_each_person_once_per_answer(space: GuildSpace) -> None:
    def down(who: int) -> bool:
        return records.add_reaction(space, message_id=100, channel_id=9, kind="down", added=True, author_id=who,
                                    author_name="x", model="m")

    assert down(2) is True and not records.was_asked(space, 100, 2)
    records.add_ask(space, ask_message_id=900, message_id=100, channel_id=9, author_id=2, author_name="x")
    records.add_ask(space, ask_message_id=900, message_id=100, channel_id=9, author_id=2, author_name="x")
    assert records.was_asked(space, 100, 2) and not records.was_asked(space, 100, 3)
    records.add_reaction(space, message_id=100, channel_id=9, kind="down", added=False, author_id=2,
                         author_name="x", model="m")
    assert down(2) is False  # 👎 again after taking it off: asked already
    assert down(3) is True  # someone else is asked too
    ask = records.find_ask(space, 900)
    assert ask is not None and (ask.message_id, ask.author_id, ask.channel_id) == (100, 2, 9)
    assert ISO_UTC.match(ask.time)
    assert records.find_ask(space, 901) is None


def test_reactions_and_asks_are_per_guild(db: Database, tmp_path: Path) -> None:
    a = GuildSpace(1, tmp_path / "d", tmp_path / "c", db)
    b = GuildSpace(2, tmp_path / "d", tmp_path / "c", db)
    records.add_reaction(a, message_id=100, channel_id=9, kind="down", added=True, author_id=2, author_name="x",
                         model="m")
    records.add_ask(a, ask_message_id=900, message_id=100, channel_id=9, author_id=2, author_name="x")
    assert records.reaction_counts(b) == {} and records.find_ask(b, 900) is None
    assert not records.was_asked(b, 100, 2)
    assert records.add_reaction(b, message_id=100, channel_id=9, kind="down", added=True, author_id=2,
                                author_name="x", model="m") is True


def test_a_new_ref_never_reuses_one_the_server_has(space: GuildSpace, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Refs are short: a server with thousands of records draws a used one now and then; it draws again (the
    database would refuse the record otherwise). Another server's refs do not count."""
    other = GuildSpace(space.guild_id + 1, tmp_path / "data", tmp_path / "corrections", space.db)
    drawn = iter(["aaaaaa", "aaaaaa", "aaaaaa", "bbbbbb"] * 3 + ["aaaaaa", "cccccc", "dddddd"])
    monkeypatch.setattr(records.secrets, "token_hex", lambda n: next(drawn))

    def correct(where: GuildSpace) -> str:
        return records.add_correction(where, message_id=1, prompt="p", answer="a", correction="c", author_id=7,
                                      author_name="ann", channel_id=9).ref

    assert correct(space) == "C-aaaaaa"
    assert correct(space) == "C-bbbbbb"  # C-aaaaaa twice, then a free one
    assert correct(other) == "C-aaaaaa"  # refs are per server
    assert [c.ref for c in records.list_corrections(space)] == ["C-aaaaaa", "C-bbbbbb"]
    # Feedback and test errors draw their refs the same way.
    assert records.add_feedback(space, text="x", author_id=1, author_name="b", channel_id=2,
                                reply_to=None).ref == "F-aaaaaa"
    assert records.add_feedback(space, text="y", author_id=1, author_name="b", channel_id=2,
                                reply_to=None).ref == "F-bbbbbb"
    assert [f.text for f in records.list_feedback(space)] == ["x", "y"]
    records.add_test_errors(space, [TestError("q1", "a1"), TestError("q2", "a2"), TestError("q3", "a3")])
    assert [(t.ref, t.input) for t in records.list_test_errors(space)] == [
        ("T-aaaaaa", "q1"), ("T-bbbbbb", "q2"), ("T-cccccc", "q3")]
