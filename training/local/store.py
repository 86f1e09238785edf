"""A local version on disk: ``models/local-v<N>/``, numbered and renamed into place by ``training.versions``.

Files: ``answers.json`` (the trained prompt/answer pairs), ``idf.npz`` and ``index.npz`` (word matching),
``embeddings.npy`` + ``embedding.json`` (sentence vectors, with the model that made them; while a big
training's full vectors are still being made, ``quick-embeddings.npy`` + ``quick-embedding.json`` hold a
quick model's instead, see ``training.local.fit``),
``classifier.npz`` + ``classifier.json`` (labelled texts) and ``meta.json``. Only ``.npz``/``.npy``/JSON,
loaded with ``allow_pickle=False``: a file dropped into the data folder cannot run code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from storage import atomic_write_json
from training.embedding import QUICK_VECTORS, Embedder, load_vectors, save_vectors
from training.local.retrieval import N_FEATURES, LocalModel
from training.versions import Versions

if TYPE_CHECKING:
    from storage import GuildSpace

log = logging.getLogger(__name__)

VERSIONS = Versions("local-v", "a local model name")


def version_numbers(space: GuildSpace) -> list[int]:
    """Numbers of the finished local versions on disk, ascending."""
    return VERSIONS.numbers(space.models)


def load_version(space: GuildSpace, name: str, embedder: Embedder | None = None,
                 quick: Callable[[], Embedder | None] | None = None) -> LocalModel:
    """Load a version from disk (sync; run in a thread).

    With an ``embedder``, the saved sentence vectors are used when that model made them; a version
    trained before embeddings (or with another ``EMBED_MODEL``) is embedded again here, once. A version
    whose full vectors are still being made answers with its quick stage's vectors and model (``quick``
    loads that model), never by embedding here: that is the training's work.
    """
    meta = VERSIONS.read_meta(space.models, name)
    folder = space.models / name
    with np.load(folder / "idf.npz", allow_pickle=False) as z:
        idfs = [_dense_idf(z["w_idx"], z["w_val"]), _dense_idf(z["c_idx"], z["c_val"])]
    pairs = json.loads((folder / "answers.json").read_text(encoding="utf-8"))
    index = sp.load_npz(folder / "index.npz").tocsr() if pairs else None
    coef = intercept = None
    classes: list[str] = []
    if (folder / "classifier.json").is_file():
        info = json.loads((folder / "classifier.json").read_text(encoding="utf-8"))
        classes = list(info["classes"])
        intercept = np.asarray(info["intercept"], dtype=np.float32)
        coef = sp.load_npz(folder / "classifier.npz").tocsr()
    prompts, answers = [p["prompt"] for p in pairs], [p["answer"] for p in pairs]
    vectors = None
    made_by = None  # the model of the vectors, when it is not ``embedder``
    if embedder is not None and pairs:
        vectors = load_vectors(folder, embedder, len(pairs))
        stage = quick() if vectors is None and quick is not None and (folder / QUICK_VECTORS[0]).is_file() else None
        if stage is not None:
            vectors = load_vectors(folder, stage, len(pairs), QUICK_VECTORS)
            made_by = stage if vectors is not None else None
        if vectors is None:
            log.info("%s of guild %s has no %s vectors: embedding its %d pairs now", name, space.guild_id,
                     embedder.name, len(pairs))
            vectors = embedder.index_vectors(prompts, answers)
            try:  # kept with the version, so the next start (or a retrain) does not embed them again
                save_vectors(folder, vectors, embedder)
            except OSError as exc:
                log.warning("%s of guild %s: the new vectors could not be saved (%s); they are used from memory",
                            name, space.guild_id, exc)
    how = "word matching"
    if vectors is not None and embedder is not None:
        how = f"{(made_by or embedder).name} embeddings" + (" (quick stage)" if made_by else "")
    log.info("loaded %s for guild %s (%d pairs, %d labels, %s)", name, space.guild_id, meta.get("pairs"),
             len(classes), how)
    return LocalModel(name, idfs, index, answers, prompts, classes, coef, intercept, vectors, made_by)



def write_version(
    folder: Path,
    pairs: list[tuple[str, str]],
    idfs: list[np.ndarray],
    index: sp.csr_matrix | None,
    *,
    vectors: np.ndarray | None = None,
    embedder: Embedder | None = None,
    classifier: tuple[sp.csr_matrix, np.ndarray, list[str]] | None = None,
) -> None:
    """Write a version's files but meta.json into ``folder`` (``VERSIONS.claim`` adds it); ``load_version``
    reads them. ``classifier`` is (coefficients, intercepts, labels)."""
    w_idx, w_val = _sparse_idf(idfs[0])
    c_idx, c_val = _sparse_idf(idfs[1])
    np.savez(folder / "idf.npz", w_idx=w_idx, w_val=w_val, c_idx=c_idx, c_val=c_val)
    atomic_write_json(folder / "answers.json", [{"prompt": p, "answer": a} for p, a in pairs])
    if index is not None:
        sp.save_npz(folder / "index.npz", index)
    if vectors is not None and embedder is not None:
        save_vectors(folder, vectors, embedder)
    if classifier is not None:
        coef, intercept, labels = classifier
        sp.save_npz(folder / "classifier.npz", coef)
        atomic_write_json(folder / "classifier.json", {"classes": labels, "intercept": intercept.tolist()})


def previous_vectors(space: GuildSpace, embedder: Embedder) -> tuple[np.ndarray | None, dict[tuple[str, str], int]]:
    """The vectors of the newest version this embedder indexed (mapped from its file, not read into memory)
    and their row of each (prompt, answer): a retrain reuses them.

    A transformer embeds ~220 pairs a second here, so re-embedding 10k unchanged pairs for every
    ``!train`` would take more than a minute; the vectors of a pair only depend on its text and the model.
    """
    for number in reversed(version_numbers(space)):
        folder = space.models / VERSIONS.name(number)
        try:
            pairs = json.loads((folder / "answers.json").read_text(encoding="utf-8"))
            vectors = load_vectors(folder, embedder, len(pairs), mmap=True)
        except (OSError, ValueError):
            continue
        if vectors is not None:
            return vectors, {(p["prompt"], p["answer"]): i for i, p in enumerate(pairs)}
    return None, {}


def reuse_vectors(pairs: list[tuple[str, str]], known: dict[tuple[str, str], np.ndarray],
                  dim: int) -> tuple[np.ndarray, list[int]]:
    """Vectors for ``pairs`` with the ``known`` rows filled in, and the indexes still to embed."""
    vectors = np.zeros((len(pairs), dim), dtype=np.float32)
    todo = []
    for i, pair in enumerate(pairs):
        row = known.get(pair)
        if row is None:
            todo.append(i)
        else:
            vectors[i] = row
    return vectors, todo



def _sparse_idf(idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.flatnonzero(idf).astype(np.int64)
    return idx, idf[idx]


def _dense_idf(idx: np.ndarray, val: np.ndarray) -> np.ndarray:
    idf = np.zeros(N_FEATURES, dtype=np.float32)
    idf[idx] = val
    return idf


EXPORT_README = """# Local model `{name}` (trainer bot, local backend)

