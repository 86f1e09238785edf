"""What every training backend offers: start/poll/cancel a job, and answer with a model.

Backends state how they differ as class attributes (``min_examples``, ``poll_seconds``,
``bills_tokens``, ``paid``, ``ignored_check_codes``, ``blurb``, ``no_loss_reason``, ``versions``); nobody compares backend
names. Adding a backend is one module plus one line in :data:`BACKENDS`.

Job records are plain dicts (see ``jobs.py`` for the fields) so they round-trip through
the JSON Lines job log without conversion.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from errors import InvalidInput

if TYPE_CHECKING:
    import openai

    from config import Settings
    from dataset.compile import Compiled
    from storage import GuildSpace
    from training.versions import Versions

log = logging.getLogger(__name__)

JobRecord = dict[str, Any]
Method = Literal["supervised", "dpo"]
METHODS: tuple[str, ...] = ("supervised", "dpo")
# The same status words as the OpenAI fine-tuning API, for every backend.
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# History is (role, content) pairs, role "user" or "assistant", oldest first.
History = Sequence[tuple[str, str]]


@dataclass
class JobUpdate:
    """What a poll learned about a job since the last poll."""

    status: str
    step: int | None = None
    total_steps: int | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)  # new (step, loss) points
    events: list[str] = field(default_factory=list)  # new human-readable event messages
    fine_tuned_model: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # backend bookkeeping saved in the record


# MODEL_BACKEND name -> "module:Class"; imported on first use so heavy stacks load only when chosen.
BACKENDS: dict[str, str] = {
    "local": "training.local:LocalBackend",
    "openai": "training.openai_api:OpenAIBackend",
    "hf": "training.hf:HFBackend",
}


def backend_class(name: str) -> type[TrainingBackend]:
    """The backend class registered as ``name`` (a stored job names the backend that ran it)."""
    try:
        module, cls = BACKENDS[name].split(":")
    except KeyError:
        raise KeyError(f"unknown model backend {name!r}") from None
    return getattr(importlib.import_module(module), cls)


def create_backend(settings: Settings, *, openai_client: openai.AsyncOpenAI | None = None) -> TrainingBackend:
    """The backend chosen by ``MODEL_BACKEND``, sharing the bot's one OpenAI client."""
    return backend_class(settings.model_backend)(settings, openai_client=openai_client)


class TrainingBackend(ABC):
    """A place that trains models from compiled guild data and answers with them."""

    name: ClassVar[str] = "?"
    # Who trains, as the data checker names it ("OpenAI needs at least 10 examples").
    trainer_title: ClassVar[str] = "this backend"
    # Training methods it offers (METHODS order); the others are refused with one line.
    methods: ClassVar[tuple[str, ...]] = ("supervised",)
    # The fewest examples a training accepts.
    min_examples: ClassVar[int] = 1
    # How often the watcher polls a running job; None: JOB_POLL_SECONDS.
    poll_seconds: ClassVar[float | None] = None
    # Whether tokens and epochs are billed (shown in the job's estimate).
    bills_tokens: ClassVar[bool] = False
    # Whether each answer is a paid API call, counted against PAID_CALLS_PER_USER_PER_DAY (training.budget).
    paid: ClassVar[bool] = False
    # Checker codes about OpenAI's format that do not matter to this backend.
    ignored_check_codes: ClassVar[frozenset[str]] = frozenset()
    # One line for !help: what this model is and does; commands are written `{prefix}name` (the cog fills in the prefix).
    blurb: ClassVar[str] = ""
    # Why a finished job has no loss curve, in one sentence.
    no_loss_reason: ClassVar[str | None] = "No loss curve: the backend reported no training loss for this job."
    # Whether a correction changes answers at once (before the next training).
    applies_corrections_now: ClassVar[bool] = False
    # What the status message says instead of a loss for a finished job without one.
    no_loss_status: ClassVar[str] = "not reported"
    # The numbered version folders it trains into (training.versions); None: its models are what jobs named.
    versions: ClassVar[Versions | None] = None

    def __init__(self, settings: Settings, *, openai_client: openai.AsyncOpenAI | None = None) -> None:
        self.settings = settings

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

    def method_refusal(self, method: str) -> str:
        """Why ``method`` is not offered, in one line."""
        offered = " or ".join(f"`{m}`" for m in self.methods)
        return f"The {self.name} backend does not train with `{method}`; it offers {offered}."

    def describe(self) -> str:
        """One line on how this backend answers, for ``!model`` (sync; may load a model once)."""
        return ""

    async def predict_label(self, space: GuildSpace, model_name: str | None, text: str) -> str:
        """The label a model gives ``text``; by default the answer text itself."""
        return await self.answer(space, model_name, text, ())

    async def export(self, space: GuildSpace, model_name: str) -> Path:
        """Write ``model_name`` as a file people can take elsewhere (a zip in ``space.archives``); its path."""
        raise InvalidInput(f"The {self.name} backend has no model files to export; `MODEL_BACKEND=hf` trains "
                           "an open-weights model that can be exported.")

    def model_exists(self, space: GuildSpace, name: str, jobs: Sequence[JobRecord]) -> bool:
        """Whether ``name`` can be made the current model (it is on disk, or a succeeded job produced it)."""
        if self.versions is not None:
            return self.versions.exists(space.models, name)
        return any(j.get("status") == "succeeded" and j.get("model") == name for j in jobs)

    def list_models(self, space: GuildSpace, jobs: Sequence[JobRecord]) -> list[str]:
        """Models this backend can answer with, oldest first."""
        if self.versions is not None:
            return self.versions.names(space.models)
        seen: list[str] = []
        for job in sorted(jobs, key=lambda j: j.get("created_at") or 0):
            name = job.get("model")
            if job.get("status") == "succeeded" and name and name not in seen:
                seen.append(name)
        return seen
