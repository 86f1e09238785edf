"""The review queue of corrections (dataset/corrections.py) on both engines: states, decisions, refusals,
concurrent decisions, what compiles."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dataset import corrections as records
from dataset.compile import compile_guild
from errors import InvalidInput
from records.legacy import import_legacy
from storage import GuildSpace


def add(space: GuildSpace, prompt: str, fix: str, *, approved: bool) -> str:
    return records.add_correction(space, message_id=1, prompt=prompt, answer="wrong", correction=fix,
                                  author_id=7, author_name="member", channel_id=2, source_message_id=3,
                                  approved=approved).ref


def status(space: GuildSpace) -> dict[str, str]:
    return {c.ref: c.status for c in records.list_corrections(space)}


def decisions(space: GuildSpace) -> list[tuple[Any, ...]]:
    """Every review decision stored for the space's server, oldest first."""
    with space.db.tx(write=False) as tx:
        return tx.all("SELECT id, decision, by_id, by_name, reason FROM reviews WHERE guild_id = ? ORDER BY id",
                      (space.guild_id,))


def test_pending_until_approved_and_only_approved_compile(space: GuildSpace) -> None:
    pending = add(space, "When do you open?", "At nine.", approved=False)
    trusted = add(space, "Where are you?", "Main street.", approved=True)
    assert status(space) == {pending: "pending", trusted: "approved"}
    assert [c.ref for c in records.pending_corrections(space)] == [pending]
    assert not records.pending_corrections(space)[0].applies
    trained = [line["messages"][-1]["content"] for line in compile_guild(space, min_examples=1).supervised]
    assert trained == ["Main street."]

    before = records.review(space, [pending.lower()], approve=True, by_id=1, by_name="admin")
    assert [(c.ref, c.status) for c in before] == [(pending, "pending")]
    assert status(space)[pending] == "approved" and not records.pending_corrections(space)
    trained = [line["messages"][-1]["content"] for line in compile_guild(space, min_examples=1).supervised]
    assert sorted(trained) == ["At nine.", "Main street."]


def test_reject_keeps_it_out_and_reason_is_stored(space: GuildSpace) -> None:
    a, b = add(space, "q1", "a1", approved=False), add(space, "q2", "a2", approved=False)
    records.review(space, [a, b.removeprefix("C-")], approve=False, by_id=1, by_name="admin", reason="spam")
    assert status(space) == {a: "rejected", b: "rejected"}
    # One decision names both corrections, with who decided and why.
    ((review_id, decision, by_id, by_name, reason),) = decisions(space)
    assert (decision, by_id, by_name, reason) == ("rejected", 1, "admin", "spam")
    with space.db.tx(write=False) as tx:
        assert tx.all("SELECT ref FROM corrections WHERE guild_id = ? AND review_id = ? ORDER BY ref",
                      (space.guild_id, review_id)) == sorted([(a,), (b,)])
    assert {(c.reviewed_by, c.review_reason) for c in records.list_corrections(space)} == {("admin", "spam")}
    assert compile_guild(space, min_examples=1).supervised == []
    # A rejected one may still be approved (the admin changed their mind): the latest decision wins.
    records.review(space, [a], approve=True, by_id=2, by_name="other admin")
    assert status(space) == {a: "approved", b: "rejected"}
    shown = {c.ref: (c.reviewed_by, c.review_reason) for c in records.list_corrections(space)}
    assert shown == {a: ("other admin", ""), b: ("admin", "spam")}
    assert [d[1] for d in decisions(space)] == ["rejected", "approved"]  # both decisions kept on record
    trained = [line["messages"][-1]["content"] for line in compile_guild(space, min_examples=1).supervised]
    assert trained == ["a1"]


@pytest.mark.parametrize("case", ["unknown", "approve_twice", "reject_approved", "reject_twice", "bad_id",
                                  "mixed"])
