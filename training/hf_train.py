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
from dataclasses import dataclass, field
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
                    checkpoint_seconds: float, learned: Learned | None = None) -> list[Any]:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Turns the trainer's logs into step events: loss, smoothed loss, examples/s and ETA."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.ema: float | None = None
            self.last_save = time.monotonic()
            self.epoch_losses: list[float] = []

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if not logs or "loss" not in logs:
                return
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                return
            self.ema = loss if self.ema is None else EMA_BETA * self.ema + (1 - EMA_BETA) * loss
            self.epoch_losses.append(loss)
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
            elif learned is not None and learned.over_budget(time.monotonic() - self.started):
                control.should_training_stop = True
            elif checkpoint_seconds >= 0 and time.monotonic() - self.last_save >= checkpoint_seconds \
                    and state.global_step < (state.max_steps or total):
                control.should_save = True

        def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            losses, self.epoch_losses = self.epoch_losses, []
            # The last epoch is checked too (the job then says how far it got); a time budget that ran out is not.
            if learned is None or model is None or stop.check() or not losses or learned.ended_by:
                return
            epoch = round(float(state.epoch or 0))
            if learned.after_epoch(model, epoch, sum(losses) / len(losses),
                                   lambda text: _event(folder, main, t="info", message=text)):
                control.should_training_stop = True

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.last_save = time.monotonic()
            _event(folder, main, t="checkpoint", step=state.global_step)

    return [Progress()]


RECALL_SAMPLE = 32  # trained pairs asked by a recall check (a fixed random sample: a check costs generations)
RECALL_BATCH = 8  # generated side by side


class Learned:
    """When training has learned its pairs: the recall check between epochs, the loss target, the time budget.

    After each epoch whose mean loss is at or below ``loss_target``, a sample of the trained pairs is asked (their
    own prompts, greedy) and training ends when the key facts of at least ``recall_target`` of the answers come
    back (``training.evaluation.same_meaning``); with ``recall_target`` 0 reaching the loss target ends it. Past
    ``time_budget`` seconds of training it ends at the next step. ``ended_by`` says which, in a sentence.
    """

    def __init__(self, tok: Any, cases: list[tuple[list[int], str]], *, loss_target: float, recall_target: float,
                 time_budget: float, max_epochs: int, seed: int = 0) -> None:
        import random

        self.tok = tok
        rng = random.Random(seed)
        self.cases = rng.sample(cases, min(RECALL_SAMPLE, len(cases)))
        self.loss_target = loss_target
        self.recall_target = recall_target
        self.time_budget = time_budget
        self.max_epochs = max_epochs
        self.ended_by: str | None = None
        self.last_check: tuple[int, int] | None = None  # (right, asked) of the latest recall check

    def recall(self, model: Any) -> tuple[int, int]:
        """(right, asked) on the sample: each answer generated greedily from its own trained prompt."""
        import torch

        from training.evaluation import same_meaning

        was_training = model.training
        model.eval()  # the trainer turned the KV cache off for training: generate asks for it (else every new
        # token recomputes the whole prompt, ~50 times slower)
        right = 0
        device = next(model.parameters()).device
        pad = self.tok.pad_token_id
        try:
            with torch.no_grad():
                for at in range(0, len(self.cases), RECALL_BATCH):
                    batch = self.cases[at:at + RECALL_BATCH]
                    width = max(len(ids) for ids, _ in batch)
                    ids = torch.full((len(batch), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(batch), width), dtype=torch.long)
                    for i, (p, _) in enumerate(batch):  # left padding: every prompt ends where generation starts
                        ids[i, width - len(p):] = torch.tensor(p)
                        mask[i, width - len(p):] = 1
                    longest = max(len(self.tok(a, add_special_tokens=False)["input_ids"]) for _, a in batch)
                    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                         max_new_tokens=longest + 8, pad_token_id=pad, use_cache=True,
                                         eos_token_id=self.tok.eos_token_id)
                    for row, (_, answer) in zip(out, batch):
                        got = self.tok.decode(row[width:], skip_special_tokens=True).strip()
                        right += same_meaning(answer, got)
        finally:
            if was_training:
                model.train()
        return right, len(self.cases)

    def after_epoch(self, model: Any, epoch: int, loss: float, say: Any) -> bool:
        """Whether training should end after this epoch (sets ``ended_by``)."""
        if not math.isfinite(loss) or loss > self.loss_target:
            return False
        if self.recall_target <= 0 or not self.cases:
            self.ended_by = (f"Training ended after epoch {epoch}: its mean loss {loss:.3f} reached HF_LOSS_TARGET "
                             f"({self.loss_target:g}).")
            return True
        right, asked = self.last_check = self.recall(model)
        say(f"Epoch {epoch}: loss {loss:.3f}; recall check: the key facts of {right}/{asked} trained answers")
        if right >= self.recall_target * asked:
            self.ended_by = (f"Training ended after epoch {epoch}: it recalls the key facts of {right}/{asked} "
                             f"checked trained answers (HF_RECALL_TARGET {self.recall_target:.0%}).")
            return True
        return False

    def over_budget(self, elapsed: float) -> bool:
        if elapsed < self.time_budget:
            return False
        self.ended_by = f"Training ended at its time budget (HF_TIME_BUDGET={self.time_budget:g} s){self._last()}."
        return True

    def at_end(self) -> str:
        """Why training ended when nothing ended it early: it ran every epoch ("" when no target was set: then
        running every epoch is all it could do)."""
        if self.ended_by is None and self.loss_target <= 0 and self.recall_target <= 0:
            return ""
        epochs = f"{self.max_epochs} epoch{'s' * (self.max_epochs != 1)}"
        return self.ended_by or f"Training ran all {epochs} (HF_EPOCHS){self._last()}."

    def _last(self) -> str:
        if self.last_check is None:
            return (f"; the loss never reached HF_LOSS_TARGET ({self.loss_target:g}), so recall was not checked"
                    if self.recall_target > 0 else "")
        right, asked = self.last_check
        return f"; the last recall check got the key facts of {right}/{asked} trained answers"


