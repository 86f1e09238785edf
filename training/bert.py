"""A BERT sentence encoder in numpy: enough of a transformer to embed sentences without torch.

It runs the encoder of a Hugging Face ``BertModel`` checkpoint (``config.json`` +
``model.safetensors`` + ``tokenizer.json``, the layout of sentence-transformers models such as
all-MiniLM-L6-v2) and pools the last hidden states into one unit vector per text (mean pooling,
or the [CLS] token when the model's ``1_Pooling/config.json`` says so). The maths is the post-norm
BERT block with exact (erf) GELU, the same as transformers' ``BertModel`` in eval mode; the test
suite compares the two on the real weights.

Why not torch: it would add ~1.5 GB to the default install to run a 22M-parameter model whose
forward pass is a handful of matrix products per layer; numpy's BLAS does those well enough here
(~230 short pairs of ~27 tokens a second on two cores, 10 ms for one question on one core). The
matrix products run at the float32 peak of a core (~95 GFLOPS here) and take ~80% of the time, GELU
~12%; torch's float32 is only ~12% faster. What would go faster is fewer bits per multiply (bf16,
int8), not another float32 runtime: see the README (Models, local).
Nothing here imports discord; it is sync and CPU-bound: callers run it in a worker thread.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from errors import BackendError

MAX_TOKENS = 128  # a question with its answer fits; longer texts are cut (attention is quadratic)
BATCH = 32  # texts per forward pass, sorted by length so padding stays small (32: a few % faster than 64)
COUNT_BATCH = 4_096  # texts tokenized at once to count their tokens
MAX_THREADS = 4  # encoding threads for many texts (one per core, up to this)


@dataclass(frozen=True)
class BertConfig:
    layers: int
    heads: int
    hidden: int
    eps: float
    max_positions: int
    cls_pooling: bool

    @classmethod
    def parse(cls, config: Mapping[str, object], pooling: Mapping[str, object] | None) -> BertConfig:
        if config.get("model_type") != "bert":
            raise BackendError(f"model_type {config.get('model_type')!r} is not supported (BERT encoders only).")
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
            raise BackendError("only BERT with GELU and absolute positions is supported.")
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])  # type: ignore[call-overload]
            layers = int(config["num_hidden_layers"])  # type: ignore[call-overload]
            positions = int(config.get("max_position_embeddings", 512))  # type: ignore[call-overload]
            eps = float(config.get("layer_norm_eps", 1e-12))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"config.json is missing or has a bad {exc}.") from None
        if hidden % heads:
            raise BackendError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}.")
        cls_pooling = bool(pooling and pooling.get("pooling_mode_cls_token"))
        return cls(layers, heads, hidden, eps, positions, cls_pooling)


class BertEncoder:
    """Embeds texts with a BERT checkpoint: ``encode(texts)`` → float32 unit vectors (one row each)."""

    def __init__(self, config: BertConfig, weights: Mapping[str, np.ndarray], tokenizer: object) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.dim = config.hidden
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.threads = min(MAX_THREADS, cores)
        self._parallel = threading.Lock()
        try:
            self._load(weights)
        except KeyError as exc:
            raise BackendError(f"the weights have no tensor {exc}: not a BERT checkpoint.") from None

    def _load(self, weights: Mapping[str, np.ndarray]) -> None:
        def get(name: str) -> np.ndarray:
            # sentence-transformers checkpoints say "embeddings.…"; BertForX ones say "bert.embeddings.…".
            t = weights[name] if name in weights else weights[f"bert.{name}"]
            return np.ascontiguousarray(t, dtype=np.float32)

        c = self.config
        self.word = get("embeddings.word_embeddings.weight")
        self.position = get("embeddings.position_embeddings.weight")
        self.token_type = get("embeddings.token_type_embeddings.weight")[0]
        self.norm0 = (get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"))
        if self.word.shape[1] != c.hidden:
            raise BackendError(f"word embeddings are {self.word.shape[1]}-d but hidden_size is {c.hidden}.")
        self.layers = []
        for i in range(c.layers):
            p = f"encoder.layer.{i}."
            # Query, key and value in one (hidden, 3*hidden) matrix: one product instead of three.
            qkv_w = np.concatenate([get(p + f"attention.self.{n}.weight") for n in ("query", "key", "value")]).T
            qkv_b = np.concatenate([get(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")])
            self.layers.append((
                np.ascontiguousarray(qkv_w), qkv_b,
                np.ascontiguousarray(get(p + "attention.output.dense.weight").T), get(p + "attention.output.dense.bias"),
                (get(p + "attention.output.LayerNorm.weight"), get(p + "attention.output.LayerNorm.bias")),
                np.ascontiguousarray(get(p + "intermediate.dense.weight").T), get(p + "intermediate.dense.bias"),
                np.ascontiguousarray(get(p + "output.dense.weight").T), get(p + "output.dense.bias"),
                (get(p + "output.LayerNorm.weight"), get(p + "output.LayerNorm.bias")),
            ))

    @classmethod
    def from_files(cls, config_json: str, weights: Mapping[str, np.ndarray], tokenizer_json: str,
                   pooling_json: str | None = None) -> BertEncoder:
        """Build from the texts of config.json / tokenizer.json (and 1_Pooling/config.json) plus the tensors."""
        from tokenizers import Tokenizer

        try:
            config = BertConfig.parse(json.loads(config_json), json.loads(pooling_json) if pooling_json else None)
            tokenizer = Tokenizer.from_str(tokenizer_json)
        except ValueError as exc:  # bad JSON, or a tokenizer file tokenizers cannot read
            raise BackendError(f"config or tokenizer unreadable ({exc}).") from None
        tokenizer.no_padding()
        tokenizer.enable_truncation(min(MAX_TOKENS, config.max_positions))
        return cls(config, weights, tokenizer)

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """How many tokens each text is encoded as ([CLS] and [SEP] included, cut at ``MAX_TOKENS``)."""
        counts = np.zeros(len(texts), dtype=np.int64)
        for start in range(0, len(texts), COUNT_BATCH):  # in blocks: an encoding holds much more than its ids
            encs = self.tokenizer.encode_batch(list(texts[start:start + COUNT_BATCH]))  # type: ignore[attr-defined]
            counts[start:start + len(encs)] = [len(e.ids) for e in encs]
        return counts

    def encode(self, texts: Sequence[str], check: Callable[[], None] | None = None) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in the order given.

        Many texts (a training) are split over one thread per core, each with a single-threaded
        BLAS: numpy's element-wise steps (GELU, softmax, layer norm) use one core, so this embeds
        ~25% more texts a second on two cores than one thread with a two-threaded BLAS.
        ``check`` is called before every layer of every batch (a few tenths of a second apart): a
        training's cancel raises there, so it stops within one layer.
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encs = self.tokenizer.encode_batch(list(texts))  # type: ignore[attr-defined]
        order = np.argsort([len(e.ids) for e in encs], kind="stable")
        batches = [order[start:start + BATCH] for start in range(0, len(order), BATCH)]

        def run(rows: np.ndarray) -> np.ndarray:
            width = max(len(encs[i].ids) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.float32)
            for r, i in enumerate(rows):
                n = len(encs[i].ids)
                ids[r, :n] = encs[i].ids
                mask[r, :n] = 1.0
            return self._forward(ids, mask, check)

        threads = min(self.threads, len(batches))
        # One parallel encode at a time: the BLAS limit is process-wide, and two overlapping ones
        # could restore each other's limits in the wrong order.
        if threads > 1 and self._parallel.acquire(blocking=False):
            try:
                with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
                    for rows, vectors in zip(batches, pool.map(run, batches)):
                        out[rows] = vectors
            finally:
                self._parallel.release()
        else:
            for rows in batches:
                out[rows] = run(rows)
        return out

    def _forward(self, ids: np.ndarray, mask: np.ndarray, check: Callable[[], None] | None = None) -> np.ndarray:
        c = self.config
        b, t = ids.shape
        h, d = c.heads, c.hidden // c.heads
        x = self.word[np.clip(ids, 0, len(self.word) - 1)] + self.position[:t] + self.token_type
        # Tokens of the whole batch as one (b*t, hidden) matrix: one big matrix product per weight.
        x = _layer_norm(x, *self.norm0, c.eps).reshape(b * t, c.hidden)
        # Padding positions get -inf-like scores so no token attends to them.
        pad = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(d))
        for qkv_w, qkv_b, o_w, o_b, norm1, i_w, i_b, f_w, f_b, norm2 in self.layers:
            if check is not None:
                check()
            qkv = (x @ qkv_w + qkv_b).reshape(b, t, 3, h, d)
            q = qkv[:, :, 0].transpose(0, 2, 1, 3)
            k = qkv[:, :, 1].transpose(0, 2, 3, 1)
            v = qkv[:, :, 2].transpose(0, 2, 1, 3)
            scores = (q @ k) * scale + pad
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(b * t, c.hidden)
            x = _layer_norm(context @ o_w + o_b + x, *norm1, c.eps)
            inner = x @ i_w + i_b
            _gelu_(inner)
            x = _layer_norm(inner @ f_w + f_b + x, *norm2, c.eps)
        x = x.reshape(b, t, c.hidden)
        if c.cls_pooling:
            pooled = x[:, 0]
        else:
            pooled = (x * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


def _gelu_(x: np.ndarray) -> None:
    """x <- x * (1 + erf(x / sqrt 2)) / 2 in place, float32.

    erf to within 1.5e-7 (Abramowitz & Stegun 7.1.26), computed in place on two buffers: scipy's erf
    took 40% of a forward pass here, this takes a fifth of that.
    """
    f = np.float32
    a = np.abs(x)
    a *= f(1 / math.sqrt(2))
    t = a * f(0.3275911)
    t += f(1.0)
    np.reciprocal(t, out=t)
    poly = t * f(1.061405429)
    for coef in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += f(coef)
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a  # 1 - erf(|x| / sqrt 2)
    np.subtract(f(1.0), poly, out=poly)  # erf(|x| / sqrt 2)
    np.copysign(poly, x, out=poly)
    poly += f(1.0)
    poly *= f(0.5)
    x *= poly


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(eps)) * weight + bias
