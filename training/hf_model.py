"""Loading the base model and turning chats into tokens: shared by the trainer and the answer worker.

Heavy (torch, transformers): imported only inside the child processes of the hf backend, never by
the bot process itself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, TypedDict

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from training.hf_store import BaseSpec

log = logging.getLogger(__name__)


@dataclass
class Device:
    """Where the model runs and how people are told about it."""

    torch_device: str  # "cuda" or "cpu"
    label: str  # e.g. "GPU (NVIDIA H200)" or "CPU (2 threads)"
    dtype: torch.dtype


def pick_device(wanted: str = "auto", threads: int = 0) -> Device:
    """``auto``: the GPU when torch sees one, the CPU otherwise; ``threads`` caps CPU threads (0: torch's)."""
    if threads > 0:
        torch.set_num_threads(threads)
    if wanted in ("auto", "cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        count = torch.cuda.device_count()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        label = f"GPU ({name}{f' x{count}' if count > 1 else ''})"
        return Device("cuda", label, dtype)
    if wanted == "cuda":
        log.warning("HF_DEVICE=cuda but torch sees no GPU; using the CPU")
    return Device("cpu", f"CPU ({torch.get_num_threads()} threads)", torch.float32)


def load_tokenizer(spec: BaseSpec) -> PreTrainedTokenizerBase:
    kwargs: dict[str, Any] = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    tok = AutoTokenizer.from_pretrained(spec.source, **kwargs)
    if tok.pad_token is None:
        # Padding is masked out of the loss and attention; any known token will do.
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"the base model {spec.label} has no chat template; use an instruct/chat model")
    return tok


def load_base(spec: BaseSpec, device: Device) -> PreTrainedModel:
    """The base model on ``device`` (an HF id is downloaded to the normal HF cache on first use).

    A ``.gguf`` file is dequantised by transformers (needs the ``gguf`` package) into ``device.dtype``.
    """
    kwargs: dict[str, Any] = {"dtype": device.dtype}
    if spec.gguf_file:
        kwargs["gguf_file"] = spec.gguf_file
    if spec.kind == "hub" and not os.environ.get("HF_HUB_OFFLINE"):
        log.info("loading %s (downloaded to the Hugging Face cache on first use)", spec.source)
    model = AutoModelForCausalLM.from_pretrained(spec.source, **kwargs)
    if spec.gguf_file:
        # The weights are plain tensors now, but the model still says "GGUF-quantized", which the Trainer
        # refuses to train (and peft would save as such): drop the marks of a quantization that is gone.
        # torch's stubs type Module.__setattr__ for tensors and submodules only; any value works at run time.
        model.hf_quantizer = None  # type: ignore[assignment]
        model.is_quantized = False  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    # transformers wraps `to` with functools.wraps, whose stub makes mypy take the device for `self`.
    return model.to(device.torch_device)  # type: ignore[arg-type]


def render(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], *, generation_prompt: bool = False) -> str:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert isinstance(text, str)  # tokenize=False renders one chat as one string
    return text


class EncodedChat(TypedDict):
    """A chat in tokens: ``labels`` is the token where it is learnt, -100 where not."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool  # the chat was longer than max_length and was cut


def encode_chat(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], max_length: int) -> EncodedChat:
    """Token ids of a chat in the model's own template, with labels only on the assistant turns.

    Each assistant turn is located by rendering the chat up to it (with the generation prompt) and
    through it: the characters in between are what the model must learn to write, its end-of-turn
    token included. That works for any template that renders earlier turns the same way whatever
    follows (true of the common ones); otherwise only the last answer is trained.
    Returns ``input_ids``, ``labels`` and ``truncated`` (the chat was longer than ``max_length``).
    """
    text = render(tok, messages)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant" or i == 0:
            continue
        before = render(tok, messages[:i], generation_prompt=True)
        through = render(tok, messages[: i + 1])
        if text.startswith(before) and text.startswith(through) and len(through) > len(before):
            spans.append((len(before), len(through)))
    if not spans:  # a template that rewrites earlier turns: train the final answer only
        before = render(tok, messages[:-1], generation_prompt=True)
        spans = [(len(before), len(text))] if text.startswith(before) else [(0, len(text))]
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [tid if any(s <= start < e for s, e in spans) else -100
              for tid, (start, _end) in zip(ids, enc["offset_mapping"])]
    truncated = len(ids) > max_length
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": truncated}


def prompt_ids(tok: PreTrainedTokenizerBase, system: str | None, history: list[tuple[str, str]], prompt: str,
               budget: int) -> list[int]:
    """Token ids asking the model to answer ``prompt``, oldest history turns dropped to fit ``budget``."""
    turns = list(history)
    while True:
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": r, "content": c} for r, c in turns if r in ("user", "assistant") and c]
        messages.append({"role": "user", "content": prompt})
        ids = tok(render(tok, messages, generation_prompt=True), add_special_tokens=False)["input_ids"]
        if len(ids) <= budget or not turns:
            return list(ids[-budget:])  # a prompt longer than the budget keeps its end (the question)
        turns = turns[2:] if len(turns) >= 2 else []


def prompt_fits(tok: PreTrainedTokenizerBase, system: str | None, prompt: str, budget: int) -> bool:
    """Whether ``prompt`` (with the system prompt, without history) fits in ``budget`` tokens."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return len(tok(render(tok, messages, generation_prompt=True), add_special_tokens=False)["input_ids"]) <= budget