@dataclass
class Supervised:
    """The tokenized chats and what had to give way to HF_MAX_SEQ_LENGTH."""

    data: Any  # a datasets.Dataset of input_ids/labels
    truncated: int  # examples cut at the end even with no other notes
    shortened: int  # grounded examples trained with fewer notes so they fit
    skipped: int  # lines without an answer to learn
    recall: list[tuple[list[int], str]] = field(default_factory=list)  # (prompt ids, expected) of the learnable pairs


def supervised_dataset(tok: Any, lines: list[ChatLine], max_length: int) -> Supervised:
    from datasets import Dataset

    from training.hf_ground import ABSTAIN, chat
    from training.hf_model import encode_chat, render

    rows: list[dict[str, list[int]]] = []
    truncated = shortened = skipped = 0
    recall: list[tuple[list[int], str]] = []
    for line in lines:
        grounding: Any = line.get("grounding")
        messages = [{"role": m["role"], "content": content} for m in line.get("messages") or []
                    if isinstance(content := m.get("content"), str)]
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            skipped += 1
            continue
        enc = encode_chat(tok, messages, max_length)
        if enc["truncated"] and isinstance(grounding, dict):
            # Too long with its notes: drop the other notes, last first, until it fits (the note that holds the
            # answer stays; an abstention keeps at least one).
            context = list(grounding["context"])
            target = grounding["answer"]
            system = next((m["content"] for m in messages if m["role"] == "system"), None)
            while enc["truncated"] and len(context) > 1:
                drop = next((i for i in range(len(context) - 1, -1, -1) if context[i][1] != target), None)
                if drop is None:
                    break
                context.pop(drop)
                messages = [{"role": str(m["role"]), "content": str(m["content"])}
                            for m in chat(system, grounding["question"], context, target)["messages"]]
                enc = encode_chat(tok, messages, max_length)
            shortened += not enc["truncated"]
        truncated += enc["truncated"]
        if any(label != -100 for label in enc["labels"]):
            rows.append({"input_ids": enc["input_ids"], "labels": enc["labels"]})
            answer = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
            if not enc["truncated"] and answer.strip() and answer != ABSTAIN and \
                    sum(1 for m in messages if m["role"] == "user") == 1:
                prompt = tok(render(tok, messages[:-1], generation_prompt=True), add_special_tokens=False)
                recall.append((list(prompt["input_ids"]), answer))
    return Supervised(Dataset.from_list(rows), truncated, shortened, skipped, recall)


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
    learned: Learned | None = None  # DPO runs its epochs: a few corrections, no recall to check
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

        sup = supervised_dataset(tok, lines, max_length)
        data = sup.data
        if not len(data):
            raise ValueError("no chat example has an assistant answer to learn")
        if sup.skipped:
            _event(folder, main, t="info", message=f"{sup.skipped} example(s) had an empty answer and were skipped")
        if sup.shortened:
            _event(folder, main, t="info", message=f"{sup.shortened} example(s) did not fit HF_MAX_SEQ_LENGTH="
                                                    f"{max_length} tokens with their grounding notes and were "
                                                    "trained with fewer notes")
        if sup.truncated:
            _event(folder, main, t="info", message=f"{sup.truncated} example(s) were longer than HF_MAX_SEQ_LENGTH="
                                                    f"{max_length} tokens even without other notes and were cut "
                                                    "(their answers cannot be recalled whole)")
        learned = Learned(tok, sup.recall, loss_target=float(spec.get("loss_target", 0.0)),
                          recall_target=float(spec.get("recall_target", 0.0)),
                          time_budget=float(spec.get("time_budget", math.inf)), max_epochs=int(spec["epochs"]),
                          seed=int(spec.get("seed") or 0))
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
                                checkpoint_seconds=float(spec.get("checkpoint_seconds", 60)), learned=learned)
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
        ended_by = learned.at_end() if learned is not None else ""
        name = _save_version(folder, spec, trainer, base, n_examples, ended_by)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        _event(folder, main, t="done", model=name, step=trainer.state.global_step,
               final_loss=round(float(losses[-1]), 5) if losses else None, ended_by=ended_by)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return 0


