"""The local backend's answer rule: which trained (or corrected) answer a question gets, or "I don't know".

An exact (normalised) question gets its answer. With an embedding model, corrections and trained pairs
compete by meaning (``training.embedding.decide``: close enough, and clearly ahead of a different
answer), except that a question worded almost like a trained one (word matching ``VERBATIM``) gets that
answer; when unsure, the closest trained questions are offered instead. Without one, word matching
answers above ``MIN_SIMILARITY``, and corrections count only for the very same question.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from training.embedding import Embedder, decide, top_rows
from training.local.retrieval import LocalModel, norm_key

if TYPE_CHECKING:
    from training.local.overlay import Overlay

MIN_SIMILARITY = 0.3  # below this the closest example is about something else
SUGGEST = 2  # trained questions offered with a "don't know" (measured: the right one is among 2 in 8 of 10)
VERBATIM = 0.8  # word-matching similarity of a near-verbatim question: its trained answer, embeddings or not


def search(model: LocalModel | None, prompt: str, overlay: Overlay | None,
           emb: Embedder | None) -> tuple[tuple[str, int] | None, list[str]]:
    """(answer, source) for ``prompt`` (source 0 = trained, 1 = correction) or None for "don't know", and
    when it is None the trained questions worth suggesting instead; ``emb`` None: word matching."""
    found, offers = search_offers(model, prompt, overlay, emb)
    return found, [q for q, _ in offers]


def search_offers(model: LocalModel | None, prompt: str, overlay: Overlay | None,
                  emb: Embedder | None) -> tuple[tuple[str, int] | None, list[tuple[str, str]]]:
    """``search``, with each suggested question's answer: (question, answer) pairs, best first.

    Sync and CPU-bound: the backend runs it in a thread (with embeddings always, since embedding
    the question is a forward pass; word matching above ``backend.THREAD_ABOVE`` pairs).
    """
    key = norm_key(prompt)
    if overlay is not None and key in overlay.exact:
        return (overlay.answers[overlay.exact[key]], 1), []
    if emb is None or model is not None and model.vectors is None:
        # Word matching: corrections count only for the very same question.
        if model is None:
            return None, []
        if key in model.exact:
            return (model.answers[model.exact[key]], 0), []
        best, sim = model.nearest(prompt)
        return ((model.answers[best], 0) if best >= 0 and sim >= MIN_SIMILARITY else None), []
    query = emb.encode([prompt])[0]
    # Corrections and trained pairs compete in one list; a trained pair whose question was corrected
    # is superseded (dropped), so the correction is not measured against the answer it replaces.
    scored: list[tuple[float, str, int, str]] = []  # (score, answer, source, question)
    corrected = overlay.exact if overlay is not None else {}
    if overlay is not None and overlay.vectors is not None and len(overlay.prompts):
        rows, scores = top_rows(overlay.vectors, query)
        scored += [(float(sc), overlay.answers[r], 1, overlay.prompts[r]) for r, sc in zip(rows, scores)]
    if model is not None and model.vectors is not None:
        if key in model.exact:
            return (model.answers[model.exact[key]], 0), []
        # A question worded almost like a trained one: word matching tells near-identical trained
        # questions apart ("... number 17" vs "... number 1723") where an average of word vectors cannot.
        best, sim = model.nearest(prompt)
        if best >= 0 and sim >= VERBATIM and norm_key(model.prompts[best]) not in corrected:
            return (model.answers[best], 0), []
        rows, scores = top_rows(model.vectors, query)
        scored += [(float(sc), model.answers[r], 0, model.prompts[r]) for r, sc in zip(rows, scores)
                   if not corrected or norm_key(model.prompts[r]) not in corrected]
    if not scored:
        return None, []
    scored.sort(key=lambda c: -c[0])
    found = decide(np.arange(len(scored)), np.array([c[0] for c in scored]), [c[1] for c in scored],
                   emb.thresholds)
    if found.row is not None:
        return (scored[found.row][1], scored[found.row][2]), []
    return None, _suggestions(scored, emb.thresholds.suggest)


def _suggestions(scored: Sequence[tuple[float, str, int, str]], minimum: float | None) -> list[tuple[str, str]]:
    """Up to ``SUGGEST`` (question, answer) pairs (of different answers) scoring at least ``minimum``, best first."""
    if minimum is None:
        return []
    picked: list[tuple[str, str]] = []
    answers: set[str] = set()
    for score, answer, _, question in scored:  # sorted best first
        if score < minimum or len(picked) == SUGGEST:
            break
        if answer not in answers:
            answers.add(answer)
            picked.append((question, answer))
    return picked


def _short(question: str, limit: int = 120) -> str:
    """A trained question on one line, cut to ``limit`` characters, for a suggestion."""
    flat = " ".join(question.split())
    return flat if len(flat) <= limit else flat[:limit - 1].rstrip() + "…"


def correct_hint(prefix: str, reviewed: bool) -> str:
    """How to teach the right answer, for whoever reads it: with ``reviewed`` (REVIEW_CORRECTIONS) a member's
    correction waits for an admin's approval and an admin's counts at once."""
    how = (": an admin's correction counts at once, a member's once an admin approves it." if reviewed
           else " and I'll use it from now on.")
    return f"If you know the answer, reply to this message with `{prefix}correct <the right answer>`{how}"


def dont_know_offer(prefix: str, *, reviewed: bool = False) -> str:
    """The "I don't know" above an offer's buttons (one per question)."""
    return (f"I don't know that one yet. Did you mean one of these? Choose it below and I'll answer (and learn "
            f"your wording). {correct_hint(prefix, reviewed)}")


def dont_know(prefix: str, suggestions: Sequence[str] = (), *, reviewed: bool = False) -> str:
    """The honest "I don't know", offering the closest trained questions when there are some (``reviewed``: see
    :func:`correct_hint`)."""
    offer = ""
    if suggestions:
        quoted = " or ".join(f"“{_short(q)}”" for q in suggestions)
        offer = f" Did you mean {quoted}? Then ask me that."
    return f"I don't know that one yet.{offer} {correct_hint(prefix, reviewed)}"
