"""commands/_shared.py helpers: split_message (Discord's length limit, code fences kept balanced)."""

from __future__ import annotations

import pytest

from commands._shared import listed, page_number, paginate, split_message
from errors import InvalidInput


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


def test_listing_helpers_stay_under_discords_limit() -> None:
    """The shared helpers every listing reply uses: `listed` summarises, `paginate` pages, `page_number` parses."""


    refs = [f"`C-{i:06x}`" for i in range(5000)]
    said = listed(refs)
    assert len(said) <= 600 and said.startswith("`C-000000`, `C-000001`") and said.endswith(" more")
    assert int(said.rsplit(" and ", 1)[1].split()[0].replace(",", "")) + said.count("`C-") == 5000
    assert listed(["a", "b"]) == "a, b" and listed([]) == ""
    pages = paginate([f"block {i} " + "x" * 900 for i in range(30)], page_chars=5600)
    assert sum(len(p) for p in pages) == 30 and all(sum(len(b) + 1 for b in p) <= 5600 for p in pages)
    assert paginate([]) == [[]] and paginate(["y" * 9000]) == [["y" * 9000]]  # one huge block: a page of its own
    assert page_number("") == 1 and page_number("page 3") == 3 and page_number("p2") == 2
    with pytest.raises(InvalidInput):
        page_number("0")
