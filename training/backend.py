"""What every training backend offers: start/poll/cancel a job, and answer with a model.

Backends state how they differ as class attributes (``min_examples``, ``poll_seconds``,
``bills_tokens``, ``paid``, ``ignored_check_codes``, ``blurb``, ``no_loss_reason``, ``versions``); nobody compares backend
names. Adding a backend is one module plus one line in :data:`BACKENDS`.

A job travels as a :class:`Job` (``jobs.py`` stores it: columns plus one JSON ``data`` column); what a poll
learnt is a :class:`JobUpdate`. A backend's own bookkeeping (its upload, its event cursor, ...) is ``extra``,
read only by the backend that wrote it.
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

Method = Literal["supervised", "dpo"]
METHODS: tuple[str, ...] = ("supervised", "dpo")
# The same status words as the OpenAI fine-tuning API, for every backend.
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# History is (role, content) pairs, role "user" or "assistant", oldest first.
History = Sequence[tuple[str, str]]


@dataclass
class Estimate:
    """What a job trains on, as the data checker counted it (tokens and epochs mean something only when billed);
    None: not known (a job stored without it)."""

    examples: int | None = None
    tokens: int | None = None
    epochs: int | None = None
    billed_tokens: int | None = None


@dataclass
class Score:
    """One part of an evaluation: ``n`` cases, how many the new model got right, and the current one (None when
    there was no current model to compare with)."""

    n: int
    new: int
    old: int | None = None


@dataclass
class Evaluation:
    """The evaluation gate's result for a just-trained model (``training.lifecycle``)."""

    old_model: str | None = None  # the model it was compared with (None: the first model, or itself)
    margin: float = 0.0  # how much worse on the evaluation set (a fraction) keeps it a candidate
    eval_set: Score | None = None  # on the server's evaluation set (!test cases); None: none yet
    heldout: Score | None = None  # on the job's held-out training pairs; None: too few to hold out
    error: str | None = None  # why it could not be scored (then it is not held back)
    candidate: bool = False  # held back (``reason``): not switched to
    reason: str | None = None  # why it was held back, one clause (None on older records: scored worse)


@dataclass
class Job:
    """A training job: the row's columns, then what the lifecycle, the status text and the cog read, then the
    backend's own bookkeeping (``extra``)."""

    id: str
    backend: str
    status: str  # queued/running/... until one of TERMINAL
    method: str = "supervised"
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    started_by: str | None = None
    channel_id: int | None = None
    status_message_id: int | None = None  # the message the watcher edits
    model: str | None = None  # the trained model, once it succeeded
    step: int = 0
    total_steps: int | None = None
    error: str | None = None
    watcher: str | None = None  # who holds the watch lease (read here, written only by jobs.claim/release)
    lease_until: float | None = None
    last_loss: tuple[int, float] | None = None  # the newest (step, loss) point; the points are jobs.job_losses
    events: list[str] = field(default_factory=list)  # the latest few human-readable events
    estimate: Estimate | None = None
    contributors: list[tuple[str, int]] = field(default_factory=list)  # who gave the examples, most first
    evaluation: Evaluation | None = None  # None: the gate did not run
    candidate: bool = False  # succeeded but kept as a candidate by the evaluation gate
    activated: bool = False  # its model was made the current one
    cancelled_by: str | None = None
    note: str | None = None  # one more sentence for the announcement (e.g. Azure: deploy the model first)
    # A trainer's latest report on itself (hf): where and how fast it runs.
    device: str | None = None
    resumed_from: int | None = None  # the checkpoint step a restarted trainer went on from
    smoothed_loss: float | None = None
    examples_per_s: float | None = None
    eta_s: float | None = None
    progress: tuple[int, int] | None = None  # (done, total) of the backend's ``progress_unit`` (local: pairs embedded)
    stage: str | None = None  # which stage of the job answers now, while an early model does (local: a quick stage)
    # Its model answered before the job ended (``JobUpdate.live_model``); ``replaced_model`` was current then.
    live: bool = False
    replaced_model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the backend's bookkeeping, read only by that backend


