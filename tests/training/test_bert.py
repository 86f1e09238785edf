"""training/bert.py: the numpy BERT encoder's pieces (the whole model is checked against
transformers on the real weights in test_embedding.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import erf
from threadpoolctl import threadpool_info

from errors import BackendError
from training.bert import BATCH, BertConfig, _gelu_
from training.embedding import DEFAULT_EMBED_MODEL, TransformerEmbedder, load_embedder


@pytest.fixture(scope="module")
def minilm() -> TransformerEmbedder:
    emb = load_embedder(DEFAULT_EMBED_MODEL)
    assert isinstance(emb, TransformerEmbedder)
    return emb


def test_gelu_is_the_exact_erf_gelu() -> None:
    x = np.linspace(-8, 8, 100_001, dtype=np.float32)
    y = x.copy()
    _gelu_(y)
    exact = x.astype(np.float64) * 0.5 * (1 + erf(x.astype(np.float64) / math.sqrt(2)))
    assert y.dtype == np.float32 and np.abs(y - exact).max() < 2e-6


def test_config_parse_refuses_what_the_encoder_cannot_run() -> None:
    good = {"model_type": "bert", "hidden_size": 384, "num_attention_heads": 12, "num_hidden_layers": 6}
    c = BertConfig.parse(good, {"pooling_mode_cls_token": True})
    assert (c.layers, c.heads, c.hidden, c.cls_pooling, c.max_positions) == (6, 12, 384, True, 512)
    for bad, words in (({**good, "model_type": "xlm-roberta"}, "not supported"),
                       ({**good, "hidden_act": "relu"}, "only BERT with GELU"),
                       ({**good, "num_attention_heads": 7}, "not a multiple"),
                       ({k: v for k, v in good.items() if k != "hidden_size"}, "missing")):
        with pytest.raises(BackendError, match=words):
            BertConfig.parse(bad, None)


def test_many_texts_are_encoded_in_parallel_with_the_same_result(minilm: TransformerEmbedder) -> None:
    texts = [f"question number {i} about {'the office ' * (i % 7)}parking" for i in range(3 * BATCH + 5)]
    before = [(p["user_api"], p["num_threads"]) for p in threadpool_info()]
    together = minilm.encode(texts)
    one_by_one = np.concatenate([minilm.encode([t]) for t in texts[::17]])
    assert np.allclose(together[::17], one_by_one, atol=1e-5)
    assert [(p["user_api"], p["num_threads"]) for p in threadpool_info()] == before  # BLAS threads restored
    enc = minilm.encoder
    assert enc._parallel.acquire(blocking=False)  # another encode is running: this one goes one thread
    try:
        assert np.allclose(minilm.encode(texts), together, atol=1e-5)
    finally:
        enc._parallel.release()
