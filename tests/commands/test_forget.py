"""!forget me / !forget @user end to end, and the crash safety of dataset/forget.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dataset import corrections as records
from dataset import forget
from errors import NotFound
from storage import GuildSpace
from tests.fakes.samples import jsonl, pair
from tests.harness import BotHarness, space_of

CANARY = "zebra-canary-4417"


def holders(space: GuildSpace, text: str) -> list[str]:
    """Files under the data and corrections folders whose bytes contain ``text`` (zips are compressed)."""
    found = []
    for root in (space.data, space.corrections):
        for path in root.rglob("*"):
            if path.is_file() and text.encode() in path.read_bytes():
                found.append(str(path.relative_to(root.parent)))
    return found


async def test_forget_me_leaves_no_trace(harness: BotHarness, started: list[str]) -> None:
    h, sb = harness, harness.sandbox
    space = space_of(h)
    # The member chats, corrects, gives feedback; admins upload data (one file from the member's text).
    answer = (await h.send(f"What is {CANARY}?"))[0]
    await h.ask(f"!correct {CANARY} is a striped horse.", reply_to=answer.id)
    await h.ask(f"!feedback I love {CANARY}")
    theirs = h.last_posted
    await h.ask("!feedback quoting them", user="owner", reply_to=theirs.id)
    await h.ask("!train kept q => kept a", user="admin")
    await h.ask("!archive datasets", user="admin")  # made before: keeps its contents, must be listed
    assert (await h.ask("!forget me", user="admin")).startswith("Forgot everything admin gave in this server: ")
    # Admins' data of their own: the owner uploads, then an upload that came from the member is forgotten too.
    await h.ask("!train", user="owner", attachments=[("o.jsonl", jsonl(pair("owner q", "owner a")), None)])
    assert holders(space, CANARY)

    said = await h.ask("!forget me")
    assert said.startswith("Forgot everything member gave in this server: 1 corrections, 1 feedback, "
                           "1 logged questions and answers.")
    assert "Archives made before keep their contents: `archives/datasets-" in said
    assert holders(space, CANARY) == []
    assert not records.list_corrections(space) and records.find_answer(space, answer.id) is None
    # The owner's feedback stays, without the quote of the member's message.
    (kept,) = records.list_feedback(space)
    assert kept["author_id"] == sb.owner.id and kept["reply_to"]["content"] is None
    owner_examples = [f for f in (space.data / "datasets" / "main").glob("*.jsonl")]
    assert len(owner_examples) == 1 and (space.data / "uploads").is_dir()
    assert await h.ask("!forget me") == "I have nothing stored from member in this server; nothing was changed."


async def test_forget_user_by_admin_removes_uploads_and_examples(harness: BotHarness, started: list[str]) -> None:
    h, sb = harness, harness.sandbox
    space = space_of(h)
    await h.ask("!train", user="admin", attachments=[("a.jsonl", jsonl(pair(f"{CANARY} q", "a")), None)])
    await h.ask("!train owner q => owner a", user="owner")
    uploads = list((space.data / "uploads").iterdir())
    assert len(uploads) == 1

    refused = "Only admins can make me forget someone else; `!forget me` forgets what you gave."
    assert await h.ask(f"!forget <@{sb.admin.id}>") == refused
    assert await h.ask("!forget") == "Say who: `!forget me`, or (admins) `!forget @user`."
    assert holders(space, CANARY)
    said = await h.ask(f"!forget <@{sb.admin.id}>", user="owner")
    assert said == "Forgot everything admin gave in this server: 1 examples, 1 uploads."
    assert holders(space, CANARY) == [] and not uploads[0].exists()
    assert await h.ask(f"!forget {sb.member.id}", user="owner") == (
        f"I have nothing stored from user {sb.member.id} in this server; nothing was changed.")  # a bare id


def _space(tmp_path: Path) -> GuildSpace:
    space = GuildSpace(5, tmp_path / "d", tmp_path / "c").ensure()
    for i in range(3):
        records.add_correction(space, message_id=i, prompt=f"q{i}", answer="a", correction=f"{CANARY} {i}",
                               author_id=7, author_name="m", channel_id=1)
    records.add_correction(space, message_id=9, prompt="other", answer="a", correction="fine",
                           author_id=8, author_name="o", channel_id=1)
    records.add_feedback(space, text=CANARY, author_id=7, author_name="m", channel_id=1, reply_to=None)
    return space


def test_crash_before_the_journal_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    space = _space(tmp_path)
    before = {p: p.read_bytes() for p in space.corrections.iterdir()}
    monkeypatch.setattr(forget, "atomic_write_json", lambda *a, **k: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        forget.forget(space, 7)
    assert any(n.name.startswith(".") for n in space.corrections.iterdir())  # staged files were left
    monkeypatch.undo()
    done = forget.recover(tmp_path / "d", tmp_path / "c")
    assert done and all("rolled back" in line for line in done)
    assert {p: p.read_bytes() for p in space.corrections.iterdir()} == before


def test_crash_after_the_journal_finishes_on_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    space = _space(tmp_path)
    replaced = []
    real_replace = os.replace

    def crash_after_one(src, dst):  # the first swap happens, then the process "dies"
        if replaced:
            raise OSError("crash")
        replaced.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(forget.os, "replace", crash_after_one)
    with pytest.raises(OSError):
        forget.forget(space, 7)
    monkeypatch.undo()
    assert (space.corrections / forget.JOURNAL).exists()
    assert forget.recover(tmp_path / "d", tmp_path / "c") == ["finished forgetting a person in server 5"]
    assert not (space.corrections / forget.JOURNAL).exists()
    assert holders(space, CANARY) == []
    assert [c["correction"] for c in records.list_corrections(space)] == ["fine"]
    assert not any(n.name.startswith(".") for n in space.corrections.iterdir())
    with pytest.raises(NotFound):
        forget.forget(space, 7)
