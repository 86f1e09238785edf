"""dataset/compile.py: dataset + corrections + !test mismatches compiled into training lines."""

from __future__ import annotations

from dataset import check
from dataset import compile as compiler
from dataset import corrections as records
from dataset import folder as dataset_folder
from dataset.corrections import TestError
from storage import GuildSpace
from tests.fakes.samples import codes


def test_compile_with_corrections_makes_dpo(space: GuildSpace) -> None:
    examples = "\n".join(f"question {i} => answer {i}" for i in range(8)) + "\nnice text"
    dataset_folder.ingest_text(space, examples, author="ann")
    # A bad answer stored as a negative example, with a good one for the same prompt.
    dataset_folder.ingest_text(space, "question 1 => wrong answer", author="ann", positive=False)
    dataset_folder.ingest_text(space, "unmatched => bad", author="ann", positive=False)
    dataset_folder.update_state(space, system_prompt="You are helpful.")
    for i in range(3):
        records.add_correction(
            space,
            message_id=i,
            prompt=f"asked {i}",
            answer=f"bot said {i}",
            correction=f"should be {i}",
            author_id=1,
            author_name="ann",
            channel_id=2,
        )
    records.add_test_errors(space, [TestError("test q", "test a", "test wrong")])
    compiled = compiler.compile_guild(space)
    assert len(compiled.supervised) == 8 + 1 + 3 + 1
    assert compiled.labelled == [("nice text", "positive")]
    for line in compiled.supervised:
        assert line["messages"][0] == {"role": "system", "content": "You are helpful."}
    corrected = [line for line in compiled.supervised if line["messages"][1]["content"] == "asked 0"]
    assert corrected[0]["messages"][2] == {"role": "assistant", "content": "should be 0"}
    assert len(compiled.preference) == 3 + 1 + 1
    dpo = compiled.preference[0]
    assert dpo["input"]["messages"] == [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "asked 0"},
    ]
    assert dpo["preferred_output"] == [{"role": "assistant", "content": "should be 0"}]
    assert dpo["non_preferred_output"] == [{"role": "assistant", "content": "bot said 0"}]
    neg = [p for p in compiled.preference if p["non_preferred_output"][0]["content"] == "wrong answer"]
    assert neg and neg[0]["preferred_output"][0]["content"] == "answer 1"
    assert compiled.report.ok, compiled.report.format()
    assert (None, "negative_without_positive") in codes(compiled.report.warnings)
    assert compiled.preference_report is not None
    assert (None, "too_few_examples") in codes(compiled.preference_report.errors)  # only 5 pairs
    blob = compiler.to_jsonl(compiled.supervised)
    assert blob.endswith(b"\n") and len(blob.splitlines()) == len(compiled.supervised)
    assert check.check_lines(blob.splitlines()).ok


def test_compile_corrected_answer_replaces_dataset_example(space: GuildSpace) -> None:
    dataset_folder.ingest_text(space, "\n".join(f"q{i} => a{i}" for i in range(12)), author="ann")
    records.add_correction(
        space,
        message_id=1,
        prompt="q3",
        answer="a3",
        correction="better a3",
        author_id=1,
        author_name="ann",
        channel_id=2,
    )
    compiled = compiler.compile_guild(space)
    answers = [line["messages"][-1]["content"] for line in compiled.supervised]
    assert "a3" not in answers and "better a3" in answers
    assert len(compiled.preference) == 1


def test_compile_empty_guild_reports_too_few(space: GuildSpace) -> None:
    compiled = compiler.compile_guild(space)
    assert compiled.supervised == [] and compiled.preference == [] and compiled.preference_report is None
    assert not compiled.report.ok
    assert codes(compiled.report.errors) == [(None, "too_few_examples")]


def test_train_from_chat_off_leaves_members_corrections_out(space: GuildSpace) -> None:
    """TRAIN_FROM_CHAT=off: admins' uploads and !test cases stay; a member's correction is left out, and said so."""
    dataset_folder.ingest_text(space, "\n".join(f"q{i} => a{i}" for i in range(10)), author="admin (1)")
    records.add_correction(space, message_id=5, prompt="asked by a member", answer="bot said", correction="member fix",
                           author_id=2, author_name="member", channel_id=3)
    records.add_test_errors(space, [TestError("test q", "test a", "test wrong")])

    def questions(compiled: compiler.Compiled) -> set[str]:
        return {str(line["messages"][-2]["content"]) for line in compiled.supervised}

    everything = compiler.compile_guild(space)
    assert {"asked by a member", "test q", "q0"} <= questions(everything)
    assert compiler.LEFT_OUT_FROM_CHAT not in {w.code for w in everything.report.warnings}
    off = compiler.compile_guild(space, chat=False)
    assert "asked by a member" not in questions(off) and {"test q", "q0"} <= questions(off)
    assert "member fix" not in compiler.to_jsonl(off.supervised).decode()
    [note] = [w for w in off.report.warnings if w.code == compiler.LEFT_OUT_FROM_CHAT]
    assert note.message.startswith("1 member correction(s) left out of training (TRAIN_FROM_CHAT is off)")
    assert [c.correction for c in records.approved_corrections(space)] == ["member fix"]  # still a record
