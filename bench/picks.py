"""Measure "Did you mean" buttons and learning from picks on the paraphrase sets (tests/fakes/paraphrases).

Each set has two reworded questions per trained pair ("wording A" and "wording B"), never the trained wording,
and questions the pairs do not answer. For each set, through the real local backend (``reply_sync``: what the
chat shows), the corrections/picks overlay and the records of ``dataset.picks``:

1. before any pick: every reworded question (A and B) is answered right directly, right after one click (the
   offer's buttons hold the question meant), wrong, or neither (no answer, and no button holds it);
2. the asker of each wording A clicks the button of the question meant whenever it is offered, and a second
   member does the same (PICKS_TO_LEARN=2: the pick counts without an admin);
3. after the picks are counted: the same wordings A asked again, and wordings B (never picked: does learning
   one wording help another?), and the unanswerable questions (does learning make it answer what it should
   not?). Then the same with the roles of A and B swapped, on a fresh database.

Run: ``.venv/bin/python bench/picks.py [EMBED_MODEL]``. Prints the figures; nothing is asserted. The
thresholds in use were calibrated on the tuning sets; ``course`` is held out (never used to choose anything).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.calibrate import ParaphraseSet, load_sets  # noqa: E402
from config import Settings  # noqa: E402
from dataset import picks  # noqa: E402
from records.db import Database  # noqa: E402
from storage import GuildSpace  # noqa: E402
from training.embedding import DEFAULT_EMBED_MODEL, load_embedder  # noqa: E402
from training.local import LocalBackend, LocalModel, load_version, train_version  # noqa: E402

ASKER, SECOND = 1001, 1002


@dataclass
class Tally:
    asked: int = 0
    right: int = 0  # answered right directly
    click: int = 0  # not answered; a button holds the question meant
    wrong: int = 0  # answered with another question's answer
    neither: int = 0  # not answered, and no button holds the question meant

    def line(self) -> str:
        n = max(self.asked, 1)
        return (f"right {self.right:3}/{self.asked} ({100 * self.right / n:4.0f}%)  one click {self.click:3} "
                f"({100 * self.click / n:3.0f}%)  right within one click {self.right + self.click:3} "
                f"({100 * (self.right + self.click) / n:3.0f}%)  wrong {self.wrong:2}  neither {self.neither:3}")


def wordings(s: ParaphraseSet) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(wording A of each pair, wording B of each pair), in the file's order."""
    first: dict[str, str] = {}
    second: dict[str, str] = {}
    for q, pid in s.paraphrases:
        (second if pid in first else first)[pid] = q
    return [(first[p], p) for p in s.ids if p in first], [(second[p], p) for p in s.ids if p in second]


def ask(backend: LocalBackend, model: LocalModel, space: GuildSpace, s: ParaphraseSet,
        questions: list[tuple[str, str]]) -> tuple[Tally, list[tuple[str, str, int]]]:
    """Ask each question as the chat does; the tally and, for each offer holding the question meant,
    (asked text, pair id, the button's index)."""
    overlay = backend._overlays.build(space)
    t = Tally()
    clickable: list[tuple[str, str, int]] = []
    for q, pid in questions:
        t.asked += 1
        reply = backend.reply_sync(model, q, overlay)
        meant = s.pairs[s.ids.index(pid)][0]
        if not reply.offers and not reply.text.startswith("I don't know"):
            if reply.text == s.answer_of(pid):
                t.right += 1
            else:
                t.wrong += 1
            continue
        hit = next((i for i, (question, _) in enumerate(reply.offers) if question == meant), None)
        if hit is None:
            t.neither += 1
        else:
            t.click += 1
            clickable.append((q, pid, hit))
    return t, clickable


def unanswerable_answered(backend: LocalBackend, model: LocalModel, space: GuildSpace, s: ParaphraseSet) -> int:
    overlay = backend._overlays.build(space)
    return sum(not backend.reply_sync(model, q, overlay).text.startswith("I don't know") for q in s.unanswerable)


