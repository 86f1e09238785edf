"""Grounded answers for the hf backend: the closest trained pairs go into the prompt, and the model is trained so.

A small generative model fine-tuned on Q&A pairs memorises them, but asked in other words it invents facts in
the trained style (measured: 2 right of 40 reworded questions, 38 wrong). So, before generating, the question
is matched against the version's trained pairs (and the server's counted corrections) with the same embedding
model the local backend uses (``training.embedding``), and the ``HF_GROUNDING_PAIRS`` closest are put in the
prompt as notes. Training uses the same format (retrieval-augmented fine-tuning, as in RAFT): every pair is
trained with its own pair among its nearest distractors, and ``HF_ABSTAIN_SHARE`` more examples whose notes do
not hold the answer are trained to reply :data:`ABSTAIN`, so the model learns to copy from its notes and to
say it does not know. Those examples ask questions that are not trained ones (:data:`UNRELATED`, with their
nearest pairs as notes): a trained question trained both ways taught the model to abstain on it. When the question is far from every pair the backend abstains without generating.

Light (numpy only): used by the bot process (retrieval, the training lines) and by the answer worker and the
trainer (the prompt format).
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from training.embedding import DISABLED, Embedder, decide, load_embedder, load_vectors, save_vectors, top_rows

if TYPE_CHECKING:
    from dataset.lines import ChatLine
    from training.local.overlay import Overlay

log = logging.getLogger(__name__)

ABSTAIN = "I don't know."  # what the model is trained to say when its notes do not hold the answer
PAIRS_FILE = "grounding.jsonl"  # a version's (and a run's) trained pairs, one [question, answer] a line
VECTOR_FILES = ("grounding.npy", "grounding.json")  # their search rows, and which embedding model made them
INSTRUCTION = ("Answer the question with the notes below, in the words of the note that answers it. If no note "
               f"answers it, reply exactly: {ABSTAIN}")
# Below this similarity to every pair (and correction) the question is about something else: abstain without
# generating. Low on purpose (the calibrated "suggest" floor of all-MiniLM-L6-v2): between it and the local
# backend's answer threshold the model reads the notes and decides.
FLOOR_SHARE = 0.6  # of the embedding model's min_score, when it has no suggest floor
INDEX_CACHE = 8  # versions whose search rows stay in memory
# The questions of the "I don't know" examples: everyday questions of a workplace, a club, a class, a shop, an
# IT desk, none of them a trained question. Asking a *trained* question with its pair left out of the notes (as
# RAFT does) taught a small model to abstain on that question whatever its notes held (measured: 16/25 trained
# questions right through the answer path, most misses "I don't know"); these teach abstaining only where the
# notes lack the answer. Written for the bot, never drawn from a benchmark set.
UNRELATED = (
    "Is there a dress code?", "Can I bring a guest?", "Where can I charge my phone?", "Is there a gym nearby?",
    "Who waters the plants?", "Can I work from a café?", "Where is the nearest pharmacy?",
    "What is the name of the building manager?", "Do we have a book club?", "Is there a microwave I can use?",
    "How do I book a meeting room?", "Where are the spare keyboards?", "Who organises the summer party?",
    "Can I get a second monitor?", "Is smoking allowed on the balcony?", "What is the fax number?",
    "Do we celebrate birthdays?", "Where do I leave lost property?", "Is there a quiet room?",
    "Can I listen to music while working?", "Who cleans the fridge?", "Where can I print in colour?",
    "Is there a discount for members?", "How do I join the newsletter?", "Do you ship abroad?",
    "Can I pay in instalments?", "What languages are the lessons in?", "Is there a mentoring programme?",
    "Where can I store my bicycle helmet?", "Who do I tell when a light bulb is broken?",
    "Is there a shuttle bus from the station?", "How loud may the radio be?", "Can I reserve a locker?",
    "Are there showers in the building?", "Do we have a company choir?", "Which airline do we fly with?",
    "Where is the first-aid kit?", "Is there a recycling bin for batteries?", "Can I change my desk?",
    "Who took the photos at the last event?", "Is there free parking on weekends?", "How old is the building?",
    "Do we have a mascot?", "Is the canteen open on holidays?", "Where do the fire wardens meet?",
    "Can I borrow a projector?", "Is there a table tennis table?", "What is the guest wifi called?",
)


class Grounding(TypedDict):
    """How a grounded training line was built (the trainer shrinks ``context`` when the line is too long)."""

    question: str
    context: list[list[str]]  # [question, answer] notes, in prompt order
    answer: str  # the target: a note's answer, or ABSTAIN


def user_message(question: str, context: Sequence[Sequence[str]]) -> str:
    """The user turn of a grounded prompt: the instruction, the notes, the question."""
    notes = "\n\n".join(f"Q: {q.strip()}\nA: {a.strip()}" for q, a in context)
    return f"{INSTRUCTION}\n\nNotes:\n{notes}\n\nQuestion: {question.strip()}"


def chat(system: str | None, question: str, context: Sequence[Sequence[str]], answer: str) -> ChatLine:
    """A grounded training line (the messages the model sees, and how they were built)."""
    messages: list[Any] = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user_message(question, context)},
                 {"role": "assistant", "content": answer}]
    grounding: Grounding = {"question": question, "context": [list(c) for c in context], "answer": answer}
    line: Any = {"messages": messages, "grounding": grounding}
    return line


def single_turn(line: ChatLine) -> tuple[str | None, str, str] | None:
    """(system, question, answer) of a one-question line, None for anything else (a conversation)."""
    msgs = [m for m in line.get("messages") or [] if isinstance(m, dict)]
    system = next((m.get("content") for m in msgs if m.get("role") == "system"), None)
    turns = [m for m in msgs if m.get("role") != "system"]
    if len(turns) != 2 or turns[0].get("role") != "user" or turns[1].get("role") != "assistant":
        return None
    q, a = turns[0].get("content"), turns[1].get("content")
    if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip():
        return None
    return (system if isinstance(system, str) and system.strip() else None), q, a


@dataclass
class RaftData:
    """Grounded training lines and what went into them."""

    lines: list[ChatLine]
    pairs: list[tuple[str, str]]  # the version's notes
    vectors: np.ndarray  # their search rows
    abstain: int  # examples trained to answer ABSTAIN
    plain: int  # lines kept as they were (conversations)


def raft_lines(lines: Sequence[ChatLine], embedder: Embedder, *, k: int, abstain_share: float,
               seed: int = 0) -> RaftData:
    """The training lines in the grounded format (sync, CPU: embeds every pair once).

    Each one-question pair is trained with itself among its ``k - 1`` nearest pairs of other answers (what
    retrieval will put beside it), in a random order; ``abstain_share`` x pairs more examples (at most
    ``len(UNRELATED)``) ask a question no pair answers with its nearest pairs as notes, answered ABSTAIN.
    Conversations stay as they are.
    """
    rng = random.Random(seed)
    singles: list[tuple[str | None, str, str]] = []
    out: list[ChatLine] = []
    for line in lines:
        one = single_turn(line)
        if one is None:
            out.append(line)
        else:
            singles.append(one)
    plain = len(out)
    seen: dict[tuple[str, str], int] = {}
    for _, q, a in singles:
        seen.setdefault((q.strip(), a.strip()), len(seen))
    pairs = list(seen)
    vectors = embedder.index_vectors([q for q, _ in pairs], [a for _, a in pairs])
    answers = [a for _, a in pairs]

    def neighbours(i: int, n: int) -> list[int]:
        """The ``n`` pairs closest to pair ``i`` whose answer differs from its answer."""
        rows, _ = top_rows(vectors, vectors[i], k=min(len(pairs), n + 16))
        near = [int(r) for r in rows if int(r) != i and answers[int(r)] != answers[i]][:n]
        if len(near) < n:  # a tiny set, or many pairs sharing one answer: fill at random
            rest = [j for j in range(len(pairs)) if j != i and answers[j] != answers[i] and j not in near]
            near += rng.sample(rest, min(n - len(near), len(rest)))
        return near

    for system, q, a in singles:
        i = seen[(q.strip(), a.strip())]
        context = [pairs[j] for j in neighbours(i, k - 1)] + [pairs[i]]
        rng.shuffle(context)
        out.append(chat(system, q, context, a))
    n_abstain = round(abstain_share * len(singles)) if len(pairs) > 1 else 0
    for question in _unanswered(embedder, pairs, vectors, n_abstain):
        rows, _ = top_rows(vectors, embedder.encode([question])[0], k=k)
        # What retrieval would put beside it: its nearest pairs, none of which answers it.
        out.append(chat(rng.choice(singles)[0] if singles else None, question,
                        [pairs[int(r)] for r in rows], ABSTAIN))
    rng.shuffle(out)
    return RaftData(out, pairs, vectors, sum(1 for line in out if _target(line) == ABSTAIN), plain)


def _unanswered(embedder: Embedder, pairs: Sequence[tuple[str, str]], vectors: np.ndarray, n: int) -> list[str]:
    """Up to ``n`` questions of :data:`UNRELATED` that no trained pair answers, the closest to the pairs first.

    "No pair answers it": retrieval is not sure of any pair (below the embedding model's calibrated answer
    score), and it is not a trained question. The closest first: those are the ones a model confuses with a
    pair it knows, where reading the notes matters.
    """
    if n <= 0 or not len(vectors):
        return []
    from training.local.retrieval import norm_key

    trained = {norm_key(q) for q, _ in pairs}
    asked = [q for q in UNRELATED if norm_key(q) not in trained]
    best = (embedder.encode(asked) @ vectors.T).max(axis=1)
    sure = embedder.thresholds.min_score
    kept = sorted((i for i in range(len(asked)) if best[i] < sure), key=lambda i: -best[i])
    return [asked[i] for i in kept[:n]]


def _target(line: ChatLine) -> str | None:
    g: Any = line.get("grounding")
    return g.get("answer") if isinstance(g, dict) else None


def save_pairs(folder: Path, pairs: Sequence[tuple[str, str]], vectors: np.ndarray, embedder: Embedder) -> None:
    """Write the notes and their search rows into a run (then version) folder."""
    from storage import atomic_write_text

    atomic_write_text(folder / PAIRS_FILE, "".join(json.dumps([q, a], ensure_ascii=False) + "\n" for q, a in pairs))
    save_vectors(folder, vectors, embedder, VECTOR_FILES)


def read_pairs(folder: Path) -> list[tuple[str, str]] | None:
    """A version's notes, None when it was trained without grounding."""
    try:
        text = (folder / PAIRS_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    pairs = []
    for raw in text.splitlines():
        if raw.strip():
            q, a = json.loads(raw)
            pairs.append((str(q), str(a)))
    return pairs


@dataclass
class Index:
    """A version's notes and their search rows."""

    pairs: list[tuple[str, str]]
    vectors: np.ndarray


@dataclass
class Retrieved:
    """What retrieval found for a question: the notes for the prompt (best first) and the best similarity."""

    context: list[tuple[str, str]]
    best: float
    offers: list[tuple[str, str]] = field(default_factory=list)  # pairs the asker may have meant, for an abstention
    # The note retrieval alone is sure of, by the local backend's own answer rule (the very question, or
    # ``training.embedding.decide`` with the embedding model's calibrated thresholds): its answer is the reply.
    sure: tuple[str, str] | None = None


class Retriever:
    """The embedding model (loaded once, on first use) and the versions' search rows (an LRU cache)."""

    def __init__(self, embed_model: str, k: int) -> None:
        self.embed_model = embed_model
        self.k = k
        self._lock = threading.Lock()
        self._embedder: Embedder | None = None
        self._tried = False
        self.error: str | None = None  # why there is no embedding model (then answers are ungrounded)
        self._indexes: dict[tuple[str, float], Index] = {}

    def embedder(self) -> Embedder | None:
        """The embedding model, loaded on first use (sync: ~90 MB read); None when it cannot be loaded."""
        if self._tried:
            return self._embedder
        with self._lock:
            if not self._tried:
                if self.embed_model.lower() in DISABLED:
                    self.error = "EMBED_MODEL is off"
                else:
                    try:
                        self._embedder = load_embedder(self.embed_model)
                    except Exception as exc:  # any failure to load means: answer ungrounded
                        self.error = f"EMBED_MODEL={self.embed_model} could not be loaded: {exc}"
                        log.warning("%s; hf answers are not grounded", self.error)
                self._tried = True
        return self._embedder

    def index(self, folder: Path) -> Index | None:
        """A version's notes and search rows (sync), None when it was trained without grounding."""
        emb = self.embedder()
        if emb is None:
            return None
        try:
            key = (str(folder), (folder / PAIRS_FILE).stat().st_mtime)
        except FileNotFoundError:
            return None
        with self._lock:
            cached = self._indexes.get(key)
        if cached is not None:
            return cached
        pairs = read_pairs(folder) or []
        vectors = load_vectors(folder, emb, len(pairs), VECTOR_FILES)
        if vectors is None:  # made by another embedding model: embed again (kept in memory only)
            vectors = emb.index_vectors([q for q, _ in pairs], [a for _, a in pairs])
        index = Index(pairs, np.asarray(vectors))
        with self._lock:
            self._indexes[key] = index
            while len(self._indexes) > INDEX_CACHE:
                self._indexes.pop(next(iter(self._indexes)))
        return index

    def floor(self) -> float:
        """The similarity under which a question matches no pair."""
        emb = self.embedder()
        if emb is None:
            return 0.0
        t = emb.thresholds
        return t.suggest if t.suggest is not None else FLOOR_SHARE * t.min_score

    def retrieve(self, index: Index, question: str, overlay: Overlay | None = None) -> Retrieved:
        """The ``k`` closest notes (counted corrections first among equals; a corrected question's trained
        pair is left out), best first (sync: embeds the question)."""
        emb = self.embedder()
        assert emb is not None  # index() returned one
        from training.local.retrieval import norm_key

        query = emb.encode([question])[0]
        scored: list[tuple[float, int, str, str]] = []  # (score, source: 0 correction / 1 trained, q, a)
        corrected: set[str] = set()
        if overlay is not None and overlay.vectors is not None and len(overlay.prompts):
            corrected = set(overlay.exact)
            rows, scores = top_rows(overlay.vectors, query)
            scored += [(float(s), 0, overlay.prompts[r], overlay.answers[r]) for r, s in zip(rows, scores)]
        # More rows than the notes: the answer rule measures the best against the best *different* answer.
        rows, scores = top_rows(index.vectors, query)
        scored += [(float(s), 1, *index.pairs[r]) for r, s in zip(rows, scores)
                   if norm_key(index.pairs[r][0]) not in corrected]
        scored.sort(key=lambda c: (-c[0], c[1]))
        top = scored[: self.k]
        floor = self.floor()
        offers: list[tuple[str, str]] = []
        for score, _, q, a in top:  # up to two of different answers, close enough to offer
            if score >= floor and len(offers) < 2 and all(a != b for _, b in offers):
                offers.append((q, a))
        return Retrieved([(q, a) for _, _, q, a in top], top[0][0] if top else 0.0, offers,
                         _sure(question, scored, emb))


def _sure(question: str, scored: Sequence[tuple[float, int, str, str]], emb: Embedder) -> tuple[str, str] | None:
    """The local backend's answer rule (``training.local.answer``) on the retrieved rows: the very question (a
    correction before a trained pair), else the best row when ``decide`` trusts it with the embedding model's
    calibrated thresholds; None when retrieval is unsure."""
    from training.local.retrieval import norm_key

    key = norm_key(question)
    exact = next(((q, a) for _, _, q, a in sorted(scored, key=lambda c: c[1]) if norm_key(q) == key), None)
    if exact is not None:
        return exact
    if not scored:
        return None
    found = decide(np.arange(len(scored)), np.array([c[0] for c in scored]), [c[3] for c in scored],
                   emb.thresholds)
    return (scored[found.row][2], scored[found.row][3]) if found.row is not None else None
