"""The evaluation gate end to end: !test cases become the server's evaluation set, a better training becomes
current, a deliberately worse one (contradicting answers) is kept as a candidate that !model can still switch to,
and EVAL_GATE=off switches to every new model."""

from __future__ import annotations

from config import Settings
from dataset import corrections as records
from sandbox.server import Sandbox
from tests.harness import (
    BotHarness,
    ErrorLog,
    announcement,
    confirmed,
    running_bot,
    space_of,
    start_job,
    wait_bot,
)
from training import evaluation

PAIRS = [(f"What is the code of room {n}?", f"Room {n} opens with code {1000 + n}.") for n in range(1, 11)]
TAUGHT = "\n".join(f"{q} => {a}" for q, a in PAIRS)


def cases(*pairs: tuple[str, str]) -> str:
    return "!test " + "\n".join('{"input": "%s", "expected": "%s"}' % pair for pair in pairs)


async def train(h: BotHarness, content: str = "!train") -> tuple[str, str, str]:
    """Train; (job id, announcement, final status message)."""
    job_id, status = await start_job(h, content)
    done = await announcement(h.sandbox, job_id, timeout=20)
    final = await wait_bot(h.sandbox, lambda m: m.id == status.id and "**succeeded**" in m.content)
    return job_id, done.content, final.content


async def test_a_worse_training_stays_a_candidate_and_a_better_one_becomes_current(harness: BotHarness) -> None:
    h = harness
    _, done, status = await train(h, f"!train {TAUGHT}")
    assert done.startswith("Training job `") and "I now answer with `local-v1`." in done
    # No !test yet; 10 pairs hold out the 10th (still trained on), scored with no older model to compare.
    assert "Held-out pairs (also trained on) (1 case): new 1/1 (100%)" in status
    assert "Evaluation set" not in status

    unknown = ("Which floor is the gym on?", "The gym is on floor 3.")
    said = await h.ask(cases(PAIRS[0], PAIRS[1], PAIRS[2], unknown), user="admin")
    assert said.startswith("**Accuracy: 75%** (3/4 correct)")
    # The mismatch becomes training data, so it stays out of the evaluation set: no model is scored on what it
    # was trained on.
    assert [c.input for c in evaluation.eval_set(space_of(h))] == [PAIRS[0][0], PAIRS[1][0], PAIRS[2][0]]
    assert [t.input for t in records.list_test_errors(space_of(h))] == [unknown[0]]

    # The mismatch the test kept is trained on, so the gym question is answered now.
    _, done, status = await train(h)
    assert "I now answer with `local-v2`." in done
    assert "Evaluation set (3 cases): new 3/3 (100%) vs `local-v1` 3/3 (100%)" in status
    assert await h.ask(unknown[0]) == unknown[1]
    # Passing it later does not bring it into the evaluation set either (it is trained on).
    assert (await h.ask(cases(unknown), user="admin")).startswith("**Accuracy: 100%**")
    assert len(evaluation.eval_set(space_of(h))) == 3

    # Worse: contradicting answers to two tested questions make the model unsure of both.
    wrong = "\n".join(f"{q} => Nobody knows the code of that room." for q, _ in PAIRS[:2])
    job3, done, status = await train(h, f"!train {wrong}")
    assert done.startswith(f"Training job `{job3}` succeeded, but `local-v3` scored worse than `local-v2` on this "
                           f"server's evaluation set (")
    assert done.endswith("the margin is 5 points), so I still answer with `local-v2`. It is kept as a "
                         "candidate: `!model local-v3` switches to it anyway.")
    assert "vs `local-v2` 3/3 (100%)" in status and ("Held back as a candidate: it scored more than 5 points worse "
                                                      "than `local-v2`") in status
    assert (await h.ask("!model")).startswith("Current model: `local-v2`")
    assert await h.ask(PAIRS[2][0]) == PAIRS[2][1]
    assert not list(space_of(h).heldout_dir.iterdir())  # held-out pairs go once their model is scored
    assert await h.ask("!model local-v3", user="admin") == "Switched to model `local-v3`."
    assert (await h.ask("!model")).startswith("Current model: `local-v3`")


async def test_eval_gate_off_switches_to_every_model(sandbox: Sandbox, settings: Settings, error_log: ErrorLog) -> None:
    async with running_bot(sandbox, settings, eval_gate=False) as h:  # as EVAL_GATE=off
        await train(h, f"!train {TAUGHT}")
        await h.ask(cases(PAIRS[0], PAIRS[1]), user="admin")
        wrong = "\n".join(f"{q} => Nobody knows the code of that room." for q, _ in PAIRS[:2])
        _, done, status = await train(h, f"!train {wrong}")
        assert "I now answer with `local-v2`." in done and "Evaluation" not in status and "Held-out" not in status


async def test_an_emptied_dataset_is_held_back_and_marked(harness: BotHarness) -> None:
    """The new user's case: `!forget @admin` empties the dataset, and the next training (one answer) must not go
    live; `!jobs` and `!model` show it held back, and `!model NAME` can still switch to it."""
    h = harness
    await train(h, f"!train {TAUGHT}")
    dialog, said_msg, *_ = await confirmed(h, f"!forget <@{h.sandbox.admin.id}>", user="owner")
    assert "This removes 10 examples" in dialog.content
    said = said_msg.content
    assert said.startswith("Forgot everything admin gave in this server:") and "10 examples" in said
    job2, done, status = await train(h, "!train Is it late? => It is late.")
    assert done == (f"Training job `{job2}` succeeded, but I held `local-v2` back: it was trained on 1 example, far "
                    f"fewer than the 10 of `local-v1`. I still answer with `local-v1`. It is kept as a candidate: "
                    f"`!model local-v2` switches to it anyway.")
    assert "Held back as a candidate: it was trained on 1 example, far fewer than the 10 of `local-v1`." in status
    assert await h.ask(PAIRS[3][0]) == PAIRS[3][1]  # the old model still answers
    jobs_said = await h.ask("!jobs")
    assert f"`{job2}` succeeded" in jobs_said and "→ `local-v2` — **held back**: it was trained on 1 example" \
        in jobs_said
    model_said = await h.ask("!model")
    assert model_said.startswith("Current model: `local-v1`")
    assert ("Held back by the evaluation gate: `local-v2` (it was trained on 1 example, far fewer than the 10 of "
            "`local-v1`); `!model local-v2` switches to it.") in model_said
    assert await h.ask("!model local-v2", user="admin") == "Switched to model `local-v2`."
    assert "held back" not in await h.ask("!jobs")  # it is current now


async def test_nothing_to_score_on_holds_back_all_but_the_first_model(harness: BotHarness) -> None:
    h = harness
    few = "\n".join(f"{q} => {a}" for q, a in PAIRS[:5])  # under 10 pairs: none held out
    _, done, status = await train(h, f"!train {few}")
    assert "I now answer with `local-v1`." in done  # a first model goes live: nothing answered before it
    assert "Evaluation: nothing to score on yet" in status and "Held back" not in status
    _, done, status = await train(h, f"!train {PAIRS[5][0]} => {PAIRS[5][1]}")
    assert "but I held `local-v2` back: there is nothing to score it on yet (no test cases, too few pairs to hold " \
           "out), and `local-v1` answers now. I still answer with `local-v1`." in done
    assert (await h.ask("!model")).startswith("Current model: `local-v1`")