def run(s: ParaphraseSet, backend: LocalBackend, tmp: Path, picked: list[tuple[str, str]],
        other: list[tuple[str, str]], label: str) -> None:
    db = Database.open(None, tmp / f"{s.name}-{label}")
    db.migrate()
    space = GuildSpace(1, tmp / f"{s.name}-{label}" / "data", tmp / f"{s.name}-{label}" / "corr", db).ensure()
    name = train_version(space, s.pairs, [], job_id="bench", method="supervised", embedder=backend.embedder())
    model = load_version(space, name, backend.embedder())
    before_p, clickable = ask(backend, model, space, s, picked)
    before_o, _ = ask(backend, model, space, s, other)
    unans_before = unanswerable_answered(backend, model, space, s)
    overlay = backend._overlays.build(space)
    counted = 0
    for q, pid, _ in clickable:
        meant = s.pairs[s.ids.index(pid)][0]
        for member in (ASKER, SECOND):
            reply = backend.reply_sync(model, q, overlay)
            index = next((i for i, (question, _) in enumerate(reply.offers) if question == meant), None)
            if index is None:  # once the first pick counts, the wording is answered: no offer to click
                break
            offer = picks.add_offer(space, channel_id=1, author_id=member, author_name=f"m{member}", prompt=q,
                                    prompt_message_id=None, options=reply.offers, model="bench", minutes=60)
            counted += picks.choose(space, offer.id, index, user_id=member, user_name=f"m{member}", trusted=False,
                                    picks_to_learn=2).counted
    after_p, _ = ask(backend, model, space, s, picked)
    after_o, _ = ask(backend, model, space, s, other)
    unans_after = unanswerable_answered(backend, model, space, s)
    db.close()
    print(f"  picks on wording {label[0]} ({len(clickable)} clicked by 2 members each; {counted} counted):")
    print(f"    wording {label[0]} before: {before_p.line()}")
    print(f"    wording {label[0]} after:  {after_p.line()}")
    print(f"    wording {label[1]} before: {before_o.line()}   (never picked)")
    print(f"    wording {label[1]} after:  {after_o.line()}")
    print(f"    unanswerable questions answered: {unans_before}/{len(s.unanswerable)} before, "
          f"{unans_after}/{len(s.unanswerable)} after")


def main(argv: list[str]) -> int:
    spec = argv[0] if argv else DEFAULT_EMBED_MODEL
    embedder = load_embedder(spec)
    backend = LocalBackend(Settings(), embed_model=spec)
    backend._embedder, backend._embed_tried = embedder, True
    print(f"{spec}, thresholds {embedder.thresholds} (calibrated on the tuning sets); PICKS_TO_LEARN=2")
    total = Tally()
    with tempfile.TemporaryDirectory() as tmp:
        for s in load_sets():
            a, b = wordings(s)
            print(f"{s.name} ({s.role}): {len(s.pairs)} pairs, {len(a) + len(b)} reworded questions, "
                  f"{len(s.unanswerable)} unanswerable")
            db = Database.open(None, Path(tmp) / f"{s.name}-all")
            db.migrate()
            space = GuildSpace(1, Path(tmp) / f"{s.name}-all" / "d", Path(tmp) / f"{s.name}-all" / "c", db).ensure()
            name = train_version(space, s.pairs, [], job_id="bench", method="supervised", embedder=embedder)
            everything, _ = ask(backend, load_version(space, name, embedder), space, s, a + b)
            db.close()
            print(f"  before any pick, all reworded questions: {everything.line()}")
            for k in ("asked", "right", "click", "wrong", "neither"):
                setattr(total, k, getattr(total, k) + getattr(everything, k))
            run(s, backend, Path(tmp), a, b, "AB")
            run(s, backend, Path(tmp), b, a, "BA")
    print(f"all sets, before any pick: {total.line()}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(sys.argv[1:]))
