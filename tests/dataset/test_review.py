"""The review queue of corrections (dataset/corrections.py): states, decisions, refusals, what compiles."""

from __future__ import annotations

import pytest

from dataset import corrections as records
from dataset.compile import compile_guild
from errors import InvalidInput
from storage import GuildSpace, read_records


def add(space: GuildSpace, prompt: str, fix: str, *, approved: bool) -> str:
    return records.add_correction(space, message_id=1, prompt=prompt, answer="wrong", correction=fix,
                                  author_id=7, author_name="member", channel_id=2, source_message_id=3,
                                  approved=approved)["ref"]


def status(space: GuildSpace) -> dict[str, str]:
    return {c["ref"]: c["status"] for c in records.list_corrections(space)}


def test_pending_until_approved_and_only_approved_compile(space: GuildSpace) -> None:
    pending = add(space, "When do you open?", "At nine.", approved=False)
    trusted = add(space, "Where are you?", "Main street.", approved=True)
    assert status(space) == {pending: "pending", trusted: "approved"}
    assert [c["ref"] for c in records.pending_corrections(space)] == [pending]
    trained = [line["messages"][-1]["content"] for line in compile_guild(space, min_examples=1).supervised]
    assert trained == ["Main street."]

    before = records.review(space, [pending.lower()], approve=True, by_id=1, by_name="admin")
    assert [c["status"] for c in before] == ["pending"]
    assert status(space)[pending] == "approved" and not records.pending_corrections(space)
    trained = [line["messages"][-1]["content"] for line in compile_guild(space, min_examples=1).supervised]
    assert sorted(trained) == ["At nine.", "Main street."]


def test_reject_keeps_it_out_and_reason_is_stored(space: GuildSpace) -> None:
    a, b = add(space, "q1", "a1", approved=False), add(space, "q2", "a2", approved=False)
    records.review(space, [a, b.removeprefix("C-")], approve=False, by_id=1, by_name="admin", reason="spam")
    assert status(space) == {a: "rejected", b: "rejected"}
    event = read_records(space.reviews_file).records[-1]
    assert event["refs"] == [a, b] and event["reason"] == "spam" and event["by_name"] == "admin"
    assert compile_guild(space, min_examples=1).supervised == []
    # A rejected one may still be approved (the admin changed their mind): the latest decision wins.
    records.review(space, [a], approve=True, by_id=1, by_name="admin")
    assert status(space) == {a: "approved", b: "rejected"}


@pytest.mark.parametrize("case", ["unknown", "approve_twice", "reject_approved", "reject_twice", "bad_id",
                                  "mixed"])
def test_refusals_change_nothing(space: GuildSpace, case: str) -> None:
    pending = add(space, "q", "a", approved=False)
    approved = add(space, "q2", "a2", approved=True)
    rejected = add(space, "q3", "a3", approved=False)
    records.review(space, [rejected], approve=False, by_id=1, by_name="admin")
    log_before = space.reviews_file.read_bytes()
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
    assert space.reviews_file.read_bytes() == log_before
    assert status(space)[pending] == "pending"


def test_other_servers_ids_are_unknown(space: GuildSpace, tmp_path) -> None:
    ref = add(space, "q", "a", approved=False)
    other = GuildSpace(space.guild_id + 1, tmp_path / "data", tmp_path / "corrections")
    with pytest.raises(InvalidInput, match="There is no correction"):
        records.review(other, [ref], approve=True, by_id=1, by_name="admin")
    assert not other.reviews_file.exists() and status(space)[ref] == "pending"


def test_old_records_without_status_count_as_approved(space: GuildSpace) -> None:
    from storage import append_record
    append_record(space.corrections_file, {"ref": "C-123abc", "prompt": "q", "answer": "x", "correction": "y"})
    assert records.list_corrections(space)[0]["approved"] is True
