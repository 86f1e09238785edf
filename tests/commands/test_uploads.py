"""!uploads end to end: what the dataset was given, batch by batch, and taking a bad upload back."""

from __future__ import annotations

from tests.fakes.samples import jsonl, pair
from tests.harness import BotHarness, confirmed, space_of


async def test_list_and_remove_an_upload(harness: BotHarness, started: list[str]) -> None:
    h = harness
    space = space_of(h)
    assert await h.ask("!uploads", user="admin") == ("The dataset `datasets/main` has no examples yet. `!train` with "
                                                      "a file or examples adds some.")
    bad = jsonl(*(pair(f"bad q {i}", "wrong") for i in range(3)))
    await h.ask("!train", user="admin", attachments=[("bad.jsonl", bad, None)])
    await h.ask("!train good q => good a\nother q => other a", user="owner")
    listing = await h.ask("!uploads", user="admin")
    assert listing.startswith("**2 source(s), 5 examples** in the dataset `datasets/main`, newest first — "
                              "`!uploads remove ID` takes one back:")
    lines = listing.split("\n")[1:]
    assert "examples written in a message — 2 examples, by owner" in lines[0]
    assert "upload `bad.jsonl` — 3 examples, by admin" in lines[1]
    upload_id = lines[1].split("`")[1]
    assert await h.ask("!uploads remove S-zz", user="admin") == (
        "`S-zz` is not a source id (they look like `S-1a2b3c`). Nothing was changed. `!uploads` lists them.")
    assert await h.ask("!uploads remove S-000000", user="admin") == (
        "The current dataset has no source `S-000000`. Nothing was changed. `!uploads` lists them.")
    assert await h.ask(f"!uploads remove {upload_id}") == "You need the **Manage Server** permission to use this command."
    assert len(list(space.uploads.iterdir())) == 1
    dialog, said_msg, *_ = await confirmed(h, f"!uploads remove {upload_id}", user="admin")  # named, then confirmed
    assert dialog.content.startswith(f"Remove `{upload_id}` upload `bad.jsonl` — 3 examples")
    said = said_msg.content
    assert said == (f"Removed `{upload_id}` (upload `bad.jsonl`): 3 examples and its stored file. The next `!train` "
                    f"trains without them; the current model keeps them until then.")
    assert list(space.uploads.iterdir()) == []
    assert b"bad q" not in b"".join(p.read_bytes() for p in (space.datasets / "main").rglob("*.jsonl"))
    assert (await h.ask("!uploads", user="admin")).startswith("**1 source(s), 2 examples**")
