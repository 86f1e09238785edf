"""OpenAI-format training lines: what :mod:`dataset.compile` builds, the backends train on and the exports hold.

These are JSON lines, written and read as such (``train.jsonl``, ``dpo.jsonl``, the upload to OpenAI, the hf
trainer's run folder), so they are TypedDicts: the dicts themselves, with their keys typed.

- :class:`ChatLine`: ``{"messages": [{"role", "content"}, ...]}`` (supervised fine-tuning).
- :class:`PreferenceLine`: ``{"input": {"messages": [...]}, "preferred_output": [assistant message],
  "non_preferred_output": [assistant message]}`` (DPO).
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class ChatMessage(TypedDict):
    """One message of a chat. The bot's own are ``{"role", "content"}``; a chat someone uploads may also carry
    what OpenAI's format allows (checked by :func:`dataset.check.check_messages`): ``name``, ``weight``, and a
    tool or function call, beside which ``content`` may be null or absent."""

    role: str
    content: NotRequired[str | None]
    name: NotRequired[str]
    weight: NotRequired[int]
    function_call: NotRequired[object]
    tool_calls: NotRequired[list[object]]
    tool_call_id: NotRequired[str]


class ChatLine(TypedDict):
    """A supervised line: one chat, the assistant's turns are what is learnt."""

    messages: list[ChatMessage]


class PreferenceInput(TypedDict):
    messages: list[ChatMessage]


class PreferenceLine(TypedDict):
    """A DPO line: the prompt, the preferred answer and the one not to give (one assistant message each)."""

    input: PreferenceInput
    preferred_output: list[ChatMessage]
    non_preferred_output: list[ChatMessage]

