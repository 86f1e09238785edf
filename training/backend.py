"""What every training backend offers: start/poll/cancel a job, and answer with a model.

Job records are plain dicts (see ``jobs.py`` for the fields) so they round-trip through
the JSON Lines job log without conversion.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from dataset.compile import Compiled
    from storage import GuildSpace

log = logging.getLogger(__name__)

JobRecord = dict[str, Any]
Method = Literal["supervised", "dpo"]
METHODS: tuple[str, ...] = ("supervised", "dpo")
# The same status words as the OpenAI fine-tuning API, for every backend.
STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# History is (role, content) pairs, role "user" or "assistant", oldest first.
History = Sequence[tuple[str, str]]


@dataclass
class JobUpdate:
    """What a poll learned about a job since the last poll."""

    status: str
    step: int | None = None
    total_steps: int | None = None
    train_loss: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)  # new (step, loss) points
    events: list[str] = field(default_factory=list)  # new human-readable event messages
    fine_tuned_model: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # backend bookkeeping saved in the record


class TrainingBackend(ABC):
    """A place that trains models from compiled guild data and answers with them."""

    name: str = "?"

    async def start(self) -> None:
        """Open connections (called once by ``Model.start``)."""

    async def close(self) -> None:
        """Release connections (called once by ``Model.close``)."""

    @abstractmethod
    async def start_job(
        self, space: GuildSpace, compiled: Compiled, *, method: Method, suffix: str
    ) -> JobRecord:
        """Start training; return the new job record (at least id, backend, status, total_steps)."""

    @abstractmethod
    async def poll(self, space: GuildSpace, job: JobRecord) -> JobUpdate:
        """Ask how the job is doing."""

    @abstractmethod
    async def cancel(self, space: GuildSpace, job: JobRecord) -> JobUpdate:
        """Stop the job if it still runs."""

    @abstractmethod
    async def answer(self, space: GuildSpace, model_name: str | None, prompt: str, history: History) -> str:
        """Answer ``prompt`` with ``model_name`` (None: no trained model yet)."""

    def describe(self) -> str:
        """One line on how this backend answers, for ``!model`` (sync; may load a model once)."""
        return ""

    async def predict_label(self, space: GuildSpace, model_name: str | None, text: str) -> str:
        """The label a model gives ``text``; by default the answer text itself."""
        return await self.answer(space, model_name, text, ())

    def model_exists(self, space: GuildSpace, name: str, jobs: Sequence[JobRecord]) -> bool:
        """Whether ``name`` can be made the current model (a succeeded job produced it)."""
        return any(j.get("status") == "succeeded" and j.get("model") == name for j in jobs)

    def list_models(self, space: GuildSpace, jobs: Sequence[JobRecord]) -> list[str]:
        """Models this backend can answer with, oldest first."""
        seen: list[str] = []
        for job in sorted(jobs, key=lambda j: j.get("created_at") or 0):
            name = job.get("model")
            if job.get("status") == "succeeded" and name and name not in seen:
                seen.append(name)
        return seen
