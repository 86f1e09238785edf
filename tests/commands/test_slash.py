"""Every command is also a slash command: synced per server at start, typed options and files, autocomplete,
admin commands hidden from members, a first response within 3 s, DM refusal, wrong-typed options, the
"Correct this answer" menu and its form, and the owner's !sync."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from sandbox.appcommands import CHAT_INPUT, MESSAGE_COMMAND
from sandbox.chat import TerminalChat
from sandbox.interactions import DEFERRED_CHANNEL_MESSAGE, MODAL, InteractionRefused
from tests.harness import BotHarness, type_lines


def _commands(h: BotHarness) -> dict[str, object]:
    return {c.name: c for c in h.sandbox.commands if c.guild_id == h.guild_id}


async def test_commands_are_synced_with_descriptions_options_and_permissions(harness: BotHarness) -> None:
    h = harness
    cmds = _commands(h)
    prefix_names = {c.name for c in h.bot.commands if not c.hidden}
    slash_names = {n for n, c in cmds.items() if c.type == CHAT_INPUT}
    assert prefix_names <= slash_names, prefix_names - slash_names  # every command (help included)
    assert "Correct this answer" in {n for n, c in cmds.items() if c.type == MESSAGE_COMMAND}
    for name in slash_names:
        assert 1 <= len(cmds[name].description) <= 100
    train = {o["name"]: o for o in cmds["train"].options}
    assert set(train) == {"data", "file", "positive", "method"}
    assert train["file"]["type"] == 11 and train["positive"]["type"] == 5  # attachment, boolean
    assert [c["value"] for c in train["method"]["choices"]] == ["supervised", "dpo"]
    # Admin commands: members don't see them; everyone else's are open to all.
    admin_only = {n for n, c in cmds.items() if c.default_member_permissions not in (None, "")}
    assert {"train", "test", "cancel", "review", "approve", "reject", "archive", "getfile", "select_dataset",
            "export"} <= admin_only
    assert not {"hi", "help", "correct", "forget", "model", "jobs", "feedback"} & admin_only
    with pytest.raises(InteractionRefused, match="permission"):
        await h.sandbox.slash("member", "train", data="q => a")


async def test_slash_train_with_a_file_defers_then_follows_up(harness: BotHarness, started: list[str]) -> None:
    h = harness
    data = "\n".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                              {"role": "assistant", "content": f"a{i}"}]}) for i in range(3))
    used = await h.slash("train", user="admin", file=("pairs.jsonl", data.encode()), positive=True)
    assert used.response_type == DEFERRED_CHANNEL_MESSAGE and not used.failed
    said = "\n".join(m.content for m in used.messages)
    assert "Added **3**" in said or "3 new" in said or "3" in said, said
    assert started == ["supervised"]
    # The typed method (the local backend has no DPO: refused, nothing added), then inline examples.
    used = await h.slash("train", user="admin", data="what is x => x is y", method="dpo")
    assert "does not train with `dpo`" in used.messages[0].content and started == ["supervised"]
    used = await h.slash("train", user="admin", data="what is x => x is y")
    assert started == ["supervised", "supervised"], [m.content for m in used.messages]


async def test_autocomplete_models_jobs_and_folders(harness: BotHarness) -> None:
    h = harness
    space = h.bot.model.space(h.guild_id).ensure()
    (space.data / "datasets" / "faq").mkdir(parents=True)
    (space.data / "datasets" / ".hidden").mkdir(parents=True)
    got = await h.sandbox.wait_for_response(await h.sandbox.autocomplete("admin", "archive", "folder",
                                                                        folder="datasets/"))
    assert [c["value"] for c in got.choices or []] == ["datasets/faq"]
    # A server that shows /archive to everyone (Server Settings → Integrations): members still get no peek at
    # the data space, and the bot's own admin check refuses them.
    _commands(h)["archive"].default_member_permissions = None  # type: ignore[attr-defined]
    got = await h.sandbox.wait_for_response(await h.sandbox.autocomplete("member", "archive", "folder",
                                                                        folder="datasets/"))
    assert got.choices == []
    refused = await h.slash("archive", folder="datasets")
    assert [m.content for m in refused.messages] == ["You need the **Manage Server** permission to use this command."]
    assert refused.messages[0].ephemeral
    got = await h.sandbox.wait_for_response(await h.sandbox.autocomplete("member", "model", "name", name=""))
    assert [c["value"] for c in got.choices or []] == ["previous"]
    got = await h.sandbox.wait_for_response(await h.sandbox.autocomplete("admin", "cancel", "job_id", job_id=""))
    assert got.choices == []  # no job is running
    # /forget: `me` for everyone; members by name for admins (the value is the id the command takes).
    got = await h.sandbox.wait_for_response(await h.sandbox.autocomplete("member", "forget", "who", who=""))
    assert [c["value"] for c in got.choices or []] == ["me"]
    await h.send("what is the capital of nowhere?")
    got = await h.sandbox.wait_for_response(await h.sandbox.autocomplete("admin", "forget", "who", who="memb"))
    assert [c["value"] for c in got.choices or []] == [str(h.sandbox.state.user_named("member").id)]
    # /help, with the command names suggested.
    got = await h.sandbox.wait_for_response(await h.sandbox.autocomplete("member", "help", "command", command="tra"))
    assert [c["value"] for c in got.choices or []] == ["train"]
    helped = await h.slash("help", command="train")
    assert helped.messages[0].content.startswith("**Usage:** `/train ")


async def test_guild_only_commands_are_refused_in_dms_and_wrong_options_get_a_line(harness: BotHarness) -> None:
    h = harness
    # In DMs only global commands exist: on Discord the owner registers them once with !sync.
    assert (await h.ask("!sync", user="admin")).startswith("You can't use this command")
    assert (await h.ask("!sync", user="owner")).startswith("Registered ")
    everywhere = {c.name: c for c in h.sandbox.commands if c.guild_id is None}
    assert set(everywhere) >= {"hi", "correct", "train", "Correct this answer"}
    assert not everywhere["Correct this answer"].allowed_in_dm and everywhere["hi"].allowed_in_dm
    dm = h.sandbox.dm_channel("member")
    with pytest.raises(InteractionRefused, match="DMs"):
        await h.sandbox.slash("member", "correct", in_channel=dm, text="x")
    used = await h.slash("hi", in_channel=dm)
    assert used.messages[0].content.startswith("Hi ")
    # A message option that is not a message id: one clear line, only for them, nothing saved.
    used = await h.slash("correct", text="the right answer", message="yesterday")
    [line] = used.messages
    assert "is not a message id or link" in line.content and line.ephemeral
    assert not await h.bot.model.pending_corrections(h.guild_id)


async def test_correct_this_answer_menu_and_form(harness: BotHarness) -> None:
    h = harness
    [answer] = await h.send("what is the capital of nowhere?")
    opened = await h.menu(answer.id, "Correct this answer")
    assert opened.response_type == MODAL
    text = ("@everyone <@&" + str(next(iter(h.sandbox.state.roles))) + "> the answer is here. ") * 100
    text = text[:3999] + "!"
    form = h.sandbox.open_modals[h.sandbox.state.user_named("member").id]
    saved = await h.submit_modal(correction=text)
    [line] = saved.messages
    assert "awaits review" in line.content and line.ephemeral
    [pending] = await h.bot.model.pending_corrections(h.guild_id)
    assert pending.correction == text and len(text) == 4000
    assert not sb_notified(h)
    # The same form sent again (a replaying client): refused clearly, nothing more saved.
    again = await h.answered(await h.sandbox.submit_modal("member", resend=form, correction="twice"))
    assert "already sent this form" in again.messages[0].content
    assert len(await h.bot.model.pending_corrections(h.guild_id)) == 1
    # /reject takes the ids and the reason as options of their own.
    rejected = await h.slash("reject", user="admin", ids=pending.ref, reason="@everyone not an answer")
    assert rejected.messages[0].content.startswith(f"Rejected `{pending.ref}`: never used")
    assert "Reason kept" in rejected.messages[0].content and not sb_notified(h)
    # An admin's correction counts at once; a message that is not an answer is refused.
    await h.menu(answer.id, "Correct this answer", user="admin")
    done = await h.submit_modal(user="admin", correction="Nowhere City.")
    assert "from now on" in done.messages[0].content
    not_mine = await h.sandbox.post_message("member", "hello")
    refused = await h.menu(not_mine.id, "Correct this answer")
    assert "isn't one of my answers" in refused.messages[0].content



async def test_terminal_chat_menu_modal_and_dialog(harness: BotHarness, tmp_path: Path) -> None:
    """The same through the terminal chat's syntax: /menu, /modal, a dialog's buttons and /click."""
    sb = harness.sandbox
    out = io.StringIO()
    chat = TerminalChat(sb, out=out, files_dir=tmp_path / "files", prefix="!", silence=5.0, quiet=0.1)
    await type_lines(chat, "what is the capital of nowhere?", "what is the capital of elsewhere?", "who are you?")
    answer = sb.bot_messages()[0]
    await type_lines(chat, f'/menu {answer.id} "Correct this answer"', "/modal correction=\"Nowhere City.\"",
                     "!forget me")
    dialog = sb.bot_messages()[-1]
    await type_lines(chat, f"/click {dialog.id} 2")
    text = out.getvalue()
    for expected in ("submit it with /modal correction=...",
                     "(only you can see this) trainer: Thanks — correction `C-",
                     "Forget everything you gave in this server? This removes 1 corrections, 3 logged questions",
                     "    [1: Confirm] [2: Cancel]", "    [1: Confirm] (disabled) [2: Cancel] (disabled)",
                     "trainer: Nothing was forgotten; everything stays as it was."):
        assert expected in text, f"{expected!r} not in:\n{text}"


def sb_notified(h: BotHarness) -> bool:
    """Whether any message of the bot pinged anyone."""
    return any(h.sandbox.state.notified(m.id) for m in h.sandbox.state.messages.values()
               if m.author.id == h.sandbox.state.bot_user.id)
