"""Corrections and counted picks count at once: a guild's applicable corrections, and the paraphrases its
counted "Did you mean" picks taught, as a small index searched before the trained pairs (``answer.search``)
without waiting for the next training.

The index is rebuilt when they change (``records.overlay_signature``); with an embedding model only the
rows new since the last one are embedded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dataset import corrections as records
from errors import TrainerError
from training.embedding import Embedder
from training.local.retrieval import norm_key
from training.local.store import reuse_vectors

if TYPE_CHECKING:
    from storage import GuildSpace

log = logging.getLogger(__name__)


@dataclass
class Overlay:
    """A guild's applicable corrections and counted paraphrases, searchable like a trained version."""

    signature: tuple[int, ...]  # records.overlay_signature when it was built
    prompts: list[str]
    answers: list[str]
    vectors: np.ndarray | None

    def __post_init__(self) -> None:
        self.exact = {norm_key(p): i for i, p in enumerate(self.prompts)}


class Overlays:
    """Each guild's overlay, kept until its corrections change (one per embedding model: a version answering
    with a quick stage's vectors compares corrections embedded by that model)."""

    def __init__(self, embedder: Callable[[], Embedder | None]) -> None:
        self.embedder = embedder  # the backend's: loads the embedding model on first use
        self._overlays: dict[tuple[int, str | None], Overlay] = {}

    def build(self, space: GuildSpace, emb: Embedder | None = None) -> Overlay | None:
        """The guild's corrections as a small index (``emb``: embedded by that model rather than the backend's),
        rebuilt when the corrections change."""
        emb = emb or self.embedder()
        slot = (space.guild_id, emb.fingerprint if emb is not None else None)
        signature = records.overlay_signature(space)
        if not signature[0]:
            self._overlays.pop(slot, None)
            return None
        cached = self._overlays.get(slot)
        if cached is not None and cached.signature == signature:
            return cached
        latest: dict[str, tuple[str, str]] = {}
        # A counted pick answers its asked text with the chosen question's answer; a correction of the same
        # text (read after) wins.
        for pick in records.approved_picks(space):
            if pick.applies:
                latest[norm_key(pick.prompt)] = (pick.prompt.strip(), pick.answer.strip())
        for record in records.approved_corrections(space):
            prompt = record.prompt.strip()
            if prompt and record.applies:
                key = norm_key(prompt)
                latest.pop(key, None)  # the newest correction of a question wins
                latest[key] = (prompt, record.correction.strip())
        prompts = [p for p, _ in latest.values()]
        answers = [a for _, a in latest.values()]
        vectors = None
        if emb is not None and prompts:
            # Only corrections new since the last overlay are embedded (a forward pass each).
            known = {} if cached is None or cached.vectors is None else dict(
                zip(zip(cached.prompts, cached.answers), cached.vectors))
            vectors, todo = reuse_vectors(list(zip(prompts, answers)), known, emb.dim)
            if todo:
                vectors[todo] = emb.index_vectors([prompts[i] for i in todo], [answers[i] for i in todo])
        overlay = Overlay(signature, prompts, answers, vectors)
        self._overlays[slot] = overlay
        log.debug("guild %s: %d correction(s) apply before the next training", space.guild_id, len(prompts))
        return overlay

    async def get(self, space: GuildSpace, emb: Embedder | None = None) -> Overlay | None:
        """The guild's overlay (None: no corrections, or unreadable ones), built in a thread when it changed;
        ``emb``: embedded by that model rather than the backend's."""
        emb = emb or self.embedder()
        cached = self._overlays.get((space.guild_id, emb.fingerprint if emb is not None else None))
        try:
            # In a thread: with PostgreSQL this is a round trip.
            signature = await asyncio.to_thread(records.overlay_signature, space)
            if not signature[0]:
                return None
        except (OSError, TrainerError) as exc:  # an unreachable database: answer from the trained model alone
            log.warning("guild %s: corrections unreadable (%s); answering without them", space.guild_id, exc)
            return None
        if cached is not None and cached.signature == signature:
            return cached
        try:
            return await asyncio.to_thread(self.build, space, emb)
        except (OSError, TrainerError) as exc:
            log.warning("guild %s: corrections unreadable (%s); answering without them", space.guild_id, exc)
            return None
