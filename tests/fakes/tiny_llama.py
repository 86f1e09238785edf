"""A tiny chat model built on the spot, for the hf backend's tests and benchmark (no download).

A byte-level BPE tokenizer trained with ``tokenizers`` on generated sentences, a ChatML chat
template, and a ~450k-parameter ``LlamaConfig`` model, saved with ``save_pretrained`` so the product
loads it through its real loading code, by path.

Warm-up: measured here, LoRA (r=16, lr 5e-3, linear decay, 80 steps) makes the *randomly initialised*
model answer 6/6 taught questions word for word, while the same model warmed up for 30-300 steps on
generated chats got 0-5/6 in as many steps (its sharper attention resists a small adapter). So the
default is no warm-up (``warm_steps=0``); ``warm_steps`` trains the whole model first on generated chats
whose answers reuse words of their questions, if a test wants a model that knows the template.

``python -m tests.fakes.tiny_llama FOLDER`` builds one by hand.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "the a an is are was on in at of to for with by from and or but not this that it they we you he she time day "
    "week year room floor door key card desk chair lamp book plan team work home car bus train bike road city park "
    "shop store food tea coffee milk bread water fruit lunch dinner morning evening night monday tuesday friday "
    "fridays sunday one two three four five nine ten twelve first second last next open opens close start stop ask "
    "tell give take make find keep help use need want like know see go come get put run read write meeting office "
    "manager server password login page link fridge kitchen basement rack holiday days payroll finance admin dog "
    "dogs welcome every fresh half past yes no where when who what how can do does i my your our their bring reset "
    "wifi am pm alice bob carol tuesday green blue red"
).split()
WARM_STEPS = 0
WARM_BATCH = 16


def corpus(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Generated single-turn chats; each answer reuses some words of its question."""
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        qw = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        aw = rng.sample(qw, rng.randint(1, len(qw))) + [rng.choice(WORDS) for _ in range(rng.randint(0, 4))]
        rng.shuffle(aw)
        chats.append([{"role": "user", "content": " ".join(qw).capitalize() + "?"},
                      {"role": "assistant", "content": " ".join(aw).capitalize() + "."}])
    return chats


def build_tiny_llama(folder: Path, *, seed: int = 0, warm_steps: int = WARM_STEPS) -> Path:
    """Train the tokenizer, warm the model up and save both into ``folder``; returns ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    started = time.monotonic()
    torch.manual_seed(seed)
    chats = corpus(3000, seed)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [m["content"] for chat in chats for m in chat] + WORDS,
        trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL, show_progress=False,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>")
    hf_tok.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=hf_tok.pad_token_id, eos_token_id=hf_tok.eos_token_id, bos_token_id=None,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    encoded = [hf_tok(hf_tok.apply_chat_template(c, tokenize=False), add_special_tokens=False)["input_ids"]
               for c in chats]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(warm_steps):
        batch = rng.sample(encoded, WARM_BATCH)
        width = max(map(len, batch))
        ids = torch.full((WARM_BATCH, width), hf_tok.pad_token_id)
        labels = torch.full((WARM_BATCH, width), -100)
        for i, e in enumerate(batch):
            ids[i, :len(e)] = torch.tensor(e)
            labels[i, :len(e)] = torch.tensor(e)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.generation_config.eos_token_id = hf_tok.eos_token_id
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    log.info("tiny llama built in %.1f s (%d params, warm-up loss %.2f)", time.monotonic() - started,
             sum(p.numel() for p in model.parameters()), float(loss.detach()))
    return folder


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    build_tiny_llama(Path(sys.argv[1]))
