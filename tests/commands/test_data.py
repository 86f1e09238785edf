"""The admin commands on the data space end to end: !select_dataset, !archive, !getfile, the path refusals
shared by every command that takes a path (!train included), and members being refused.

Every test drives the real bot through the sandbox and checks what it said, what it sent and what it
stored; the job part of ``!train`` is stubbed (the ``started`` fixture).
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

from storage import GuildSpace
from tests.fakes.samples import jsonl, pair
from tests.harness import BotHarness, space_of

PERMISSION = "You need the **Manage Server** permission to use this command."
MIB = 1024 * 1024


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (links not followed) with its bytes: to prove nothing changed."""
    found: dict[str, bytes] = {}
    if root.exists():
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = Path(dirpath) / name
                found[str(path.relative_to(root))] = b"<link>" if path.is_symlink() else path.read_bytes()
    return found


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
    assert space.read_state() == {"dataset": "sets/v2", "dataset_positive": True}

    neg = space.data / "sets" / "neg"
    neg.mkdir()
    (neg / "n.txt").write_text("bad 1\nbad 2\n")
    said = await harness.ask("!select_dataset sets/neg positive=no", user="admin")
    assert said.startswith("Dataset for the next training: `sets/neg` with **2** examples. Archived as "), said
    assert space.read_state() == {"dataset": "sets/neg", "dataset_positive": False}
    # !train now adds to the selected dataset.
    assert "Dataset `sets/neg`." in await harness.ask("!train new q => new a", user="admin")
    assert any(p.name.startswith("ingested-") for p in neg.iterdir())

    (space.data / "sets" / "empty").mkdir()
    state = space.read_state()
    archives = sorted(p.name for p in space.archives.iterdir())
    for args, expected in {
        "sets/none": "`sets/none` does not exist in this server's data folder.",
        "sets/v2/a.jsonl": "`sets/v2/a.jsonl` is a file; give a folder.",
        "sets/empty": "`sets/empty` has no usable examples; nothing selected.",
        "archives": "The archives folder cannot be a dataset.",
        "sets/v2 positive=perhaps": "`positive=` takes yes or no, not `perhaps`.",
    }.items():
        assert await harness.ask(f"!select_dataset {args}", user="admin", quiet=0.05) == expected, args
    assert space.read_state() == state
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
        "docs": "`docs` is a folder. `!archive docs` zips it.",
        ".": "`.` is a folder. `!archive .` zips it.",
        "docs/nope.txt": "`docs/nope.txt` does not exist in this server's data folder.",
    }
    first = max(harness.sandbox.messages, default=0)
    for path, expected in limit_cases.items():
        assert await harness.ask(f"!getfile {path}", user="admin", quiet=0.05) == expected
    assert not any(m.attachments for m in harness.sandbox.bot_messages(after=first))


# ---------------------------------------------------------------------------- what used to crash
async def test_getfile_with_a_name_too_long_for_the_file_system(harness: BotHarness) -> None:
    """A 300-character name is one line in the channel, not "something went wrong" with a traceback."""
    said = await harness.ask("!getfile " + "a" * 300 + ".txt", user="admin")
    assert said == "That path can't be used: File name too long."


async def test_failed_writes_say_they_were_not_saved(harness: BotHarness) -> None:
    """A folder the bot cannot write to: !archive and !select_dataset say nothing was saved (root ignores
    file modes, so the folder the write needs is replaced by a file: the OS refuses the same way)."""
    space = space_of(harness).ensure()
    (space.data / "datasets" / "faq").mkdir(parents=True)
    (space.data / "datasets" / "faq" / "a.txt").write_text("q => a\n")
    space.archives.parent.mkdir(parents=True, exist_ok=True)
    space.archives.write_text("not a folder")
    said = await harness.ask("!archive datasets/faq", user="admin")
    assert said.startswith("The archive was not saved: I could not write to my data folder ("), said
    assert said.endswith("Nothing was changed; an admin can find the details in the log.")
    said = await harness.ask("!select_dataset datasets/faq", user="admin")
    assert said.startswith("The dataset choice was not saved: I could not write to my data folder ("), said
    assert space.archives.read_text() == "not a folder" and "dataset" not in space.read_state()