def _save_version(folder: Path, spec: TrainJob, trainer: Any, base: Any, n_examples: int, ended_by: str = "") -> str:
    """Write the adapter into a hidden folder, then number and rename it (never half a model).

    A grounded training's notes (``training.hf_ground``) go with it; a DPO training keeps its parent's.
    """
    from training.hf_ground import PAIRS_FILE, VECTOR_FILES
    from training.hf_store import VERSIONS
    from training.versions import new_tmp_dir

    models = Path(spec["models_dir"])
    tmp = new_tmp_dir(models)
    try:
        # Only the trained adapter ("default"; DPO's frozen "ref" copy is not part of the model).
        trainer.model.save_pretrained(str(tmp), safe_serialization=True, selected_adapters=["default"])
        notes_from = folder if (folder / PAIRS_FILE).is_file() else Path(p) if (p := spec.get("adapter_from")) else None
        grounded = notes_from is not None and (notes_from / PAIRS_FILE).is_file()
        if grounded:
            assert notes_from is not None
            for name in (PAIRS_FILE, *VECTOR_FILES):
                if (notes_from / name).is_file():
                    shutil.copyfile(notes_from / name, tmp / name)
        losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
        meta = {
            "job_id": spec["job_id"], "method": spec["method"], "base": base.to_json(), "base_label": base.label,
            "parent": Path(parent).name if (parent := spec.get("adapter_from")) else None,
            "created_at": time.time(), "examples": n_examples, "steps": trainer.state.global_step,
            "final_loss": losses[-1] if losses else None, "grounded": grounded, "ended_by": ended_by or None,
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