@dataclass(frozen=True)
class Reply:
    """An answer as the chat shows it: ``text``, and when the model does not know, the (question, answer) pairs
    it knows that the asker may have meant (``offers``, best first: the chat turns them into buttons)."""

    text: str
    offers: tuple[tuple[str, str], ...] = ()
    # ``text`` for when the offers are buttons (``text`` itself tells the asker to type the question again).
    offer_text: str = ""


@dataclass
class JobUpdate:
    """What a poll learned about a job since the last poll (None: nothing new about that field)."""

    status: str
    step: int | None = None
    total_steps: int | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)  # new (step, loss) points
    events: list[str] = field(default_factory=list)  # new human-readable event messages
    fine_tuned_model: str | None = None
    error: str | None = None
    note: str | None = None
    device: str | None = None
    resumed_from: int | None = None
    smoothed_loss: float | None = None
    examples_per_s: float | None = None
    eta_s: float | None = None
    progress: tuple[int, int] | None = None
    stage: str | None = None  # "" clears it
    live_model: str | None = None  # a model that answers already while the job goes on (the job's own, at the end)
    extra: dict[str, Any] = field(default_factory=dict)  # backend bookkeeping, merged into Job.extra


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
    # What a job's (done, total) progress counts, for the status message.
    progress_unit: ClassVar[str] = "items"

    def __init__(self, settings: Settings, *, openai_client: openai.AsyncOpenAI | None = None) -> None:
        self.settings = settings

    async def start(self) -> None:
        """Open connections (called once by ``Model.start``)."""

    async def close(self) -> None:
        """Release connections (called once by ``Model.close``)."""

    @abstractmethod
    async def start_job(
        self, space: GuildSpace, compiled: Compiled, *, method: Method, suffix: str
    ) -> Job:
        """Start training; return the new job (at least id, backend, method, status, total_steps)."""

    @abstractmethod
    async def poll(self, space: GuildSpace, job: Job) -> JobUpdate:
        """Ask how the job is doing."""

    @abstractmethod
    async def cancel(self, space: GuildSpace, job: Job) -> JobUpdate:
        """Stop the job if it still runs."""

    @abstractmethod
    async def answer(self, space: GuildSpace, model_name: str | None, prompt: str, history: History) -> str:
        """Answer ``prompt`` with ``model_name`` (None: no trained model yet)."""

    async def reply(self, space: GuildSpace, model_name: str | None, prompt: str, history: History) -> Reply:
        """``answer`` with what the model may offer instead of "I don't know" (by default nothing)."""
        return Reply(await self.answer(space, model_name, prompt, history))

    def embed(self, texts: Sequence[str]) -> Any:
        """Unit vectors of ``texts`` by meaning (a numpy array, one row each; sync, CPU-bound), or None when this
        backend has no embedding model (texts are then grouped by wording only)."""
        return None

    def same_meaning(self) -> float:
        """The lowest score of ``embed`` vectors at which two questions mean the same (the answer threshold)."""
        return 1.0

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

    def model_exists(self, space: GuildSpace, name: str, jobs: Sequence[Job]) -> bool:
        """Whether ``name`` can be made the current model (it is on disk, or a succeeded job produced it)."""
        if self.versions is not None:
            return self.versions.exists(space.models, name)
        return any(j.status == "succeeded" and j.model == name for j in jobs)

    def list_models(self, space: GuildSpace, jobs: Sequence[Job]) -> list[str]:
        """Models this backend can answer with, oldest first."""
        if self.versions is not None:
            return self.versions.names(space.models)
        seen: list[str] = []
        for job in sorted(jobs, key=lambda j: j.created_at or 0):
            name = job.model
            if job.status == "succeeded" and name and name not in seen:
                seen.append(name)
        return seen
