"""Issue 3 end to end: !train ingestion, !correct, !feedback, !select_dataset, !archive, !getfile.

Every test drives the real bot through the sandbox and checks what it said, what it sent and what
it stored. The job part of ``!train`` is stubbed (``started``) except in the one test that checks a
real job starts, so ingestion is tested without waiting for training.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import BotHarness

from dataset import corrections as records
from dataset import folder as dataset_folder
from sandbox.server import Message
from storage import GuildSpace, read_json, read_records

PERMISSION = "You need the **Manage Server** permission to use this command."
MIB = 1024 * 1024


# ---------------------------------------------------------------------------- helpers
def space_of(harness: BotHarness) -> GuildSpace:
    s = harness.bot.settings
    return GuildSpace(harness.guild_id, s.data_dir, s.corrections_dir)


def dataset_records(space: GuildSpace) -> list[dict]:
    """Every example stored in the guild's current dataset folder."""
    folder = dataset_folder.current_dataset(space)
    out: list[dict] = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        result = read_records(path)
        assert not result.damaged, path
        out.extend(result.records)
    return out


def text_of(messages: list[Message]) -> str:
    return "\n".join(m.content for m in messages)


def jsonl(*objs: dict) -> bytes:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs).encode("utf-8")


def pair(q: str, a: str) -> dict:
    return {"prompt": q, "completion": a}


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (links not followed) with its bytes: to prove nothing changed."""
    found: dict[str, bytes] = {}
    if root.exists():
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = Path(dirpath) / name
                found[str(path.relative_to(root))] = b"<link>" if path.is_symlink() else path.read_bytes()
    return found


def recent(iso: str, seconds: float = 60) -> bool:
    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return abs((datetime.now(UTC) - when).total_seconds()) < seconds


@pytest.fixture
def started(harness: BotHarness, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the job part of !train: records the method each time training would start."""
    calls: list[str] = []
    cog = harness.bot.get_cog("Training")

    async def fake_start(ctx, method: str) -> None:
        calls.append(method)
        await ctx.send(f"[stub] training started ({method})")

    monkeypatch.setattr(cog, "_start_job", fake_start)
    return calls


