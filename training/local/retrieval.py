"""Word matching for the local backend: TF-IDF rows over hashed word 1-2-grams and char 2-4-grams.

:class:`LocalModel` is a loaded version: its TF-IDF index of the trained questions (an inverted index
finds the candidates, the best few are scored exactly), their sentence vectors when an embedding model
made them, and the classifier of labelled texts. :func:`pairs_from` takes the (question, answer) pairs
out of a compiled dataset. Hashed features need no vocabulary on disk.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize

if TYPE_CHECKING:
    from dataset.compile import Compiled
    from training.embedding import Embedder

N_FEATURES = 2**20  # per analyzer; hashed, so no vocabulary has to be stored
CANDIDATE_POSTING_LIMIT = 2_000  # postings longer than this (and than 1% of prompts) are skipped
TOP_K = 16  # candidates scored exactly

_WORD = HashingVectorizer(
    analyzer="word", ngram_range=(1, 2), n_features=N_FEATURES, alternate_sign=False, norm=None,
    token_pattern=r"(?u)\b\w+\b", strip_accents="unicode",
)
_CHAR = HashingVectorizer(
    analyzer="char_wb", ngram_range=(2, 4), n_features=N_FEATURES, alternate_sign=False, norm=None,
    strip_accents="unicode",
)


# ---------------------------------------------------------------- features

def count_features(texts: Sequence[str]) -> list[sp.csr_matrix]:
    return [_WORD.transform(texts).tocsr(), _CHAR.transform(texts).tocsr()]


def fit_idf(counts: sp.csr_matrix) -> np.ndarray:
    """Smoothed idf like scikit-learn's; 0 for features never seen (they are ignored)."""
    n = counts.shape[0]
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    idf = np.zeros(counts.shape[1], dtype=np.float32)
    seen = df > 0
    idf[seen] = np.log((1 + n) / (1 + df[seen])) + 1
    return idf


