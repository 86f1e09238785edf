"""Grounded answers and "train until learned" for the hf backend, on the tiny Llama built on the spot (``tiny_base``).

One grounded training covers: the RAFT lines (each pair among its neighbours, "I don't know" examples) in the run's
train.jsonl, the notes saved with the version, the retrieved pair in the prompt the model saw, a question about
nothing trained abstaining with the local backend's "I don't know", the job saying which condition ended it, and an
empty answer skipped with a line. Then: no embedding model (ungrounded, and ``!model``'s line says so) and the
notes that give way to HF_MAX_SEQ_LENGTH.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from config import Settings
from errors import InvalidInput
from storage import GuildSpace
from tests.fakes.samples import FAQ, compiled
from tests.training.test_hf import hf_settings, run_to_end
from training import hf_ground
from training.hf import HFBackend
from training.hf_ground import ABSTAIN, user_message
from training.status import render_status

TAUGHT = FAQ[:6]


@pytest.fixture
def space(settings: Settings) -> GuildSpace:
    return GuildSpace(43, settings.data_dir, settings.corrections_dir).ensure()


def grounded(settings: Settings, base: Path, **extra: str) -> Settings:
    # A fixed number of steps on the tiny model (it cannot learn to read notes in seconds); the recall check
    # runs once the loss target is reached and the job says what ended it.
    env = {"HF_GROUNDING": "on", "HF_EPOCHS": "1", "HF_LOSS_TARGET": "100", "HF_RECALL_TARGET": "0.95",
           "HF_MAX_SEQ_LENGTH": "512", "HF_ABSTAIN_SHARE": "0.5"}
    return hf_settings(settings, base, **(env | extra))


async def test_grounded_training_and_answers(settings: Settings, tiny_base: Path, space: GuildSpace,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    backend = HFBackend(grounded(settings, tiny_base))
    try:
        data = compiled(TAUGHT + [("What is the printer called?", "  ")])
        job = await backend.start_job(space, data, method="supervised", suffix="t")
        assert "Skipped 1 example(s) with an empty answer" in job.events
        assert any(e.startswith("Grounded training: 6 pair(s)") for e in job.events), job.events

        # The training data: every pair with its own pair among the notes, and "I don't know" examples (RAFT).
        run = space.models / ".runs" / job.id
        lines = [json.loads(raw) for raw in (run / "train.jsonl").read_text().splitlines()]
        answers = [ln["grounding"]["answer"] for ln in lines]
        assert sorted(a for a in answers if a != ABSTAIN) == sorted(a for _, a in TAUGHT)
        assert answers.count(ABSTAIN) == 3
        # The "I don't know" examples ask questions no pair answers, never a trained question (which would
        # teach the model to abstain on it whatever its notes hold).
        trained = {q for q, _ in TAUGHT}
        abstained = [ln["grounding"]["question"] for ln in lines if ln["grounding"]["answer"] == ABSTAIN]
        assert abstained and set(abstained) <= set(hf_ground.UNRELATED) and not set(abstained) & trained
        for ln in lines:
            g = ln["grounding"]
            held = [a for _, a in g["context"]]
            assert len(g["context"]) == 3 and (g["answer"] in held) == (g["answer"] != ABSTAIN), g
            assert ln["messages"][-2]["content"] == user_message(g["question"], g["context"])

        job = await run_to_end(backend, space, job, timeout=120)
        assert job.status == "succeeded", job
        # The loss target (100) is reached at once, so recall is checked after each epoch; the tiny model does
        # not learn to read in an epoch, so it runs them all, and says so.
        assert any("recall check" in e for e in job.events), job.events
        assert job.note and job.note.startswith("Skipped 1 example(s) with an empty answer. Grounded training: "
                                                "6 pair(s)"), job.note
        assert "Training ran all 1 epoch (HF_EPOCHS); the last recall check got the key facts of" in job.note
        assert job.note in render_status(job)  # the status message says which condition ended it
        version = space.models / str(job.model)
        assert (version / hf_ground.PAIRS_FILE).is_file() and (version / hf_ground.VECTOR_FILES[0]).is_file()

        # Retrieval sure of a pair (the local backend's rule): the pair's own answer, without generating.
        real_generate = backend.generator.generate
        asked = spy_on(backend)
        assert await backend.answer(space, job.model, "at what time does the shop open?", ()) == TAUGHT[0][1]
        assert asked == [] and backend.paths["retrieved"] == 1
        # Retrieval unsure (between the suggestion floor and the answer score): the generator reads the notes,
        # the right pair among them.
        unsure = "can I come by early?"
        await backend.answer(space, job.model, unsure, ())
        seen = asked[-1]
        assert seen["context"][0] == TAUGHT[0] and seen["notes"] == 3
        assert f"Q: {TAUGHT[0][0]}\nA: {TAUGHT[0][1]}" in seen["prompt"]
        assert f"Question: {unsure}" in seen["prompt"]

        # What the model writes must be what a note says: an invented fact becomes the honest "I don't know".
        spy_on(backend, canned=True, text="The shop opens at 7 am.")
        invented = await backend.reply(space, job.model, unsure, ())
        assert invented.text.startswith("I don't know that one yet. Did you mean “When does the shop open?”")
        assert invented.offers[0] == TAUGHT[0] and invented.offer_text.startswith("I don't know that one yet.")
        spy_on(backend, canned=True, text="It opens at 9 am.")
        assert await backend.answer(space, job.model, unsure, ()) == "It opens at 9 am."
        # A note's answer, but not the closest note's: the model and retrieval disagree, so neither is trusted.
        other = seen["context"][1][1]
        assert other != TAUGHT[0][1]
        spy_on(backend, canned=True, text=other)
        disagreed = await backend.reply(space, job.model, unsure, ())
        assert disagreed.text.startswith("I don't know that one yet.") and disagreed.offers[0] == TAUGHT[0]
        spy_on(backend, canned=True, text="I don't know.")
        assert (await backend.answer(space, job.model, unsure, ())).startswith("I don't know")
        backend.generator.generate = real_generate  # type: ignore[method-assign]

        # A question about nothing it was taught: the same "I don't know" as the local backend, without generating.
        n = len(asked)
        reply = await backend.answer(space, job.model, "Explain quantum chromodynamics in detail.", ())
        assert reply.startswith("I don't know that one yet.") and len(asked) == n
        line = backend.describe()
        assert line.startswith("grounded: finds the 3 trained pairs") and "only when retrieval is unsure" in line
        assert "given only when it says what the closest pair says" in line
        p = backend.paths
        assert p["retrieved"] == 1 and p["generated"] >= 1 and p["dont_know"] >= 3, p
        assert (f"Answers since the bot started: 1 from retrieval, {p['generated']} generated, {p['dont_know']} "
                "\"I don't know\".") in line, line
        # HF_RETRIEVAL_FIRST=off: even a sure question is generated from the notes.
        backend.settings = dataclasses.replace(backend.settings, hf_retrieval_first=False)
        asked = spy_on(backend, canned=True, text="The shop opens at 9 am.")
        assert await backend.answer(space, job.model, "at what time does the shop open?", ()) == TAUGHT[0][1]
        assert len(asked) == 1 and "only when retrieval is unsure" not in backend.describe()
    finally:
        await backend.close()

    # No embedding model (its files gone): the grounded version answers ungrounded, and !model's line says so.
    monkeypatch.setattr(hf_ground, "load_embedder", broken)
    backend = HFBackend(grounded(settings, tiny_base))
    try:
        line = backend.describe()
        assert line.startswith("grounding is unavailable (EMBED_MODEL=") and "answers ungrounded" in line, line
        asked = spy_on(backend, canned=True)  # the worker itself was checked above
        await backend.answer(space, job.model, TAUGHT[0][0], ())
        assert asked[-1]["context"] is None
    finally:
        await backend.close()


def broken(spec: str) -> object:
    raise OSError("the model.zip is missing")


def spy_on(backend: HFBackend, canned: bool = False, text: str = "The shop opens at 9 am.") -> list[dict]:
    """What the answer worker was asked and answered (its reply holds the prompt as the model saw it); ``canned``:
    a fixed reply instead of the worker's."""
    asked: list[dict] = []
    real = backend.generator.generate

    async def spy(**kw: object) -> dict:
        reply = {"text": text} if canned else await real(**kw)  # type: ignore[arg-type]
        asked.append({**reply, "context": kw["context"]})
        return reply  # type: ignore[return-value]

    backend.generator.generate = spy  # type: ignore[method-assign,assignment]
    return asked


