"""Offers, picks and unanswered questions (dataset/picks.py) on both engines: what a click records, who may
click, K members agreeing, review, forget, compile, grouping by meaning and answering a group."""

from __future__ import annotations

import numpy as np
import pytest

from dataset import corrections as records
from dataset import forget, picks
from dataset.compile import compile_guild
from errors import InvalidInput, NotFound
from records.db import Database
from storage import GuildSpace

OPTIONS = [("Who approves travel?", "Your manager approves travel."), ("How do I book a flight?", "Use the portal.")]
ASKER, OTHER, THIRD = 101, 202, 303


def offer(space: GuildSpace, prompt: str = "who signs off on my trip?", asker: int = ASKER,
          minutes: float = 60) -> picks.Offer:
    return picks.add_offer(space, channel_id=5, author_id=asker, author_name=f"user{asker}", prompt=prompt,
                           prompt_message_id=9, options=OPTIONS, model="local-v1", minutes=minutes)


def choose(space: GuildSpace, o: picks.Offer, choice: int, user: int | None = None, *, trusted: bool = False,
           k: int = 2) -> picks.Choice:
    user = o.author_id if user is None else user
    return picks.choose(space, o.id, choice, user_id=user, user_name=f"user{user}", trusted=trusted,
                        picks_to_learn=k)


def count(space: GuildSpace, table: str) -> int:
    with space.db.tx(write=False) as tx:
        return int(tx.scalar(f"SELECT COUNT(*) FROM {table} WHERE guild_id = ?", (space.guild_id,), 0))


def test_a_members_pick_waits_for_review_and_an_admins_counts_at_once(space: GuildSpace) -> None:
    done = choose(space, offer(space), 0)
    assert done.option == OPTIONS[0] and done.pick is not None and not done.counted
    assert done.pick.ref.startswith("P-") and done.pick.prompt == "who signs off on my trip?"
    assert [p.ref for p in records.pending_picks(space)] == [done.pick.ref]
    assert records.approved_picks(space) == []
    admin = choose(space, offer(space, "travel sign-off?"), 0, trusted=True)
    assert admin.counted and [p.prompt for p in records.approved_picks(space)] == ["travel sign-off?"]
    # The counted one is a training pair (the asked wording with the chosen question's answer); the pending not.
    compiled = compile_guild(space, min_examples=1)
    users = [line["messages"][0]["content"] for line in compiled.supervised]
    assert "travel sign-off?" in users and "who signs off on my trip?" not in users


def test_review_approves_and_rejects_picks_by_their_p_ref(space: GuildSpace) -> None:
    one = choose(space, offer(space), 0).pick
    two = choose(space, offer(space, "flights?"), 1).pick
    assert one is not None and two is not None
    sig = records.overlay_signature(space)
    done = records.review(space, [one.ref], approve=True, by_id=1, by_name="admin")
    assert [d.ref for d in done] == [one.ref] and records.overlay_signature(space) != sig
    records.review(space, [two.ref.lower()], approve=False, by_id=1, by_name="admin")
    assert {p.ref: p.status for p in records.list_picks(space)} == {one.ref: "approved", two.ref: "rejected"}
    with pytest.raises(InvalidInput, match=f"Paraphrase `{two.ref}` is already rejected"):
        records.review(space, [two.ref], approve=False, by_id=1, by_name="admin")
    with pytest.raises(InvalidInput, match="There is no paraphrase `P-000000`"):
        records.review(space, ["P-000000"], approve=True, by_id=1, by_name="admin")


def test_k_different_members_making_the_same_pick_make_it_count(space: GuildSpace) -> None:
    first = choose(space, offer(space, "Who signs off on my trip?"), 0)
    again = choose(space, offer(space, "who signs off on my trip"), 0)  # the same member again: still one
    assert not first.counted and not again.counted and again.agreed == 1
    assert again.pick == first.pick and len(records.list_picks(space)) == 1
    other = choose(space, offer(space, "WHO signs off on my trip ?", asker=OTHER), 0)
    assert other.counted and other.agreed == 2
    assert {p.status for p in records.list_picks(space)} == {"approved"}
    # A different question chosen for the same words is another pick; 0 never counts without an admin.
    lone = choose(space, offer(space, "who signs off on my trip?", asker=THIRD), 1, k=0)
    assert not lone.counted and [p.ref for p in records.pending_picks(space)] == [lone.pick.ref]  # type: ignore[union-attr]