def test_refusals_change_nothing(space: GuildSpace, case: str) -> None:
    pending = add(space, "q", "a", approved=False)
    approved = add(space, "q2", "a2", approved=True)
    rejected = add(space, "q3", "a3", approved=False)
    records.review(space, [rejected], approve=False, by_id=1, by_name="admin")
    decisions_before, status_before = decisions(space), status(space)
    approve, refs, said = {
        "unknown": (True, ["C-000000"], "There is no correction `C-000000`"),
        "approve_twice": (True, [approved], f"Correction `{approved}` is already approved"),
        "reject_approved": (False, [approved], f"Correction `{approved}` was already approved"),
        "reject_twice": (False, [rejected], f"Correction `{rejected}` is already rejected"),
        "bad_id": (True, ["hello"], "`hello` is not a correction id"),
        "mixed": (True, [pending, "C-abcdef"], "There is no correction `C-abcdef`"),  # all or none
    }[case]
    with pytest.raises(InvalidInput, match=said.replace("(", r"\(")) as info:
        records.review(space, refs, approve=approve, by_id=1, by_name="admin")
    assert "Nothing was changed" in str(info.value)
    assert decisions(space) == decisions_before
    assert status(space) == status_before and status(space)[pending] == "pending"


def approve_at_once(space: GuildSpace, ref: str, admins: int) -> list[str]:
    """``admins`` threads approve ``ref`` at the same moment; what each was told ("approved" or the refusal)."""
    start = threading.Barrier(admins)
    outcomes: list[str] = []

    def decide(who: int) -> None:
        start.wait()
        try:
            records.review(space, [ref], approve=True, by_id=who, by_name=f"admin{who}")
            outcomes.append("approved")
        except InvalidInput as exc:
            outcomes.append(str(exc))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(1, admins + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_two_admins_deciding_at_once_cannot_both_approve(space: GuildSpace) -> None:
    """Both read "pending" at the same moment: one decision is written, the other is refused, on either engine."""
    for _ in range(3):  # a few rounds: the race is real only when both start together
        ref = add(space, "q", "a", approved=False)
        outcomes = approve_at_once(space, ref, 2)
        refused = [o for o in outcomes if o != "approved"]
        assert outcomes.count("approved") == 1 and len(refused) == 1, outcomes
        assert refused[0].startswith(f"Correction `{ref}` is already approved."), outcomes
        with space.db.tx(write=False) as tx:
            assert tx.scalar("SELECT COUNT(*) FROM reviews r JOIN corrections c ON c.review_id = r.id "
                             "WHERE c.guild_id = ? AND c.ref = ?", (space.guild_id, ref)) == 1
        assert status(space)[ref] == "approved"
    assert len(decisions(space)) == 3


def test_other_servers_ids_are_unknown(space: GuildSpace, tmp_path) -> None:
    ref = add(space, "q", "a", approved=False)
    other = GuildSpace(space.guild_id + 1, tmp_path / "data", tmp_path / "corrections", space.db)
    with pytest.raises(InvalidInput, match="There is no correction"):
        records.review(other, [ref], approve=True, by_id=1, by_name="admin")
    assert decisions(other) == [] and decisions(space) == [] and status(space)[ref] == "pending"
    assert records.list_corrections(other) == [] and records.pending_corrections(other) == []


def test_old_records_without_status_count_as_approved(space: GuildSpace) -> None:
    """A corrections log from before the review queue (no status) is imported as approved."""
    from storage import append_record

    append_record(space.corrections / "corrections.jsonl",
                  {"ref": "C-123abc", "prompt": "q", "answer": "x", "correction": "y"})
    append_record(space.corrections / "corrections.jsonl",
                  {"ref": "C-456def", "prompt": "q2", "answer": "x", "correction": "z", "status": "pending"})
    import_legacy(space.db, space.data.parent, space.corrections.parent)
    assert status(space) == {"C-123abc": "approved", "C-456def": "pending"}
    assert records.list_corrections(space)[0].approved is True
    assert [c.ref for c in records.approved_corrections(space)] == ["C-123abc"]
