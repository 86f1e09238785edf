"""The hf backend's trainer: a child process that LoRA-fine-tunes the base model for one job.

Run as ``python -m training.hf_train <run folder>`` (or under ``accelerate launch``, which sets up
one process per GPU/node as the user's accelerate config says). Reads ``job.json`` and
``train.jsonl`` from the run folder (see ``training/hf_store.py``), appends progress to
``events.jsonl``, and on success writes the adapter as the next ``hf-v<N>`` version.

- **supervised**: trl's ``SFTTrainer`` on the chats, tokenized with the model's own chat template,
  loss on the assistant tokens only; a fresh LoRA adapter on the base.
- **dpo**: trl's ``DPOTrainer`` on the preference pairs, with a supervised term on the preferred
  answers (``loss_type=["sigmoid", "sft"]``: plain DPO on a handful of pairs wrecks a small model),
  continuing from the current adapter (which is also the reference) so what it knew stays.

Stopping: the ``cancel`` flag file or SIGTERM cancels at the next step and nothing is saved. When
the bot goes away (EOF on stdin, which only the bot holds open, or its pid is gone) the trainer saves
a checkpoint at the next step and exits; the bot resumes from it when it starts again. Periodic
checkpoints (``checkpoint_seconds``) cover a crash of the whole machine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import stat
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

if TYPE_CHECKING:
    from dataset.lines import ChatLine, ChatMessage, PreferenceLine
    from training.hf_store import TrainerEvent, TrainJob

if TYPE_CHECKING:  # heavy: imported for real only inside _train
    from peft import PeftModel
    from transformers import PreTrainedModel, Trainer, TrainingArguments

log = logging.getLogger("training.hf_train")

EMA_BETA = 0.9  # smoothing of the loss shown beside the current one
REPLAY_PER_PAIR = 8  # DPO: trained chats replayed per preference pair


class Stop:
    """Why training should stop early: None, "cancel" (drop everything) or "bot" (checkpoint, resume later)."""

    def __init__(self, folder: Path, bot_pid: int | None) -> None:
        self.folder = folder
        self.bot_pid = bot_pid
        self.reason: str | None = None

    def check(self) -> str | None:
        if (self.folder / "cancel").exists():
            self.reason = "cancel"
        elif self.reason is None and self.bot_pid and not _alive(self.bot_pid):
            self.reason = "bot"
        return self.reason

    def watch_stdin(self) -> None:
        """EOF on stdin means the bot (the only writer) is gone, however it died."""
        def read() -> None:
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except (OSError, ValueError):
                pass
            if self.reason is None:
                self.reason = "bot"
        try:
            piped = stat.S_ISFIFO(os.fstat(0).st_mode)
        except OSError:
            piped = False
        if piped:  # run by hand (a terminal, /dev/null) nobody is watched
            threading.Thread(target=read, name="bot-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Cancelled(Exception):
    pass


def _event(folder: Path, main: bool, **event: Unpack[TrainerEvent]) -> None:
    if main:
        from training.hf_store import append_event

        append_event(folder, event)


def build_callbacks(folder: Path, main: bool, stop: Stop, *, total: int, start_step: int, examples_per_step: int,
                    checkpoint_seconds: float) -> list[Any]:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Turns the trainer's logs into step events: loss, smoothed loss, examples/s and ETA."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.ema: float | None = None
            self.last_save = time.monotonic()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if not logs or "loss" not in logs:
                return
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                return
            self.ema = loss if self.ema is None else EMA_BETA * self.ema + (1 - EMA_BETA) * loss
            done = max(state.global_step - start_step, 1)
            elapsed = time.monotonic() - self.started
            per_step = elapsed / done
            _event(folder, main, t="step", step=state.global_step, total=state.max_steps or total,
                   loss=round(loss, 5), smoothed=round(self.ema, 5),
                   examples_per_s=round(done * examples_per_step / elapsed, 3) if elapsed else None,
                   eta=round(per_step * max((state.max_steps or total) - state.global_step, 0), 1),
                   epoch=round(float(state.epoch or 0), 3))

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            reason = stop.check()
            if reason:
                control.should_training_stop = True
                control.should_save = reason == "bot"  # resume from here when the bot is back
            elif checkpoint_seconds >= 0 and time.monotonic() - self.last_save >= checkpoint_seconds \
                    and state.global_step < (state.max_steps or total):
                control.should_save = True

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.last_save = time.monotonic()
            _event(folder, main, t="checkpoint", step=state.global_step)

    return [Progress()]


def supervised_dataset(tok: Any, lines: list[ChatLine], max_length: int) -> tuple[Any, int]:
    from datasets import Dataset

    from training.hf_model import encode_chat

    rows, truncated = [], 0
    for line in lines:
        messages = [{"role": m["role"], "content": content} for m in line.get("messages") or []
                    if isinstance(content := m.get("content"), str)]
        if not any(m["role"] == "assistant" for m in messages):
            continue
        enc = encode_chat(tok, messages, max_length)
        truncated += enc["truncated"]
        if any(label != -100 for label in enc["labels"]):
            rows.append({"input_ids": enc["input_ids"], "labels": enc["labels"]})
    return Dataset.from_list(rows), truncated


def preference_dataset(lines: list[PreferenceLine], replay: list[ChatLine], seed: int = 0) -> tuple[Any, int]:
    """DPO rows from the preference lines, plus replay rows that keep the rest of what the model knows.

    A few pairs alone pull every answer towards the corrected ones (measured on the tiny test model:
    the other questions got the correction too). Replay rows take trained chats whose prompt was not
    corrected: their own answer preferred, another example's answer rejected (at most
    ``REPLAY_PER_PAIR`` per pair). Returns the dataset and the number of replay rows.
    """
    import random

    from datasets import Dataset

    def msgs(items: list[ChatMessage]) -> list[dict[str, str]]:
        return [{"role": m["role"], "content": content} for m in items if isinstance(content := m.get("content"), str)]

    rows, corrected = [], set()
    for line in lines:
        prompt = msgs((line.get("input") or {}).get("messages") or [])
        chosen = [{"role": "assistant", "content": m["content"]} for m in line.get("preferred_output") or []]
        rejected = [{"role": "assistant", "content": m["content"]} for m in line.get("non_preferred_output") or []]
        if prompt and chosen and rejected:
            rows.append({"prompt": prompt, "chosen": chosen[:1], "rejected": rejected[:1]})
            corrected.add(json.dumps([m for m in prompt if m["role"] != "system"]))
    kept = []
    for chat in replay:
        messages = msgs(chat.get("messages") or [])
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            continue
        prompt = messages[:-1]
        if json.dumps([m for m in prompt if m["role"] != "system"]) not in corrected:
            kept.append((prompt, messages[-1]["content"]))
    rng = random.Random(seed)
    rng.shuffle(kept)
    kept = kept[:REPLAY_PER_PAIR * len(rows)]
    answers = [a for _, a in kept]
    for i, (prompt, answer) in enumerate(kept):
        others = [a for a in answers[i + 1:] + answers[:i] if a != answer]
        if others:
            rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": answer}],
                         "rejected": [{"role": "assistant", "content": others[0]}]})
    return Dataset.from_list(rows), len(rows) - len(lines)


def train(folder: Path) -> int:
    """Run the job in ``folder``; the process exit status."""
    spec: TrainJob = json.loads((folder / "job.json").read_text(encoding="utf-8"))
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    main = rank == 0
    from training.hf_store import BaseSpec, hold_lock, latest_checkpoint

    hold_lock(folder)  # released by the kernel when this process ends, however it ends
    stop = Stop(folder, spec.get("bot_pid"))
    stop.watch_stdin()

    def on_term(signum: int, frame: Any) -> None:
        stop.reason = "cancel" if (folder / "cancel").exists() else (stop.reason or "bot")
        if not getattr(on_term, "training", False):
            raise Cancelled()  # still loading: nothing to save, stop at once
    signal.signal(signal.SIGTERM, on_term)

    try:
        return _train(folder, spec, main, stop, on_term, BaseSpec.from_json(spec["base"]), latest_checkpoint(folder))
    except Cancelled:
        return _stopped(folder, main, stop, None)
    except Exception as exc:  # one line for the job's status, the traceback for trainer.log
        traceback.print_exc()
        _event(folder, main, t="error", message=_one_line(exc))
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        text = f"out of memory ({text[:200]}); lower HF_BATCH_SIZE or HF_MAX_SEQ_LENGTH, or use a smaller base"
    return f"{type(exc).__name__}: {text[:400]}"


def _stopped(folder: Path, main: bool, stop: Stop, step: int | None) -> int:
    if stop.reason == "bot" and step is not None:
        _event(folder, main, t="stopped", step=step, reason="the bot stopped")
    elif stop.reason == "bot":
        _event(folder, main, t="stopped", step=None, reason="the bot stopped before training began")
    else:
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        _event(folder, main, t="cancelled")
    return 0


def _train(folder: Path, spec: TrainJob, main: bool, stop: Stop, on_term: Any, base: Any,
           resume: Path | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch  # noqa: F401  (heavy imports after the lock, so a restart sees us alive at once)

    from training.hf_model import load_base, load_tokenizer, pick_device

    device = pick_device(spec.get("device") or "auto", int(spec.get("threads") or 0))
    method = spec["method"]
    # train.jsonl holds chat lines, or preference lines for dpo (both written by the bot)
    lines = [json.loads(raw) for raw in (folder / "train.jsonl").read_text(encoding="utf-8").splitlines()
             if raw.strip()]
    _event(folder, main, t="info", message=f"Loading {base.label} on {device.label}")
    tok = load_tokenizer(base)
    model: PreTrainedModel | PeftModel = load_base(base, device)
    if stop.check():
        raise Cancelled()

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    batch = int(spec["batch_size"])
    max_length = int(spec["max_seq_length"])
    common: dict[str, Any] = dict(
        output_dir=str(folder / "checkpoints"), num_train_epochs=float(spec["epochs"]),
        per_device_train_batch_size=batch, learning_rate=float(spec["learning_rate"]),
        lr_scheduler_type="linear", warmup_steps=0, logging_steps=1, save_strategy="no",
        save_total_limit=1, report_to=[], seed=int(spec.get("seed") or 0), data_seed=int(spec.get("seed") or 0),
        disable_tqdm=True, use_cpu=device.torch_device == "cpu", max_length=max_length,
        bf16=device.dtype == torch.bfloat16, fp16=device.dtype == torch.float16,
        dataloader_num_workers=0, save_only_model=False, gradient_checkpointing=False,
    )
    from peft import LoraConfig, PeftModel

    rank = int(spec["lora_rank"])
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    args: TrainingArguments
    trainer_cls: type[Trainer]
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        replay_file = folder / "replay.jsonl"
        replay: list[ChatLine] = [json.loads(raw) for raw in replay_file.read_text(encoding="utf-8").splitlines()
                                  if raw.strip()] if replay_file.is_file() else []
        data, n_replay = preference_dataset(lines, replay, int(spec.get("seed") or 0))
        if n_replay:
            _event(folder, main, t="info", message=f"{len(data) - n_replay} preference pair(s) and {n_replay} "
                                                    "replayed example(s) so the rest is not forgotten")
        if not len(data):
            raise ValueError("no usable preference pairs")
        args = DPOConfig(**common, loss_type=["sigmoid", "sft"], beta=0.1)
        kwargs: dict[str, Any] = {}
        parent = spec.get("adapter_from")
        if parent:
            # Continue the current adapter; trl keeps a frozen copy of it as the DPO reference.
            model = PeftModel.from_pretrained(model, parent, is_trainable=True)
        else:
            kwargs["peft_config"] = lora
        n_examples = len(data)
        trainer_cls, trainer_kwargs = DPOTrainer, dict(args=args, train_dataset=data, processing_class=tok, **kwargs)
    else:
        from trl import SFTConfig, SFTTrainer

        data, truncated = supervised_dataset(tok, lines, max_length)
        if not len(data):
            raise ValueError("no chat example has an assistant answer to learn")
        if truncated:
            _event(folder, main, t="info", message=f"{truncated} example(s) were longer than HF_MAX_SEQ_LENGTH="
                                                    f"{max_length} tokens and were cut")
        args = SFTConfig(**common)
        n_examples = len(data)
        trainer_cls, trainer_kwargs = SFTTrainer, dict(args=args, train_dataset=data, processing_class=tok,
                                                       peft_config=lora)

    steps_per_epoch = math.ceil(n_examples / (batch * world))
    total = steps_per_epoch * int(spec["epochs"])
    start_step = 0
    if resume is not None:
        start_step = json.loads((resume / "trainer_state.json").read_text(encoding="utf-8")).get("global_step", 0)
    callbacks = build_callbacks(folder, main, stop, total=total, start_step=start_step,
                                examples_per_step=batch * world,
                                checkpoint_seconds=float(spec.get("checkpoint_seconds", 60)))
    trainer = trainer_cls(model=model, callbacks=callbacks, **trainer_kwargs)
    _event(folder, main, t="start", total=total, examples=n_examples, device=device.label,
           resumed_from=start_step if resume is not None else None, world=world)
    on_term.training = True
    if stop.check():
        return _stopped(folder, main, stop, None)
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    if stop.reason:  # for "bot" the callback had the trainer save a checkpoint at this step
        return _stopped(folder, main, stop, trainer.state.global_step)
    if main:
        name = _save_version(folder, spec, trainer, base, n_examples)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        _event(folder, main, t="done", model=name, step=trainer.state.global_step,
               final_loss=round(float(losses[-1]), 5) if losses else None)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return 0


def _save_version(folder: Path, spec: TrainJob, trainer: Any, base: Any, n_examples: int) -> str:
    """Write the adapter into a hidden folder, then number and rename it (never half a model)."""
    from training.hf_store import VERSIONS
    from training.versions import new_tmp_dir

    models = Path(spec["models_dir"])
    tmp = new_tmp_dir(models)
    try:
        # Only the trained adapter ("default"; DPO's frozen "ref" copy is not part of the model).
        trainer.model.save_pretrained(str(tmp), safe_serialization=True, selected_adapters=["default"])
        losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
        meta = {
            "job_id": spec["job_id"], "method": spec["method"], "base": base.to_json(), "base_label": base.label,
            "parent": Path(parent).name if (parent := spec.get("adapter_from")) else None,
            "created_at": time.time(), "examples": n_examples, "steps": trainer.state.global_step,
            "final_loss": losses[-1] if losses else None,
            "settings": {k: spec[k] for k in ("lora_rank", "epochs", "learning_rate", "max_seq_length",
                                              "batch_size")},
        }
        if stop_requested(folder):
            raise Cancelled()
        return VERSIONS.claim(models, tmp, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def stop_requested(folder: Path) -> bool:
    return (folder / "cancel").exists()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m training.hf_train <run folder>", file=sys.stderr)
        return 2
    return train(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