def test_refused_clicks_record_nothing(space: GuildSpace, db: Database) -> None:
    o = offer(space)
    with pytest.raises(picks.NotAsker) as exc:
        choose(space, o, 0, user=OTHER)
    assert exc.value.asker_id == ASKER
    with pytest.raises(picks.Refused, match="doesn't belong"):
        choose(space, o, 7)
    with pytest.raises(NotFound):
        picks.choose(space, o.id + 1000, 0, user_id=ASKER, user_name="x", trusted=False, picks_to_learn=2)
    elsewhere = GuildSpace(space.guild_id + 1, space.data.parent / "g2", space.corrections.parent / "c2", db).ensure()
    with pytest.raises(NotFound):  # a forged id naming another server's offer
        picks.choose(elsewhere, o.id, 0, user_id=ASKER, user_name="x", trusted=True, picks_to_learn=2)
    expired = offer(space, minutes=0.1)
    with pytest.raises(picks.Refused, match="expired"):
        picks.choose(space, expired.id, 0, user_id=ASKER, user_name="x", trusted=False, picks_to_learn=2,
                     now=expired.expires_at + 1)
    assert count(space, "picks") == 0 and count(space, "unanswered") == 0
    choose(space, o, 0)
    with pytest.raises(picks.Refused, match="already chose"):
        choose(space, o, picks.NONE_OF_THESE)
    assert count(space, "picks") == 1 and count(space, "unanswered") == 0
    assert [found.id for _, found in picks.expired_open_offers(space.db, None, now=expired.expires_at + 1)] == [
        expired.id]


def fake_embed(texts: list[str]) -> np.ndarray:
    """Travel questions on one axis, printer questions on another: meaning by keyword, unit rows."""
    rows = [[1.0, 0.0] if ("trip" in t or "travel" in t) else [0.0, 1.0] for t in texts]
    return np.array(rows, dtype=np.float32)


def test_none_of_these_groups_by_meaning_and_an_answer_closes_the_group(space: GuildSpace) -> None:
    for asker, text in [(1, "Who pays for my trip?"), (2, "who pays for my trip"), (3, "Is travel refunded?"),
                        (4, "Why is the printer jammed?")]:
        done = choose(space, offer(space, text, asker=asker), picks.NONE_OF_THESE)
        assert done.option is None and done.unanswered_id is not None
    groups = picks.group_unanswered(picks.open_unanswered(space), fake_embed, 0.5)
    assert [(g.question, g.count, len(g.askers)) for g in groups] == [("Who pays for my trip?", 3, 3),
                                                                     ("Why is the printer jammed?", 1, 1)]
    wording_only = picks.group_unanswered(picks.open_unanswered(space), lambda _: None, 0.5)
    assert [g.count for g in wording_only] == [2, 1, 1]
    loud = "@everyone <@&55> " + "x" * 3980
    fix = picks.answer_group(space, groups[0], question=groups[0].question, answer=loud, author_id=9,
                             author_name="admin", channel_id=5)
    assert fix.approved and fix.correction == loud.strip()
    assert [c.prompt for c in records.approved_corrections(space)] == ["Who pays for my trip?"]
    assert [g.question for g in picks.group_unanswered(picks.open_unanswered(space), fake_embed, 0.5)] == [
        "Why is the printer jammed?"]
    with pytest.raises(picks.Refused, match="already answered"):  # the modal submitted twice
        picks.answer_group(space, groups[0], question="q", answer="again", author_id=9, author_name="admin",
                           channel_id=5)
    with pytest.raises(InvalidInput, match="4,001 characters"):
        picks.answer_group(space, groups[1], question="q", answer="y" * 4001, author_id=9, author_name="a",
                           channel_id=5)
    assert len(records.approved_corrections(space)) == 1


def test_forget_removes_a_persons_picks_offers_and_unanswered_questions(space: GuildSpace) -> None:
    choose(space, offer(space), 0, trusted=True)
    choose(space, offer(space, "printer?"), picks.NONE_OF_THESE)
    choose(space, offer(space, "theirs", asker=OTHER), 0)
    result = forget.forget(space, ASKER)
    assert result.counts["picks on offers"] == 1 and result.counts["questions offered choices"] == 2
    assert result.counts["unanswered questions"] == 1
    assert [p.author_id for p in records.list_picks(space)] == [OTHER]
    assert picks.open_unanswered(space) == [] and records.overlay_signature(space)[0] == 0