A retrieval model: it answers a question with the trained answer whose question is closest in meaning.

- `answers.json`: the trained pairs, a JSON list of {{"prompt", "answer"}} (in the order of the vectors).
- `embeddings.npy` + `embedding.json`: one sentence vector per pair (float32, L2-normalised) and the embedding
  model that made them (`{embed}`); embed a new question with the same model and take the pair with the highest
  dot product.
- `idf.npz`, `index.npz`: the word-matching index used without an embedding model (scipy sparse).
- `classifier.npz` + `classifier.json`: the label classifier, when the data had labelled texts.
- `meta.json`: how it was trained.

Serving it elsewhere, in Python:

    import json, numpy as np
    pairs = json.load(open("answers.json"))
    vectors = np.load("embeddings.npy", allow_pickle=False)
    # query = the normalised vector of a question, made by the model named in embedding.json
    best = int(np.argmax(vectors @ query)); print(pairs[best]["answer"])

Corrections approved after this training are not in these files: `!export data` exports them with the dataset.
"""


def export_version(space: GuildSpace, name: str, target: Path) -> Path:
    """Zip a version's files (pairs, vectors, indexes, meta) with a README on using them elsewhere (sync)."""
    import zipfile

    from storage import atomic_open

    VERSIONS.read_meta(space.models, name)  # NotFound for a name that is not a finished version
    folder = space.models / name
    info = folder / "embedding.json"
    embed = json.loads(info.read_text(encoding="utf-8")).get("model", "?") if info.is_file() else "none"
    with atomic_open(target) as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
                zf.write(path, f"{name}/{path.name}")
        zf.writestr(f"{name}/README.md", EXPORT_README.format(name=name, embed=embed))
    return target
