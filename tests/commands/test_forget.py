"""!forget me / !forget @user end to end, and the crash safety of dataset/forget.py."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import Settings
from dataset import corrections as records
from dataset import forget
from errors import NotFound
from sandbox.interactions import InteractionRefused
from sandbox.server import Sandbox
from storage import GuildSpace
from tests.commands.records_db import rows, traces
from tests.fakes.samples import jsonl, pair
from tests.harness import ROOT, BotHarness, ErrorLog, confirmed, space_of, start_bot, stop_bot, wait_bot
from training import evaluation

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
    await sb.react("member", answer.channel_id, answer.id, "👎")  # recorded, and the bot asks them
    await wait_bot(sb, lambda m: m.reference_id == answer.id and "What should I have answered?" in m.content)
    await sb.react("owner", answer.channel_id, answer.id, "👍")  # someone else's reaction stays
    await h.ask("!feedback quoting them", user="owner", reply_to=theirs.id)
    await h.ask("!train kept q => kept a", user="admin")
    await h.ask("!archive datasets", user="admin")  # made before: keeps its contents, must be listed
    assert (await h.ask("!forget me", user="admin")).startswith("Forgot everything admin gave in this server: ")
    # Admins' data of their own: the owner uploads, then an upload that came from the member is forgotten too.
    await h.ask("!train", user="owner", attachments=[("o.jsonl", jsonl(pair("owner q", "owner a")), None)])
    assert set(traces(space, CANARY)) == {"answers", "corrections", "feedback"}

    # More than a few items: a dialog says what will go, and only the asker's Confirm does it.
    [dialog] = await h.send("!forget me")
    assert dialog.content == ("Forget everything you gave in this server? This removes 1 corrections, 1 feedback, "
                              "1 logged questions and answers, 1 reactions, 1 asks after their 👎, for good.")
    other = await h.click(dialog.id, 1, user="owner")
    assert [m.content for m in other.messages] == [f"Only <@{sb.member.id}> can answer this."]
    assert set(traces(space, CANARY)) == {"answers", "corrections", "feedback"}
    await h.click(dialog.id, 1)
    said = (await wait_bot(sb, lambda m: m.content.startswith("Forgot everything"), after=dialog.id)).content
    assert said.startswith("Forgot everything member gave in this server: 1 corrections, 1 feedback, "
                           "1 logged questions and answers, 1 reactions, 1 asks after their 👎.")
    with pytest.raises(InteractionRefused, match="disabled"):  # answered: its buttons are off
        await sb.click("member", dialog.id, 1)
    assert [a for a, in rows(space, "SELECT author_id FROM reactions WHERE guild_id = ?")] == [sb.owner.id]
    assert rows(space, "SELECT * FROM asks WHERE guild_id = ?") == []
    assert "Archives and exports made before keep their contents: `archives/datasets-" in said
    assert holders(space, CANARY) == [] and traces(space, CANARY) == []
    assert not records.list_corrections(space) and records.find_answer(space, answer.id) is None
    # The owner's feedback stays, without the quote of the member's message.
    (kept,) = records.list_feedback(space)
    assert kept.author_id == sb.owner.id and kept.reply_to is not None and kept.reply_to["content"] is None
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


def example(question: str, author_id: int, origin: str = "message 1") -> dict[str, object]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "a"}],
            "added_by_id": author_id, "origin": origin}


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[GuildSpace]:
    """A server's space with its own SQLite database (no bot): person 7's records and examples (with the canary)
    beside person 8's. Two dataset files mix them (rewritten by a forget), one is 7's only (deleted), and 7's
    upload is deleted with the examples that came from it."""
    space = GuildSpace(5, tmp_path / "d", tmp_path / "c").ensure()
    for i in range(3):
        records.add_correction(space, message_id=i, prompt=f"q{i}", answer="a", correction=f"{CANARY} {i}",
                               author_id=7, author_name="m", channel_id=1)
    records.add_correction(space, message_id=9, prompt="other", answer="a", correction="fine",
                           author_id=8, author_name="o", channel_id=1)
    records.add_feedback(space, text=CANARY, author_id=7, author_name="m", channel_id=1, reply_to=None)
    records.add_feedback(space, text="quoting", author_id=8, author_name="o", channel_id=1,
                         reply_to={"message_id": 3, "author_id": 7, "content": CANARY})
    records.record_answer(space, message_ids=[1], channel_id=1, prompt=f"{CANARY}?", answer="a",
                          prompt_message_id=2, author_id=7, model=None)
    records.add_reaction(space, message_id=1, channel_id=1, kind="down", added=True, author_id=7,
                         author_name=CANARY, model=None)
    evaluation.add_to_eval_set(space, [evaluation.Case(f"{CANARY}?", "a")], author_id=7, author_name="m")
    main = space.datasets / "main"
    main.mkdir(parents=True)
    upload = space.uploads / "theirs.jsonl"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(jsonl(example(f"{CANARY} from an upload", 7)))
    for name in ("a", "b"):
        (main / f"{name}.jsonl").write_bytes(jsonl(example(f"{CANARY} {name}", 7), example(f"kept {name}", 8)))
    (main / "c.jsonl").write_bytes(jsonl(example(f"{CANARY} c", 7, "message 4, upload uploads/theirs.jsonl")))
    try:
        yield space
    finally:
        space.db.close()


def files(space: GuildSpace) -> dict[str, bytes]:
    """Every file of the space's data and corrections folders, with its bytes."""
    return {str(p.relative_to(root.parent)): p.read_bytes() for root in (space.data, space.corrections)
            for p in sorted(root.rglob("*")) if p.is_file()}


