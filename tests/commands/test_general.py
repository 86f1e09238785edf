"""commands/general.py end to end: !hi, !help (the TrainerHelp command) and !instruction, split for Discord."""

from __future__ import annotations

from pathlib import Path

from commands.general import General
from tests.harness import ROOT, BotHarness


async def test_hi_names_the_user(harness: BotHarness) -> None:
    assert "Hi member!" in await harness.ask("!hi")
    assert "Hi admin!" in await harness.ask("!hi", user="admin")
    # Case-insensitive and tolerant of a space after the prefix.
    assert "Hi member!" in await harness.ask("! HI")


async def test_help_lists_commands_and_details(harness: BotHarness) -> None:
    text = "\n".join(m.content for m in await harness.send("!help"))
    assert "`!hi`" in text and "`!instruction`" in text and "`!help`" in text
    assert "Other" not in text
    detail = await harness.ask("!help hi")
    assert detail.startswith("**Usage:** `!hi`") and "Say hello." in detail
    assert "No command called `nope`" in await harness.ask("!help nope")


async def test_instruction_sends_the_guide(harness: BotHarness) -> None:
    messages = await harness.send("!instruction")
    text = "\n".join(m.content for m in messages)
    guide = (ROOT / "instructions.txt").read_text(encoding="utf-8")
    assert len(guide) > 1500
    assert all(len(m.content) <= 2000 for m in messages)
    assert "{prefix}" not in text
    for command in ("hi", "help", "instruction"):
        assert f"!{command}" in text


async def test_instruction_splits_5000_chars_on_lines_and_code_blocks(harness: BotHarness, tmp_path: Path) -> None:
    lines = []
    for i in range(60):
        lines.append(f"Line {i:02d}: " + "x" * 40)
        if i % 15 == 7:
            lines += ["```json", *[f'{{"example": {j}, "text": "{"y" * 30}"}}' for j in range(12)], "```"]
    guide = "\n".join(lines)
    assert len(guide) >= 5000
    path = tmp_path / "guide.txt"
    path.write_text(guide, encoding="utf-8")
    await harness.bot.remove_cog("General")
    await harness.bot.add_cog(General(harness.bot, instructions=path))
    messages = await harness.send("!instruction", count=3)
    assert len(messages) >= 3
    for m in messages:
        assert len(m.content) <= 2000
        assert m.content.count("```") % 2 == 0, "a chunk leaves a code block open"
        assert m.content.split("\n")[0] in guide.split("\n"), "chunk does not start on a line boundary"
    # Every original line arrives once, in order (fence repairs aside).
    got = [ln for m in messages for ln in m.content.split("\n") if not ln.startswith("```")]
    assert got == [ln for ln in lines if not ln.startswith("```")]