async def test_every_answer_empty_is_refused(settings: Settings, tiny_base: Path, space: GuildSpace) -> None:
    backend = HFBackend(grounded(settings, tiny_base))
    try:
        with pytest.raises(InvalidInput, match="Every example has an empty answer"):
            await backend.start_job(space, compiled([("Where?", ""), ("When?", " ")]), method="supervised",
                                    suffix="t")
    finally:
        await backend.close()


def test_notes_give_way_to_the_sequence_limit(tiny_base: Path) -> None:
    """An example too long with its notes is trained with fewer; one too long alone is cut, and both are counted."""
    from training.hf_model import load_tokenizer
    from training.hf_store import BaseSpec
    from training.hf_train import supervised_dataset

    tok = load_tokenizer(BaseSpec.parse(str(tiny_base)))
    long_note = ("Where is the basement?", "The basement is below the kitchen " * 12)
    fits = hf_ground.chat(None, "When does the shop open?", [long_note, TAUGHT[0], long_note], TAUGHT[0][1])
    huge = hf_ground.chat(None, "Tell me all.", [("Tell me all.", "all the words " * 200)], "all the words " * 200)
    sup = supervised_dataset(tok, [fits, huge], 200)
    # The huge one is cut before its answer starts: nothing of it is left to learn.
    assert (sup.shortened, sup.truncated, len(sup.data)) == (1, 1, 1)
    assert len(sup.recall) == 1 and sup.recall[0][1] == TAUGHT[0][1]  # a cut answer cannot be checked


def test_learned_says_which_condition_ended_training() -> None:
    """The stopping rules without a model: the loss target alone, the time budget, all epochs."""
    from training.hf_train import Learned

    said: list[str] = []
    loss_only = Learned(None, [([1], "x")], loss_target=0.1, recall_target=0, time_budget=60, max_epochs=5)
    assert not loss_only.after_epoch(None, 1, 0.5, said.append)
    assert loss_only.after_epoch(None, 2, 0.05, said.append) and said == []
    assert loss_only.at_end() == "Training ended after epoch 2: its mean loss 0.050 reached HF_LOSS_TARGET (0.1)."
    timed = Learned(None, [([1], "x")], loss_target=0.1, recall_target=0.95, time_budget=60, max_epochs=5)
    assert not timed.over_budget(59.9) and timed.over_budget(60)
    assert timed.at_end() == ("Training ended at its time budget (HF_TIME_BUDGET=60 s); the loss never reached "
                              "HF_LOSS_TARGET (0.1), so recall was not checked.")
    assert Learned(None, [], loss_target=0.1, recall_target=0.95, time_budget=60, max_epochs=5).at_end() == (
        "Training ran all 5 epochs (HF_EPOCHS); the loss never reached HF_LOSS_TARGET (0.1), so recall was not "
        "checked.")