def record_rows(space: GuildSpace) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the server's records, by table."""
    return {table: rows(space, f"SELECT * FROM {table} WHERE guild_id = ? ORDER BY 1, 2, 3")
            for table in ("answers", "corrections", "feedback", "reactions", "asks", "eval_cases", "forget_journal")}


def staged(space: GuildSpace) -> list[str]:
    return [name for name in files(space) if Path(name).name.startswith(".")]


def test_crash_before_the_journal_rolls_back(offline: GuildSpace, monkeypatch: pytest.MonkeyPatch) -> None:
    space = offline
    before_files, before_rows = files(space), record_rows(space)
    assert set(traces(space, CANARY)) == {"answers", "corrections", "feedback", "reactions", "eval_cases"}

    # Failing inside the transaction (after its deletions): rolled back, the staged files removed.
    monkeypatch.setattr(forget, "_redact_quotes", lambda *a, **k: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        forget.forget(space, 7)
    monkeypatch.undo()
    assert files(space) == before_files and record_rows(space) == before_rows

    # The process dies after staging the new files, before the commit: the staged files are left behind.
    real_stage = forget._stage

    def stage_then_die(pending: list[tuple[Path, bytes]]) -> list[tuple[Path, Path]]:
        real_stage(pending)
        raise OSError("crash")

    monkeypatch.setattr(forget, "_stage", stage_then_die)
    with pytest.raises(OSError):
        forget.forget(space, 7)
    monkeypatch.undo()
    assert len(staged(space)) == 2 and record_rows(space) == before_rows
    done = forget.recover(space.db, space.data.parent, space.corrections.parent)
    assert len(done) == 2 and all("rolled back" in line for line in done)
    assert files(space) == before_files and record_rows(space) == before_rows


def test_crash_after_the_journal_finishes_on_start(offline: GuildSpace, monkeypatch: pytest.MonkeyPatch) -> None:
    space = offline
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
    # Committed: the records are gone and the journal names what is left to do with the files.
    assert [u for u, in rows(space, "SELECT user_id FROM forget_journal WHERE guild_id = ?")] == [7]
    assert traces(space, CANARY) == [] and holders(space, CANARY)
    assert forget.recover(space.db, space.data.parent, space.corrections.parent) == [
        "finished forgetting a person in server 5"]
    assert rows(space, "SELECT * FROM forget_journal WHERE guild_id = ?") == []
    assert holders(space, CANARY) == [] and traces(space, CANARY) == [] and staged(space) == []
    assert [c.correction for c in records.list_corrections(space)] == ["fine"]
    (quoting,) = records.list_feedback(space)
    assert quoting.text == "quoting" and quoting.reply_to is not None and quoting.reply_to["content"] is None
    main = space.datasets / "main"
    assert sorted(p.name for p in main.iterdir()) == ["a.jsonl", "b.jsonl"] and not space.uploads.joinpath(
        "theirs.jsonl").exists()
    assert all(p.read_bytes() == jsonl(example(f"kept {p.stem}", 8)) for p in main.iterdir())
    with pytest.raises(NotFound):
        forget.forget(space, 7)


def test_preview_counts_what_forget_removes_and_changes_nothing(offline: GuildSpace) -> None:
    space = offline
    before_files, before_rows = files(space), record_rows(space)
    coming = forget.preview(space, 7)
    assert files(space) == before_files and record_rows(space) == before_rows
    assert forget.preview(space, 99).total == 0  # nothing stored from them: an empty preview
    assert forget.people(space) == [(7, "m"), (8, "o")]
    assert forget.people(space, "m") == [(7, "m")]
    done = forget.forget(space, 7)
    assert coming.counts == done.counts and coming.total == done.total
    assert forget.people(space) == [(8, "o")]


async def test_forget_me_takes_their_words_out_of_others_records(harness: BotHarness, started: list[str]) -> None:
    """An admin's correction of their question, and an admin's !test cases that copy their questions (in the
    evaluation set and as mismatches, i.e. training data) go with them: the next training cannot bring them back."""
    h = harness
    space = space_of(h)
    first, second = f"What is {CANARY}?", f"Where is {CANARY}?"
    answer = (await h.send(first))[0]
    await h.send(second)
    fixed = await h.ask(f"!correct {answer.id} It is a kind of horse.", user="admin")
    assert fixed.startswith("Thanks — correction `C-")
    tested = await h.ask('!test {"input": "%s", "expected": "It is a kind of horse."}\n'
                         '{"input": "%s", "expected": "In the zoo."}' % (first, second), user="admin")
    assert tested.startswith("**Accuracy: 50%** (1/2 correct)")
    assert set(traces(space, CANARY)) == {"answers", "corrections", "eval_cases", "test_errors"}

    dialog, said_msg, *_ = await confirmed(h, "!forget me")  # more than a few items: confirmed first
    assert "2 logged questions and answers, 1 others' corrections of their questions" in dialog.content
    said = said_msg.content
    assert said.startswith("Forgot everything member gave in this server: 2 logged questions and answers, 1 others' "
                           "corrections of their questions, 1 evaluation cases with their questions, 1 test "
                           "mismatches with their questions.")
    assert "Their corrections no longer change my answers." in said
    assert traces(space, CANARY) == [] and holders(space, CANARY) == []
    assert rows(space, "SELECT * FROM forget_journal WHERE guild_id = ?") == []  # told: nothing left to tell


KILL = """
import os, sys
from pathlib import Path
from dataset import forget
from records.db import Database
from storage import GuildSpace
data, corr, guild, user, name, channel, requester, when = sys.argv[1:]
space = GuildSpace(int(guild), Path(data), Path(corr), Database.open(None, Path(data)))
if when == "staging":
    real = forget._stage
    forget._stage = lambda pending: (real(pending), os._exit(9))
else:
    forget.carry_out = lambda plan: os._exit(9)
forget.forget(space, int(user), channel_id=int(channel), requester_id=int(requester), user_name=name)
"""


async def test_a_forget_killed_mid_way_is_told_after_the_restart(sandbox: Sandbox, settings: Settings,
                                                                error_log: ErrorLog) -> None:
    """`kill -9` during a !forget: after the restart the person who asked is told in the channel how it ended,
    with the archives and exports that keep their contents; a forget killed before its commit removed nothing,
    and says so."""
    sb = sandbox
    h = BotHarness(sb, await start_bot(sb, settings))
    try:
        space = space_of(h)
        await h.send(f"What is {CANARY}?")
        await h.ask("!feedback from the admin", user="admin")
        channel = h.last_posted.channel_id
    finally:
        await stop_bot(h.bot)
    (space.archives / "old.zip").parent.mkdir(parents=True, exist_ok=True)
    (space.archives / "old.zip").write_bytes(b"PK")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for user, name, requester, when in ((sb.member.id, "member", sb.member.id, "applying"),
                                        (sb.admin.id, "admin", sb.owner.id, "staging")):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", KILL, str(settings.data_dir), str(settings.corrections_dir), str(space.guild_id),
            str(user), name, str(channel), str(requester), when, env=env, cwd=ROOT, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 9, err.decode()  # as killed: no clean-up ran
    assert traces(space, CANARY) == []  # the first one committed: its records are gone
    h.bot = await start_bot(sb, settings)
    try:
        finished = await wait_bot(sb, lambda m: "I was restarted while forgetting" in m.content)
        assert finished.content == (
            f"<@{sb.member.id}> I was restarted while forgetting what you gave; that is done now. Forgot: 1 logged "
            f"questions and answers.\nArchives and exports made before keep their contents: `archives/old.zip`. "
            f"An admin can delete them from the server's data folder.\nModels trained before keep what they learnt "
            f"until an admin trains a new one (`!train`).")
        assert finished.channel_id == channel
        cut = await wait_bot(sb, lambda m: "in the middle of the `!forget`" in m.content)
        assert cut.content == (f"<@{sb.owner.id}> I was restarted in the middle of the `!forget` you asked for, "
                               f"before anything was removed: nothing of what admin gave was forgotten. Ask again "
                               f"with `!forget`.")
        assert [f.text for f in records.list_feedback(space)] == ["from the admin"]
        for _ in range(50):  # each is told once: its row goes once its message went out
            if not rows(space, "SELECT * FROM forget_journal WHERE guild_id = ?"):
                break
            await asyncio.sleep(0.1)
        assert rows(space, "SELECT * FROM forget_journal WHERE guild_id = ?") == []
    finally:
        await stop_bot(h.bot)