# ---------------------------------------------------------------------------- !train: attachments
async def test_train_every_format_as_attachments(harness: BotHarness, started: list[str]) -> None:
    chat = jsonl(
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]},
    )
    pairs = jsonl(pair("2+2?", "4"), pair("capital of Peru?", "Lima"))
    array = json.dumps([{"input": "colour of the sky?", "output": "blue"},
                        {"question": "boiling point of water?", "answer": "100 °C"}]).encode()
    table = b'question,answer\n"Paris, Texas?","A city, in Texas"\nlargest ocean?,Pacific\n'
    notes = "first note\n\nsecond note ✓\n".encode()
    msgs = await harness.send("!train", user="admin", attachments=[
        ("chat.jsonl", chat, "application/jsonl"), ("pairs.jsonl", pairs, None), ("array.json", array, None),
        ("table.csv", table, "text/csv"), ("notes.txt", notes, "text/plain"),
    ])
    text = text_of(msgs)
    for name in ("chat.jsonl", "pairs.jsonl", "array.json", "table.csv"):
        assert f"**{name}**: Added **2** examples.\nThey are 2 question/answer pairs: I answer from these" in text, text
    # Plain .txt lines are labelled texts, and the reply says they are not answers.
    assert "**notes.txt**: Added **2** examples.\nThey are 2 labelled texts (`positive` ×2): they teach the classifier" in text
    assert "Dataset `datasets/main`." in text
    assert started == ["supervised"]

    space = space_of(harness)
    stored = dataset_records(space)
    assert len(stored) == 10
    by_source: dict[str, list[dict]] = {}
    for r in stored:
        by_source.setdefault(r["source"], []).append(r)
        assert r["positive"] is True and "admin" in r["added_by"]
    assert set(by_source) == {"chat.jsonl", "pairs.jsonl", "array.json", "table.csv", "notes.txt"}
    assert by_source["chat.jsonl"][0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [m["content"] for m in by_source["table.csv"][0]["messages"]] == ["Paris, Texas?", "A city, in Texas"]
    assert [m["content"] for m in by_source["array.json"][1]["messages"]] == ["boiling point of water?", "100 °C"]
    assert [(r["kind"], r["text"], r["label"]) for r in by_source["notes.txt"]] == [
        ("text", "first note", "positive"), ("text", "second note ✓", "positive")]
    # The uploads are kept as sent.
    uploads = sorted(p.name.split("-", 2)[2] for p in space.uploads.iterdir())
    assert uploads == ["array.json", "chat.jsonl", "notes.txt", "pairs.jsonl", "table.csv"]

    # positive=no: the examples are stored as negative ones.
    msgs = await harness.send("!train positive=no", user="admin",
                              attachments=[("bad.txt", b"rude answer\nwrong answer\n", None)])
    assert "Added **2** examples." in text_of(msgs)
    negative = [r for r in dataset_records(space) if r["source"] == "bad.txt"]
    assert [(r["text"], r["label"], r["positive"]) for r in negative] == [
        ("rude answer", "negative", False), ("wrong answer", "negative", False)]
    assert started == ["supervised", "supervised"]


async def test_train_inline_text_with_line_numbers(harness: BotHarness, started: list[str]) -> None:
    text = await harness.ask("!train q1 => a1\n\n=> no prompt\na plain example\nq2 =>\nq3 => a3", user="admin")
    assert text.startswith("Added **3** examples, skipped **2**:"), text
    assert "- line 3: empty prompt around `=>`" in text
    assert "- line 5: empty completion around `=>`" in text
    stored = dataset_records(space_of(harness))
    chats = [[m["content"] for m in r["messages"]] for r in stored if r["kind"] == "chat"]
    assert sorted(chats) == [["q1", "a1"], ["q3", "a3"]]
    assert [r["text"] for r in stored if r["kind"] == "text"] == ["a plain example"]
    assert started == ["supervised"]
    # Inline examples marked negative.
    assert "Added **1** example." in await harness.ask("!train positive=no bad q => bad a", user="admin")
    negative = [r for r in dataset_records(space_of(harness)) if not r["positive"]]
    assert [[m["content"] for m in r["messages"]] for r in negative] == [["bad q", "bad a"]]
    # A bad flag value is refused before anything is stored.
    assert await harness.ask("!train positive=maybe x => y", user="admin") == "`positive=` takes yes or no, not `maybe`."
    assert len(dataset_records(space_of(harness))) == 4


async def test_train_path_file_and_folder(harness: BotHarness, started: list[str]) -> None:
    space = space_of(harness)
    incoming = space.data / "incoming"
    (incoming / "sub").mkdir(parents=True)
    (incoming / "a.jsonl").write_bytes(jsonl(pair("one", "1"), pair("two", "2")))
    (incoming / "sub" / "b.txt").write_text("note b1\nnote b2\n")
    (incoming / "bad.csv").write_text("foo,bar\n1,2\n")
    (incoming / "ignored.bin").write_bytes(b"\x00\x01")
    (space.data / "my data.jsonl").write_bytes(jsonl(pair("spaced", "name")))

    text = await harness.ask("!train incoming/a.jsonl", user="admin")
    assert text.startswith("Added **2** examples."), text
    text = await harness.ask("!train incoming", user="admin")
    assert text.startswith("Added **2** examples, skipped **3** (2 already in the dataset):"), text
    assert "incoming/a.jsonl line 1: already in the dataset" in text
    assert "`incoming/bad.csv` needs a header row" in text
    assert "ignored.bin" not in text
    # A name with a space is a path when it names an existing file.
    assert (await harness.ask("!train my data.jsonl", user="admin")).startswith("Added **1** example.")
    assert started == ["supervised"] * 3
    stored = dataset_records(space)
    assert sorted(r["source"] for r in stored) == [
        "incoming/a.jsonl", "incoming/a.jsonl", "incoming/sub/b.txt", "incoming/sub/b.txt", "my data.jsonl"]
    # The files read stay where they were.
    assert (incoming / "a.jsonl").exists() and (incoming / "sub" / "b.txt").exists()

    empty = space.data / "nothing"
    empty.mkdir()
    assert await harness.ask("!train nothing", user="admin") == "`nothing` has no .jsonl, .json, .csv or .txt files."
    assert started == ["supervised"] * 3


@pytest.mark.parametrize("path", ["nosuchdir", "nosuch.jsonl", "sub/none.txt", "`missing file.csv`"])
async def test_train_missing_path_is_reported_not_learnt(harness: BotHarness, started: list[str], path: str) -> None:
    text = await harness.ask(f"!train {path}", user="admin")
    shown = path.strip("`")
    assert text.startswith(f"`{shown}` does not exist in this server's data folder."), text
    assert "`!train question => answer`" in text
    assert dataset_records(space_of(harness)) == [] and started == []


async def test_train_bad_files_are_refused_with_reasons(harness: BotHarness, started: list[str]) -> None:
    async def train(name: str, data: bytes) -> str:
        return await harness.ask("!train", user="admin", attachments=[(name, data, None)])

    assert await train("empty.jsonl", b"") == "`empty.jsonl` is empty."
    assert await train("blank.txt", b"\n \n") == "`blank.txt` has no examples (only blank lines)."
    assert await train("latin1.txt", "café\n".encode("latin-1")) == (
        "`latin1.txt` is not UTF-8 text (line 1, byte 4): save it as UTF-8.")
    assert await train("sheet.xlsx", b"PK\x03\x04") == (
        "`sheet.xlsx`: unsupported file type `.xlsx`; use .jsonl, .json, .csv or .txt.")
    assert await train("noext", b"a => b") == "`noext`: unsupported file type `none`; use .jsonl, .json, .csv or .txt."
    assert await train("broken.json", b'[{"prompt": "a", "completion": "b"}, {"prompt": ') == (
        "Added **1** example, skipped **1**:\n- line 1: not valid JSON (Expecting value, column 49); "
        "the rest of the array was not read\nThey are 1 question/answer pair: I answer from it after the next "
        "training.\nDataset `datasets/main`.")
    space = space_of(harness)
    # Refused uploads are not kept (the unsupported ones were never downloaded); one that gave examples is.
    assert sorted(p.name.split("-", 2)[2] for p in space.uploads.iterdir()) == ["broken.json"]

    malformed = b'{"prompt": "p1", "completion": "c1"}\n{"prompt": "p2",\n[1, 2]\n{"foo": 1}\n' \
                b'{"messages": [{"role": "user", "content": "u"}]}\n\n{"prompt": "p3", "completion": "c3"}\n'
    text = await train("malformed.jsonl", malformed)
    assert text.startswith("Added **2** examples, skipped **4**:"), text
    assert "- line 2: not valid JSON (Expecting property name enclosed in double quotes, column " in text
    assert "- line 3: expected a JSON object, got an array" in text
    assert "- line 4: no `messages`, `prompt`/`completion`, `input`/`output` or `text` field" in text
    assert "- line 5: no assistant message" in text
    assert started == ["supervised", "supervised"]
    assert len(dataset_records(space)) == 3

    # A bad file among good ones: the others are still added and reported, and training starts.
    msgs = await harness.send("!train", user="admin", attachments=[
        ("good.txt", b"good one\n", None), ("empty.csv", b"", None), ("photo.png", b"\x89PNG", "image/png")])
    text = text_of(msgs)
    assert "**good.txt**: Added **1** example." in text
    assert "**empty.csv**: not read: `empty.csv` is empty." in text
    assert "**photo.png**: not read: `photo.png`: unsupported file type `.png`" in text
    assert started == ["supervised"] * 3


async def test_train_unicode_file_names(harness: BotHarness, started: list[str]) -> None:
    name = "données 日本語 ✓.jsonl"
    text = await harness.ask("!train", user="admin", attachments=[(name, jsonl(pair("こんにちは", "hello")), None)])
    assert text.startswith("Added **1** example."), text
    space = space_of(harness)
    [upload] = list(space.uploads.iterdir())
    assert upload.name.endswith("-données_日本語_.jsonl") and upload.parent == space.uploads
    [record] = dataset_records(space)
    assert record["source"] == name and record["messages"][0]["content"] == "こんにちは"
    # The same name typed as a path (quoted because of the spaces) works too.
    folder = space.data / "incoming"
    folder.mkdir()
    (folder / name).write_bytes(jsonl(pair("さようなら", "goodbye")))
    assert (await harness.ask(f"!train `incoming/{name}`", user="admin")).startswith("Added **1** example.")
    assert started == ["supervised", "supervised"]


async def test_train_50_mb_attachment(harness: BotHarness, started: list[str]) -> None:
    line = b'{"prompt": "question %d ' + b"x" * 160 + b'", "completion": "answer %d"}\n'
    lines = [line % (i, i) for i in range(260_000)]
    data = b"".join(lines)
    assert len(data) >= 50 * 1_000_000
    t0 = time.monotonic()
    text = await harness.ask("!train", user="admin", attachments=[("big.jsonl", data, None)], timeout=60)
    elapsed = time.monotonic() - t0
    assert text.startswith(f"Added **{len(lines):,}** examples."), text
    space = space_of(harness)
    [upload] = list(space.uploads.iterdir())
    assert upload.stat().st_size == len(data)
    [ingested] = dataset_folder.current_dataset(space).glob("ingested-*.jsonl")
    assert ingested.read_bytes().count(b"\n") == len(lines)
    assert started == ["supervised"]
    print(f"50 MB attachment ingested in {elapsed:.1f}s")  # a figure, not an assertion


async def test_train_attachment_over_the_limit(harness: BotHarness, started: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules["model"], "MAX_DATA_UPLOAD", 1000)
    text = await harness.ask("!train", user="admin", attachments=[("big.txt", b"x\n" * 1000, None)])
    assert text == "`big.txt` is 2.0 KB; training files are limited to 1,000 bytes."
    assert not space_of(harness).uploads.exists() and started == []


async def test_train_duplicates_start_no_second_job(harness: BotHarness) -> None:
    """The real job part: new data starts a job; the same data again adds nothing and starts none."""
    data = jsonl(*(pair(f"question {i}", f"answer {i}") for i in range(4)))
    msgs = await harness.send("!train", user="admin", attachments=[("qa.jsonl", data, None)])
    assert msgs[0].content == ("Added **4** examples.\nThey are 4 question/answer pairs: I answer from these after "
                               "the next training.\nDataset `datasets/main`.")
    assert any(m.content.startswith("Started training job `") for m in msgs), text_of(msgs)
    await harness.sandbox.wait_for(
        lambda: any("succeeded" in m.content for m in harness.sandbox.bot_messages()), timeout=20)
    jobs = (await harness.bot.model.list_jobs(harness.guild_id, 10))
    assert len(jobs) == 1

    for attempt in range(2):  # the same file again, then the same examples inline
        if attempt == 0:
            msgs = await harness.send("!train", user="admin", attachments=[("qa.jsonl", data, None)])
        else:
            msgs = await harness.send("!train question 0 => answer 0\nquestion 1 => answer 1", user="admin")
        n = 4 if attempt == 0 else 2
        assert len(msgs) == 1, text_of(msgs)
        assert msgs[0].content.startswith(f"Added **0** examples, skipped **{n}** ({n} already in the dataset):")
        assert "- line 1: already in the dataset" in msgs[0].content
        assert msgs[0].content.endswith("Nothing new was added, so I did not start training.")
    assert len((await harness.bot.model.list_jobs(harness.guild_id, 10))) == 1
    assert len(dataset_records(space_of(harness))) == 4


# ---------------------------------------------------------------------------- paths that must be refused
async def test_path_refusals_for_every_command(harness: BotHarness, started: list[str], tmp_path: Path) -> None:
    space = space_of(harness)
    space.data.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_bytes(jsonl(pair("secret", "leaked")))
    (space.data / ".env").write_text("DISCORD_TOKEN=do-not-leak\n")
    (space.data / "sub").mkdir()
    (space.data / "sub" / ".env").write_text("OPENAI_API_KEY=do-not-leak\n")
    (space.data / "link_out.jsonl").symlink_to(outside / "secret.jsonl")
    (space.data / "link_env").symlink_to(space.data / ".env")
    (space.data / "dir_out").symlink_to(outside, target_is_directory=True)
    other_id = harness.guild_id + 1
    other = GuildSpace(other_id, harness.bot.settings.data_dir, harness.bot.settings.corrections_dir)
    (other.data / "datasets").mkdir(parents=True)
    (other.data / "datasets" / "theirs.jsonl").write_bytes(jsonl(pair("their", "data")))
    (space.data / "to_other").symlink_to(other.data, target_is_directory=True)

    dotdot = "`..` is not allowed: paths stay inside this server's data folder."
    absolute = "Absolute paths are not allowed: give a path inside this server's data folder."
    hidden = "Hidden files and folders (names starting with `.`) are not available."
    out = "That path leads outside this server's data folder."
    cases = {
        "../x": dotdot, "/etc/passwd": absolute, "%2e%2e/x": dotdot, "..%2f..%2fx": dotdot,
        ".env": hidden, "sub/.env": hidden, "%2eenv": hidden, "link_out.jsonl": out, "link_env": hidden,
        "dir_out": out, "dir_out/secret.jsonl": out, f"../{other_id}/datasets/theirs.jsonl": dotdot,
        f"..%2f{other_id}%2fdatasets": dotdot, "to_other/datasets": out,
    }
    before_data, before_other = snapshot(space.data), snapshot(other.data)
    first = max(harness.sandbox.messages, default=0)
    for command in ("train", "getfile", "archive", "select_dataset"):
        for path, expected in cases.items():
            said = await harness.ask(f"!{command} {path}", user="admin", quiet=0.05)
            assert said == expected, f"!{command} {path}: {said}"
    sent = harness.sandbox.bot_messages(after=first)
    assert len(sent) == 4 * len(cases)
    assert not any(m.attachments for m in sent)
    assert not any("leak" in m.content or "secret" in m.content.replace("secret.jsonl", "") for m in sent)
    assert snapshot(space.data) == before_data and snapshot(other.data) == before_other
    assert started == []


async def test_admin_commands_refuse_members(harness: BotHarness, started: list[str]) -> None:
    space = space_of(harness)
    (space.data / "sets").mkdir(parents=True)
    (space.data / "sets" / "a.jsonl").write_bytes(jsonl(pair("q", "a")))
    before = snapshot(space.data)
    for command in ("!train", "!train q => a", "!select_dataset sets", "!archive sets", "!getfile sets/a.jsonl"):
        assert await harness.ask(command, user="member", quiet=0.05) == PERMISSION, command
    assert await harness.ask("!train", user="member", attachments=[("x.txt", b"x\n", None)]) == PERMISSION
    assert snapshot(space.data) == before and started == []
    # Admins (Manage Server) and the owner may.
    for user in ("admin", "owner"):
        msgs = await harness.send("!getfile sets/a.jsonl", user=user)
        assert msgs[0].attachments and msgs[0].attachments[0].data == jsonl(pair("q", "a"))


# ---------------------------------------------------------------------------- !correct
async def ask_model(harness: BotHarness, prompt: str, *, user: str = "member") -> Message:
    """Chat in #general: the (untrained) local model answers as a reply."""
    msgs = await harness.send(prompt, user=user)
    assert msgs and msgs[0].reference_id == harness.last_posted.id
    return msgs[0]


async def test_correct_by_id_and_by_reply(harness: BotHarness) -> None:
    sb = harness.sandbox
    answer = await ask_model(harness, "What is the capital of France?")
    said = await harness.ask(f"!correct {answer.id} The capital of France is Paris.")
    assert said.startswith("Thanks — correction `C-") and "saved" in said
    ref1 = said.split("`")[1]
    said = await harness.ask("!correct 42 is the answer, not that.", user="admin", reply_to=answer.id)
    assert said.startswith("Thanks — correction `C-")
    ref2 = said.split("`")[1]

    stored = read_records(space_of(harness).corrections_file)
    assert not stored.damaged
    first, second = stored.records
    assert first["ref"] == ref1 and second["ref"] == ref2
    assert first["prompt"] == second["prompt"] == "What is the capital of France?"
    assert first["answer"] == second["answer"] == answer.content
    assert first["correction"] == "The capital of France is Paris."
    assert second["correction"] == "42 is the answer, not that."
    assert (first["author_id"], first["author_name"]) == (sb.member.id, "member")
    assert (second["author_id"], second["author_name"]) == (sb.admin.id, "admin")
    assert first["message_id"] == second["message_id"] == answer.id
    assert first["channel_id"] == sb.text_channel.id
    assert recent(first["time"]) and recent(second["time"])
    assert records.list_corrections(space_of(harness)) == stored.records


async def test_correct_refusals(harness: BotHarness, tmp_path: Path) -> None:
    sb = harness.sandbox
    space = space_of(harness)
    answer = await ask_model(harness, "hello there")
    hi = await harness.send("!hi")
    mine = harness.last_posted  # a member's message, not a bot answer
    # An answer recorded in another guild's space, under an id this guild never saw.
    other = GuildSpace(harness.guild_id + 1, harness.bot.settings.data_dir, harness.bot.settings.corrections_dir)
    foreign_id = sb.ids.next()
    records.record_answer(other, message_id=foreign_id, channel_id=1, prompt="their q", answer="their a",
                          prompt_message_id=None, author_id=None, model=None)

    not_answer = "That message isn't one of my answers: reply to my answer to correct it."
    assert await harness.ask(f"!correct {mine.id} fixed") == not_answer
    assert await harness.ask("!correct fixed", reply_to=mine.id) == not_answer
    unknown = 1234567890123456789
    for mid in (unknown, hi[0].id, foreign_id):  # no such message, a bot message that isn't an answer, foreign
        assert await harness.ask(f"!correct {mid} fixed", user="admin") == (
            f"I have no answer with id `{mid}` in this server. Reply to my answer with the correction instead.")
    usage = "Usage: `!correct [message_id] <correction...>` (see `!help correct`)"
    assert await harness.ask("!correct", user="owner") == f"Missing `text`. {usage}"
    assert await harness.ask(f"!correct {answer.id}", user="owner") == (
        f"Give the correction after the message id. {usage}")
    assert await harness.ask("!correct better answer", user="owner") == (
        "I haven't answered you in this channel yet. Reply to one of my answers with "
        "`!correct <the right answer>`, or give its message id first.")
    assert (await harness.ask("!correct 123 better", user="owner")).startswith("`123` is not a message id")
    assert not space.corrections_file.exists()
    assert not other.corrections_file.exists()


async def test_correct_without_reply_corrects_my_last_answer_to_you(harness: BotHarness) -> None:
    """The hint "teach me with !correct <the right answer>" works as written: no reply, no id needed."""
    await ask_model(harness, "first question", user="admin")  # someone else's answer: not the one corrected
    await ask_model(harness, "what is the wifi password")
    said = await harness.send("!correct It is on the card by the door.", count=2)
    assert said[0].content == "Correcting my last answer to you here (to “what is the wifi password”)."
    assert said[1].content.startswith("Thanks — correction `C-")
    (stored,) = records.list_corrections(space_of(harness))
    assert stored["prompt"] == "what is the wifi password"
    assert stored["correction"] == "It is on the card by the door."


async def test_mistyped_correct_does_not_use_the_cooldown(harness: BotHarness) -> None:
    answer = await ask_model(harness, "when is lunch")
    for _ in range(12):  # more than the cooldown allows (10 a minute)
        assert (await harness.ask("!correct 123 x")).startswith("`123` is not a message id")
    assert (await harness.ask(f"!correct {answer.id} At noon.")).startswith("Thanks — correction")


# ---------------------------------------------------------------------------- !feedback
async def test_feedback_plain_and_as_reply(harness: BotHarness) -> None:
    sb = harness.sandbox
    said = await harness.ask("!feedback The answers are too short.")
    assert said.startswith("Thanks for the feedback! Reference: `F-")
    ref1 = said.split("`")[1]
    answer = await ask_model(harness, "tell me a joke")
    said = await harness.ask("!feedback This one was not funny.", user="admin", reply_to=answer.id)
    ref2 = said.split("`")[1]
    usage = "Missing `text`. Usage: `!feedback <text...>` (see `!help feedback`)"
    assert await harness.ask("!feedback") == usage
    assert await harness.ask("!feedback   ") == usage

    first, second = records.list_feedback(space_of(harness))
    assert (first["ref"], first["text"], first["author_id"], first["author_name"]) == (
        ref1, "The answers are too short.", sb.member.id, "member")
    assert first["channel_id"] == sb.text_channel.id and first["reply_to"] is None and recent(first["time"])
    assert (second["ref"], second["text"], second["author_id"]) == (ref2, "This one was not funny.", sb.admin.id)
    assert second["reply_to"] == {"message_id": answer.id, "author_id": sb.bot_user.id, "content": answer.content}


# ---------------------------------------------------------------------------- !select_dataset
async def test_select_dataset(harness: BotHarness, started: list[str]) -> None:
    space = space_of(harness)
    v2 = space.data / "sets" / "v2"
    v2.mkdir(parents=True)
    (v2 / "a.jsonl").write_bytes(jsonl(pair("a1", "b1"), pair("a2", "b2"), pair("a3", "b3")) + b"{oops\n")
    (v2 / "b.txt").write_text("t1\nt2\n")
    said = await harness.ask("!select_dataset sets/v2", user="admin")
    assert said.startswith("Dataset for the next training: `sets/v2` with **5** examples (1 line skipped). "
                           "Archived as `archives/v2-"), said
    archive_name = said.rsplit("`archives/", 1)[1].split("`")[0]
    with zipfile.ZipFile(space.archives / archive_name) as zf:
        assert sorted(zf.namelist()) == ["a.jsonl", "b.txt"]
        assert zf.read("b.txt") == b"t1\nt2\n"
    assert read_json(space.state_file) == {"dataset": "sets/v2", "dataset_positive": True}

    neg = space.data / "sets" / "neg"
    neg.mkdir()
    (neg / "n.txt").write_text("bad 1\nbad 2\n")
    said = await harness.ask("!select_dataset sets/neg positive=no", user="admin")
    assert said.startswith("Dataset for the next training: `sets/neg` with **2** examples. Archived as "), said
    assert read_json(space.state_file) == {"dataset": "sets/neg", "dataset_positive": False}
    # !train now adds to the selected dataset.
    assert "Dataset `sets/neg`." in await harness.ask("!train new q => new a", user="admin")
    assert any(p.name.startswith("ingested-") for p in neg.iterdir())

    (space.data / "sets" / "empty").mkdir()
    state = space.state_file.read_bytes()
    archives = sorted(p.name for p in space.archives.iterdir())
    for args, expected in {
        "sets/none": "`sets/none` does not exist in this server's data folder.",
        "sets/v2/a.jsonl": "`sets/v2/a.jsonl` is a file; give a folder.",
        "sets/empty": "`sets/empty` has no usable examples; nothing selected.",
        "archives": "The archives folder cannot be a dataset.",
        "sets/v2 positive=perhaps": "`positive=` takes yes or no, not `perhaps`.",
    }.items():
        assert await harness.ask(f"!select_dataset {args}", user="admin", quiet=0.05) == expected, args
    assert space.state_file.read_bytes() == state
    assert sorted(p.name for p in space.archives.iterdir()) == archives


# ---------------------------------------------------------------------------- !archive
async def test_archive_sends_the_zip(harness: BotHarness, tmp_path: Path) -> None:
    space = space_of(harness)
    corpus = space.data / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("alpha\n")
    (corpus / "sub" / "b.jsonl").write_bytes(jsonl(pair("q", "a")))
    (corpus / ".hidden").write_text("secret")
    (tmp_path / "outside.txt").write_text("outside")
    (corpus / "out.txt").symlink_to(tmp_path / "outside.txt")
    msgs = await harness.send("!archive `corpus/`", user="admin")
    [msg] = msgs
    assert msg.content.startswith("Archived `corpus` as `archives/corpus-")
    assert ": 2 files, " in msg.content and "Skipped 1 link(s) and 1 hidden file(s)." in msg.content
    [att] = msg.attachments
    assert att.filename.startswith("corpus-") and att.filename.endswith(".zip")
    assert att.data == (space.archives / att.filename).read_bytes()
    with zipfile.ZipFile(io.BytesIO(att.data)) as zf:
        assert sorted(zf.namelist()) == ["a.txt", "sub/b.jsonl"]
        assert zf.read("a.txt") == b"alpha\n" and zf.read("sub/b.jsonl") == jsonl(pair("q", "a"))


async def test_archive_over_the_limit_and_refusals(harness: BotHarness) -> None:
    space = space_of(harness)
    big = space.data / "big"
    big.mkdir(parents=True)
    (big / "noise.bin").write_bytes(os.urandom(11 * MIB))  # incompressible: the zip stays over 10 MiB
    [msg] = await harness.send("!archive big", user="admin", timeout=30)
    assert not msg.attachments
    assert "over this server's upload limit (10.0 MB); fetch it from the server's data folder." in msg.content
    assert " → 11.0 MB." in msg.content, msg.content  # its size is stated
    [zipped] = space.archives.iterdir()
    assert zipped.stat().st_size > 10 * MIB

    (space.data / "hollow" / "inner").mkdir(parents=True)
    (space.data / "file.txt").write_text("x")
    for folder, expected in {
        "hollow": "`hollow` has no files to archive.",
        "nowhere": "`nowhere` does not exist in this server's data folder.",
        "file.txt": "`file.txt` is a file, not a folder: give a folder to archive.",
        "archives": "The archives folder itself cannot be archived.",
    }.items():
        assert await harness.ask(f"!archive {folder}", user="admin", quiet=0.05) == expected
    assert len(list(space.archives.iterdir())) == 1


# ---------------------------------------------------------------------------- !getfile
async def test_getfile(harness: BotHarness) -> None:
    space = space_of(harness)
    docs = space.data / "docs"
    docs.mkdir(parents=True)
    content = "Ünïcödé ✓ content\n".encode() + os.urandom(2000)
    (docs / "résumé ✓.txt").write_bytes(content)
    [msg] = await harness.send("!getfile docs/résumé ✓.txt", user="admin")
    assert msg.content == "`docs/résumé ✓.txt` (2.0 KB)"
    [att] = msg.attachments
    assert att.data == content and att.filename == "résumé ✓.txt"

    (docs / "huge.bin").write_bytes(b"\0" * (11 * MIB))
    (docs / "edge.bin").write_bytes(b"\0" * (10 * MIB + 1))
    limit_cases = {
        "docs/huge.bin": "`docs/huge.bin` is 11.0 MB, over this server's upload limit of 10.0 MB.",
        "docs/edge.bin": "`docs/edge.bin` is 10,485,761 bytes, over this server's upload limit of 10,485,760 bytes.",
        "docs": "`docs` is a folder; `!archive docs` zips it.",
        ".": "`.` is a folder; `!archive .` zips it.",
        "docs/nope.txt": "`docs/nope.txt` does not exist in this server's data folder.",
    }
    first = max(harness.sandbox.messages, default=0)
    for path, expected in limit_cases.items():
        assert await harness.ask(f"!getfile {path}", user="admin", quiet=0.05) == expected
    assert not any(m.attachments for m in harness.sandbox.bot_messages(after=first))