def weigh(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    m = counts.astype(np.float32, copy=True)
    m.data = (1.0 + np.log(m.data)) * idf[m.indices]
    m.eliminate_zeros()
    return normalize(m, copy=False)


def features(texts: Sequence[str], idfs: Sequence[np.ndarray]) -> sp.csr_matrix:
    parts = [weigh(c, idf) for c, idf in zip(count_features(texts), idfs)]
    # Each part has unit norm; scaling by 1/sqrt(2) keeps the whole row unit norm (cosine = dot).
    return (sp.hstack(parts, format="csr") * (1 / math.sqrt(2))).astype(np.float32)


def _query(text: str, idfs: Sequence[np.ndarray]) -> sp.csr_matrix:
    """The feature row of one text, like ``features`` but without its per-call overhead (hot path)."""
    idx_parts, val_parts = [], []
    for offset, (vec, idf) in enumerate(zip((_WORD, _CHAR), idfs)):
        c = vec.transform([text])
        w = (1.0 + np.log(c.data.astype(np.float32))) * idf[c.indices]
        keep = w != 0
        w = w[keep]
        norm = float(np.sqrt(np.dot(w, w)))
        if norm:
            idx_parts.append(c.indices[keep].astype(np.int64) + offset * N_FEATURES)
            val_parts.append(w / (norm * math.sqrt(2)))
    if not idx_parts:
        return sp.csr_matrix((1, 2 * N_FEATURES), dtype=np.float32)
    idx = np.concatenate(idx_parts)
    val = np.concatenate(val_parts).astype(np.float32)
    order = np.argsort(idx)
    return sp.csr_matrix((val[order], idx[order], np.array([0, len(idx)])), shape=(1, 2 * N_FEATURES))


def _rows_dot(mat: sp.csr_matrix, cols: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """``mat @ q`` for a sparse q given as sorted (cols, vals), without scipy's O(features) transposes."""
    if not mat.nnz or not len(cols):
        return np.zeros(mat.shape[0], dtype=np.float64)
    pos = np.searchsorted(cols, mat.indices)
    pos[pos >= len(cols)] = 0
    hit = cols[pos] == mat.indices
    contrib = np.where(hit, mat.data * vals[pos], 0.0)
    rows = np.repeat(np.arange(mat.shape[0]), np.diff(mat.indptr))
    return np.bincount(rows, weights=contrib, minlength=mat.shape[0])


def norm_key(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


# ---------------------------------------------------------------- data from the compiled dataset

def pairs_from(compiled: Compiled) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from chat lines and DPO preferred outputs; later duplicates win."""
    found: list[tuple[str, str]] = []
    for line in compiled.supervised:
        last_user: str | None = None
        for msg in line.get("messages") or []:
            role, content = msg.get("role"), msg.get("content")
            if not isinstance(content, str) or not content.strip():
                continue
            if role == "user":
                last_user = content
            elif role == "assistant" and last_user:
                found.append((last_user, content))
    for pair in compiled.preference:
        users = [content for m in (pair.get("input") or {}).get("messages") or []
                 if m.get("role") == "user" and isinstance(content := m.get("content"), str)]
        preferred = [content for m in pair.get("preferred_output") or [] if isinstance(content := m.get("content"), str)]
        if users and preferred:
            found.append((users[-1], preferred[0]))
    # Corrections come after the data they correct, so the last answer for a prompt wins.
    latest: dict[str, tuple[str, str]] = {}
    for prompt, answer in found:
        key = norm_key(prompt)
        latest.pop(key, None)
        latest[key] = (prompt, answer)
    return list(latest.values())


# ---------------------------------------------------------------- a trained version

@dataclass
class LocalModel:
    """A loaded version: what answering needs, nothing else."""

    name: str
    idfs: list[np.ndarray]
    index: sp.csr_matrix | None  # rows = prompts
    answers: list[str]
    prompts: list[str]
    classes: list[str]
    coef: sp.csr_matrix | None  # (n_classes or 1) x features
    intercept: np.ndarray | None
    vectors: np.ndarray | None = None  # sentence embeddings of the pairs (rows = prompts), None: word matching
    # The model that made ``vectors`` when it is not the backend's (a quick first stage, ``training.local.fit``):
    # questions are embedded with it and its own calibrated thresholds decide.
    embedder: Embedder | None = None

    def __post_init__(self) -> None:
        # Column-major copy = an inverted index: feature -> (prompts having it, weights).
        self.postings = self.index.tocsc() if self.index is not None else None
        # Exact questions always get their trained answer, whatever the scores say.
        self.exact = {norm_key(p): i for i, p in enumerate(self.prompts)}

    def nearest(self, text: str) -> tuple[int, float]:
        """Index and cosine similarity of the closest trained prompt.

        Candidates come from the query's rarer features (features present in most prompts cost the
        most and say the least); the best few are then scored exactly, so the similarity is exact.
        """
        if self.index is None or self.postings is None or not self.answers:
            return -1, 0.0
        q = _query(text, self.idfs)
        if not q.nnz:
            return -1, 0.0
        n = len(self.answers)
        indptr, indices, data = self.postings.indptr, self.postings.indices, self.postings.data
        cols, vals = q.indices, q.data
        lens = indptr[cols + 1] - indptr[cols]
        keep = lens <= max(CANDIDATE_POSTING_LIMIT, n // 100)
        if not keep.any():
            keep[:] = True
        rows = [indices[indptr[c]:indptr[c + 1]] for c in cols[keep]]
        weights = [data[indptr[c]:indptr[c + 1]] * v for c, v in zip(cols[keep], vals[keep])]
        if not rows or not sum(len(r) for r in rows):
            return -1, 0.0
        approx = np.bincount(np.concatenate(rows), weights=np.concatenate(weights), minlength=n)
        # Partition only the touched prompts: argpartition over a mostly-zero array is very slow.
        touched = np.flatnonzero(approx)
        k = min(TOP_K, len(touched))
        if len(touched) > k:
            cand = touched[np.argpartition(approx[touched], len(touched) - k)[len(touched) - k:]]
        else:
            cand = touched
        exact = _rows_dot(self.index[cand], cols, vals)
        best = int(exact.argmax())
        return int(cand[best]), float(exact[best])

    def label(self, text: str) -> str | None:
        if self.coef is None or self.intercept is None:
            return None
        q = _query(text, self.idfs)
        scores = _rows_dot(self.coef, q.indices, q.data) + self.intercept
        if len(self.classes) == 2:  # binary SGD keeps one row: positive score -> classes[1]
            return self.classes[1] if scores[0] > 0 else self.classes[0]
        return self.classes[int(scores.argmax())]
