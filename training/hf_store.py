"""What the hf backend keeps on disk, shared by the bot and its child processes (no heavy imports).

- **Versions**: every finished training is ``space.models/hf-v<N>/`` (a LoRA adapter:
  ``adapter_model.safetensors`` + ``adapter_config.json``, and ``meta.json``), numbered, written and
  renamed into place by :mod:`training.versions` (:data:`VERSIONS`).
- **Runs**: a training job's working folder ``space.models/.runs/<job id>/`` (hidden from ``!getfile``):
  ``job.json`` (what to train, written by the bot), ``train.jsonl`` (the compiled lines),
  ``events.jsonl`` (progress the trainer appends and the bot reads), ``checkpoints/`` (for resuming),
  ``cancel`` (a flag file), ``trainer.log`` (the child's stderr) and ``lock`` (held by a live trainer).
- **The base model**: ``HF_BASE_MODEL`` is a Hugging Face id, a local model folder, or a local
  ``.gguf`` file; :class:`BaseSpec` says which and how transformers loads it.

What crosses between the bot and the trainer is JSON, typed here: :class:`TrainJob` (``job.json``),
:class:`TrainerEvent` (a line of ``events.jsonl``), :class:`BaseSpecJSON`.

Everything here is sync and cheap (small files).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NotRequired, Required, TypedDict

import storage
from storage import append_record
from training.versions import Versions

log = logging.getLogger(__name__)

RUNS = ".runs"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
HF_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# ---------------------------------------------------------------- the base model

class BaseSpecJSON(TypedDict):
    """A :class:`BaseSpec` as JSON (in ``job.json``, the answer worker's settings and a version's meta.json)."""

    source: str
    gguf_file: str | None
    kind: str


@dataclass(frozen=True)
class BaseSpec:
    """Where the base model comes from: ``source`` is an HF id or a folder; ``gguf_file`` a file in it."""

    source: str
    gguf_file: str | None = None
    kind: str = "hub"  # hub | folder | gguf

    @classmethod
    def parse(cls, value: str) -> BaseSpec:
        """Read ``HF_BASE_MODEL``; ValueError (a sentence) when it is none of the three kinds."""
        raw = value.strip()
        if not raw:
            raise ValueError("is empty")
        path = Path(raw).expanduser()
        if raw.lower().endswith(".gguf"):
            if not path.is_file():
                raise ValueError(f"names a .gguf file that does not exist: {raw!r}")
            path = path.resolve()
            return cls(str(path.parent), path.name, "gguf")
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ValueError(f"is a folder without a config.json (not a saved model): {raw!r}")
            return cls(str(path.resolve()), None, "folder")
        looks_like_path = raw.startswith((".", "/", "~")) or os.sep in raw.strip("/").replace("/", "", 1)
        if looks_like_path or not HF_ID_RE.match(raw):
            raise ValueError(f"is neither a model folder, a .gguf file nor a Hugging Face id: {raw!r}")
        return cls(raw, None, "hub")

    @property
    def label(self) -> str:
        """How the base is named to people (the id, the folder name or the gguf file name)."""
        if self.kind == "gguf":
            return self.gguf_file or self.source
        if self.kind == "folder":
            return Path(self.source).name
        return self.source

    def to_json(self) -> BaseSpecJSON:
        return {"source": self.source, "gguf_file": self.gguf_file, "kind": self.kind}

    @classmethod
    def from_json(cls, data: BaseSpecJSON) -> BaseSpec:
        return cls(str(data["source"]), data.get("gguf_file"), str(data.get("kind") or "hub"))


# ---------------------------------------------------------------- versions

VERSIONS = Versions("hf-v", "a model of this backend", files=ADAPTER_FILES)


# ---------------------------------------------------------------- runs (a job's working folder)

class TrainJob(TypedDict):
    """``job.json``: what the bot asks the trainer to do (``bot_pid``: the bot the trainer watches)."""

    job_id: str
    guild_id: int
    method: str  # supervised | dpo
    base: BaseSpecJSON
    adapter_from: str | None  # the version a DPO training continues from (its folder)
    models_dir: str
    lora_rank: int
    epochs: int
    learning_rate: float
    max_seq_length: int
    batch_size: int
    threads: int
    device: str
    checkpoint_seconds: float
    bot_pid: int
    seed: int
    # Training goes on until the pairs are learned (see training.hf_train.Learned); absent in older run folders.
    loss_target: NotRequired[float]  # an epoch's mean loss at or below it starts the recall checks
    recall_target: NotRequired[float]  # share of the checked pairs whose key facts must come back (0: off)
    time_budget: NotRequired[float]  # seconds of training at most (then the version is saved as it is)
    grounded: NotRequired[bool]  # train.jsonl is in the grounded format (training.hf_ground)


class TrainerEvent(TypedDict, total=False):
    """A line of ``events.jsonl``: ``t`` says what happened; the trainer's fields for each kind are below."""

    time: float  # added by append_event
    t: Required[Literal["info", "start", "step", "checkpoint", "stopped", "cancelled", "error", "done"]]
    message: str  # info, error
    total: int  # start, step: steps of the whole training
    examples: int  # start
    device: str  # start
    resumed_from: int | None  # start: the checkpoint step it went on from
    world: int  # start: processes
    step: int | None  # step, checkpoint, stopped (None: before training began), done
    loss: float  # step
    smoothed: float  # step
    examples_per_s: float | None  # step
    eta: float  # step: seconds
    epoch: float  # step
    reason: str  # stopped
    model: str  # done: the version saved
    final_loss: float | None  # done
    ended_by: str  # done: why training ended (learned, loss target, time budget, all epochs), in a sentence


def run_dir(models: Path, job_id: str) -> Path:
    return models / RUNS / job_id


def append_event(folder: Path, event: TrainerEvent) -> None:
    """One progress event, appended and fsynced (the bot reads them from its own offset)."""
    line: TrainerEvent = {"time": round(time.time(), 3), **event}
    append_record(folder / "events.jsonl", line)


def read_events(folder: Path, offset: int) -> tuple[list[TrainerEvent], int]:
    """Complete event lines after byte ``offset``, and the offset after the last complete one.

    A line still being written (no newline yet) is left for the next read.
    """
    try:
        with open(folder / "events.jsonl", "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events: list[TrainerEvent] = []
    for raw in data[:end].splitlines():
        if not raw.strip():
            continue
        try:
            event: TrainerEvent = json.loads(raw)
        except ValueError:
            log.warning("%s: skipped a damaged event line", folder)
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, offset + end


def lock_held(folder: Path) -> bool:
    """Whether a live trainer holds the run's lock (a dead one releases it, even when killed)."""
    return storage.lock_held(folder / "lock")


def hold_lock(folder: Path) -> int:
    """Take the run's lock for the life of this process (shared: every rank of a launch holds it)."""
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors")


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint of a run (one cut short by a kill is skipped)."""
    ckpts = folder / "checkpoints"
    try:
        entries = list(ckpts.iterdir())
    except FileNotFoundError:
        return None
    found = []
    for entry in entries:
        m = re.match(r"^checkpoint-(\d+)$", entry.name)
        if m and all((entry / f).is_file() for f in CHECKPOINT_FILES) and (
            any(entry.glob("optimizer.*"))
        ):
            try:
                json.loads((entry / "trainer_state.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            found.append((int(m.group(1)), entry))
    return max(found)[1] if found else None
