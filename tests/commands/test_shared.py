"""commands/_shared.py helpers: split_message (Discord's length limit, code fences kept balanced)."""

from __future__ import annotations

from commands._shared import split_message


def test_split_short_and_empty() -> None:
    assert split_message("") == []
    assert split_message("hello") == ["hello"]


def test_split_long_line_is_cut_hard() -> None:
    chunks = split_message("a" * 4500)
    assert all(len(c) <= 2000 for c in chunks) and "".join(chunks) == "a" * 4500


def test_split_reopens_code_fence_with_language() -> None:
    text = "intro\n```py\n" + "\n".join(f"print({i})" for i in range(400)) + "\n```\noutro"
    chunks = split_message(text, limit=500)
    assert all(len(c) <= 500 for c in chunks)
    assert all(c.count("```") % 2 == 0 for c in chunks)
    assert all(c.startswith("```py") for c in chunks[1:-1])
    assert chunks[-1].endswith("outro")
