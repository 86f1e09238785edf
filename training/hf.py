"""``MODEL_BACKEND=hf``: LoRA fine-tuning of an open-weights model (transformers + peft + trl).

A team's own generative model, trained on its own machine or GPU box and kept: no API, no shutdown
date. Nothing heavy is imported here: training runs in a child process (``training/hf_train.py``,
plain or through ``accelerate launch``) and answers come from a long-lived worker process
(``training/hf_generate.py``), so the bot's event loop never waits on torch and the bot process
never loads it.

Jobs: the bot writes the compiled lines and the settings into the job's run folder and starts the
trainer; :meth:`HFBackend.poll` reads the trainer's progress events (liveness first, then events,
so an event written just before the trainer exits is never missed). A trainer that is gone without
an ending event is started again from its last checkpoint (after a bot restart the trainer notices
that the bot went away, saves a checkpoint and stops); after :data:`MAX_ATTEMPTS` it fails with the
reason. ``!cancel`` writes the run's cancel flag and signals the trainer's process group.

Versions: ``hf-v<N>`` adapters (``training/hf_store.py``, numbered and listed by ``training/versions.py``); switching versions only changes which
adapter the answer worker activates, the base stays loaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from errors import BackendError, InvalidInput
from storage import atomic_open, atomic_write_json, atomic_write_jsonl, atomic_write_text
from training import hf_store, jobs
from training.backend import History, Job, JobUpdate, Method, Reply, TrainingBackend
from training.evaluation import abstains, same_meaning
from training.hf_generate import Generator
from training.hf_ground import INSTRUCTION, PAIRS_FILE, Retrieved, Retriever, raft_lines, save_pairs
from training.hf_store import ADAPTER_FILES, BaseSpec
from training.local.answer import dont_know, dont_know_offer
from training.local.overlay import Overlays
from training.versions import remove_stale_tmp

if TYPE_CHECKING:
    import openai

    from config import Settings
    from dataset.compile import Compiled
    from storage import GuildSpace

log = logging.getLogger(__name__)

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
MAX_ATTEMPTS = 3  # starts of one job's trainer (the first + resumes) before it is declared failed
CANCEL_WAIT = 15.0  # seconds a cancelled trainer gets to stop at a step before it is killed
CLOSE_WAIT = 10.0  # seconds trainers get to checkpoint when the bot stops


class HFBackend(TrainingBackend):
    """LoRA adapters on an open-weights base, trained in child processes, answered by a worker."""

    name = "hf"
    trainer_title = "The hf trainer"
    methods = ("supervised", "dpo")
    min_examples = 1  # LoRA learns from a handful; DPO from a single correction
    poll_seconds = 0.5  # progress is a local file: cheap to read often
    bills_tokens = False
    # OpenAI's format limits (no system message, its token cap) mean nothing here; HF_MAX_SEQ_LENGTH
    # is the real limit and the trainer reports examples it had to cut.
    ignored_check_codes = frozenset({"missing_system_message", "too_many_tokens"})
    blurb = ("Model: **hf** — this server's own open-weights model, LoRA fine-tuned on its examples and corrections "
             "on the bot's machine (GPU if present, CPU otherwise). It writes new answers; every training is a "
             "version kept for rollback and exportable with `{prefix}export model`.")
    no_loss_reason = None  # every finished job has a loss curve
    versions = hf_store.VERSIONS  # the models are the hf-v<N> folders on disk
    generates = True  # answers are written by the model: the evaluation gate scores them by meaning

    def __init__(self, settings: Settings, *, openai_client: openai.AsyncOpenAI | None = None) -> None:
        super().__init__(settings)
        self.base = BaseSpec.parse(settings.hf_base_model)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.generator = Generator(
            {"base": self.base.to_json(), "base_label": self.base.label, "device": settings.hf_device,
             "threads": settings.hf_threads, "max_seq_length": settings.hf_max_seq_length},
            queue=settings.hf_answer_queue, timeout=settings.hf_answer_timeout,
        )
        # Grounding (HF_GROUNDING): the same embedding model as the local backend finds the notes for a prompt.
        self.retriever = Retriever(settings.embed_model, settings.hf_grounding_pairs) if settings.hf_grounding \
            else None
        self._overlays = Overlays(self._embedder)
        # Which path answered, since the bot started (``!model`` shows it): retrieval sure (the pair's own
        # answer), generated from the notes, or "I don't know".
        self.paths = {"retrieved": 0, "generated": 0, "dont_know": 0}

    def _embedder(self) -> Any:
        return self.retriever.embedder() if self.retriever is not None else None

    def describe(self) -> str:
        """One line for ``!model``: whether answers are grounded in the trained pairs, and if not why."""
        if self.retriever is None:
            return ("writes its answers from what it learnt; grounding is off (HF_GROUNDING=off), so it may state "
                    "made-up facts about questions it was not trained on")
        emb = self.retriever.embedder()
        if emb is None:
            return (f"grounding is unavailable ({self.retriever.error}): it answers ungrounded, from what it "
                    "learnt alone, and may state made-up facts about questions it was not trained on")
        first = (" When retrieval alone is sure of a pair (the local backend's own answer rule), its trained answer "
                 "is the reply, word for word; the model writes only when retrieval is unsure."
                 if self.settings.hf_retrieval_first else "")
        first += " A reply the model writes is given only when it says what the closest pair says."
        p = self.paths
        counts = (f" Answers since the bot started: {p['retrieved']} from retrieval, {p['generated']} generated, "
                  f"{p['dont_know']} \"I don't know\"." if any(p.values()) else "")
        return (f"grounded: finds the {self.retriever.k} trained pairs (and corrections) closest to each question "
                f"with the `{emb.name}` embedding model, answers from them, and says it doesn't know when they "
                f"don't hold the answer.{first}{counts}")

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Remove half-saved versions that dead trainers left, load the embedding model for grounding (the answer
        worker starts with the first answer)."""
        await asyncio.to_thread(self._sweep)
        await asyncio.to_thread(self._embedder)

    def _sweep(self) -> None:
        try:
            guilds = [d for d in self.settings.data_dir.iterdir() if d.name.isdigit()]
        except FileNotFoundError:
            return
        for guild in guilds:
            removed = remove_stale_tmp(guild / "models")
            if removed:
                log.info("guild %s: removed %d half-saved model folder(s)", guild.name, removed)

    async def close(self) -> None:
        """Let running trainers checkpoint and stop (they resume when the bot is back); stop the worker."""
        procs = [p for p in self._procs.values() if p.poll() is None]
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()  # EOF: the trainer saves a checkpoint at its next step and exits
        if procs:
            await asyncio.to_thread(_wait_all, procs, CLOSE_WAIT)
        self._procs.clear()
        await self.generator.close()

    # ------------------------------------------------------------ jobs

    async def start_job(self, space: GuildSpace, compiled: Compiled, *, method: Method, suffix: str) -> Job:
        """Write the run folder and start the trainer; returns at once with a running job."""
        lines: list[Any] = list(compiled.supervised if method == "supervised" else compiled.preference)
        if not lines:
            what = "chat examples" if method == "supervised" else "preference pairs (corrections of my answers)"
            raise InvalidInput(f"There are no {what} to train on.")
        notes: list[str] = []
        if method == "supervised":
            kept = [line for line in lines if _has_answer(line)]
            if not kept:
                raise InvalidInput("Every example has an empty answer: there is nothing to learn. Give each "
                                   "question its answer and train again.")
            if len(kept) < len(lines):
                notes.append(f"Skipped {len(lines) - len(kept)} example(s) with an empty answer")
            lines = kept
        models = space.models
        current = jobs.current_model(space, self.name) if method == "dpo" else None
        parent = models / current if current else None
        if parent is not None and not all((parent / f).is_file() for f in ADAPTER_FILES):
            parent = None  # the current version is gone from disk: DPO starts a fresh adapter
        job_id = f"hf-{uuid.uuid4().hex[:12]}"
        run = hf_store.run_dir(models, job_id)
        s = self.settings
        spec: hf_store.TrainJob = {
            "job_id": job_id, "guild_id": space.guild_id, "method": method, "base": self.base.to_json(),
            "adapter_from": str(parent) if parent else None, "models_dir": str(models),
            "lora_rank": s.hf_lora_rank, "epochs": s.hf_epochs, "learning_rate": s.hf_learning_rate,
            "max_seq_length": s.hf_max_seq_length, "batch_size": s.hf_batch_size, "threads": s.hf_threads,
            "device": s.hf_device, "checkpoint_seconds": s.hf_checkpoint_seconds, "bot_pid": os.getpid(), "seed": 0,
            "loss_target": s.hf_loss_target, "recall_target": s.hf_recall_target, "time_budget": s.hf_time_budget,
        }
        lines_out: list[Any] = list(lines)

        def prepare() -> None:
            nonlocal lines_out
            run.mkdir(parents=True, exist_ok=True)
            emb = self._embedder() if method == "supervised" else None
            if emb is not None:
                # Grounded training (RAFT): each pair among its nearest neighbours, plus "I don't know" examples.
                raft = raft_lines(lines, emb, k=s.hf_grounding_pairs, abstain_share=s.hf_abstain_share)
                lines_out = raft.lines
                save_pairs(run, raft.pairs, raft.vectors, emb)
                spec["grounded"] = True
                notes.append(f"Grounded training: {len(raft.pairs)} pair(s), each with its {s.hf_grounding_pairs - 1} "
                             f"closest other pair(s) as notes, and {raft.abstain} example(s) that answer \"I don't "
                             "know\" to a question no pair answers, with its closest pairs as notes")
            elif method == "supervised" and self.retriever is not None:
                notes.append(f"Not grounded: {self.retriever.error or 'no embedding model'}; the model answers "
                             "from what it learns alone")
            atomic_write_jsonl(run / "train.jsonl", lines_out)
            if method == "dpo":  # the trainer replays some of these so DPO does not wipe what it knew
                atomic_write_jsonl(run / "replay.jsonl", compiled.supervised)
            atomic_write_json(run / "job.json", spec)
            self._launch(run, job_id)

        await asyncio.to_thread(prepare)
        total = math.ceil(len(lines_out) / s.hf_batch_size) * s.hf_epochs
        log.info("guild %s: started hf job %s (%s, %d lines, base %s)", space.guild_id, job_id, method,
                 len(lines_out), self.base.label)
        note = " ".join(f"{n}." for n in notes) or None  # shown in the status message (lifecycle clears events)
        return Job(id=job_id, backend=self.name, method=method, status="running", total_steps=total, events=notes,
                   note=note,
                   extra={"start_note": note, "base_model": self.base.label, "parent_model": current if parent else None,
                          "attempts": 1, "events_offset": 0, "launcher": s.hf_launcher})

    def _command(self, run: Path) -> list[str]:
        if self.settings.hf_launcher == "accelerate":
            # The user's accelerate config (or HF_ACCELERATE_CONFIG) decides GPUs, nodes, DeepSpeed or FSDP.
            cmd = [sys.executable, "-m", "accelerate.commands.launch"]
            if self.settings.hf_accelerate_config:
                cmd += ["--config_file", str(self.settings.hf_accelerate_config)]
            return cmd + ["-m", "training.hf_train", str(run)]
        return [sys.executable, "-m", "training.hf_train", str(run)]

    def _launch(self, run: Path, job_id: str) -> None:
        """Start the trainer (sync, quick): its own process group, stdin a pipe only the bot holds."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        spec: hf_store.TrainJob = json.loads((run / "job.json").read_text(encoding="utf-8"))
        if spec.get("bot_pid") != os.getpid():  # a resume by a restarted bot: the trainer watches this one
            spec["bot_pid"] = os.getpid()
            atomic_write_json(run / "job.json", spec)
        with open(run / "trainer.log", "ab") as logfile:
            proc = subprocess.Popen(self._command(run), cwd=str(ROOT), env=env, stdin=subprocess.PIPE,
                                    stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
        atomic_write_text(run / "pid", str(proc.pid))
        self._procs[job_id] = proc

    def _alive(self, run: Path, job_id: str) -> bool:
        proc = self._procs.get(job_id)
        if proc is not None and proc.poll() is None:
            return True
        return hf_store.lock_held(run)  # a trainer started by an earlier run of the bot, still finishing

    async def poll(self, space: GuildSpace, job: Job) -> JobUpdate:
        """Progress from the trainer's events; a vanished trainer is resumed from its checkpoint."""
        return await asyncio.to_thread(self._poll, space, job)

    def _poll(self, space: GuildSpace, job: Job) -> JobUpdate:
        run = hf_store.run_dir(space.models, job.id)
        alive = self._alive(run, job.id)  # before reading: a trainer that is gone has written everything
        offset = int(job.extra.get("events_offset") or 0)
        events, offset = hf_store.read_events(run, offset)
        upd = JobUpdate(status=job.status or "running")
        upd.extra["events_offset"] = offset
        stopped_at: int | None = None
        for ev in events:
            kind = ev.get("t")
            if kind == "info":
                upd.events.append(str(ev.get("message")))
            elif kind == "start":
                upd.total_steps = int(ev.get("total") or 0) or None
                upd.device = _opt(str, ev.get("device"))
                resumed = ev.get("resumed_from")
                if resumed is not None:
                    upd.events.append(f"Resumed from step {resumed} (checkpoint)")
                    upd.resumed_from = int(resumed)
                upd.status = "running"
            elif kind == "step":
                step = ev["step"]
                assert step is not None  # only a "stopped" event may have no step
                upd.step = int(step)
                upd.total_steps = int(ev.get("total") or 0) or upd.total_steps
                upd.losses.append((upd.step, float(ev["loss"])))
                upd.smoothed_loss = _opt(float, ev.get("smoothed"))
                upd.examples_per_s = _opt(float, ev.get("examples_per_s"))
                upd.eta_s = _opt(float, ev.get("eta"))
            elif kind == "checkpoint":
                upd.extra["checkpoint_step"] = ev.get("step")
            elif kind == "stopped":
                stopped_at = ev.get("step")
            elif kind == "done":
                upd.status, upd.fine_tuned_model = "succeeded", ev.get("model")
                upd.step = int(ev.get("step") or 0) or upd.step
                upd.eta_s = 0.0
                if ev.get("ended_by"):  # which condition ended it: learned, loss target, time budget, all epochs
                    upd.events.append(str(ev["ended_by"]))
                    upd.note = " ".join(n for n in (job.extra.get("start_note"), str(ev["ended_by"])) if n)
            elif kind == "cancelled":
                upd.status = "cancelled"
            elif kind == "error":
                upd.status, upd.error = "failed", f"The trainer failed: {ev.get('message')}"
        if upd.status in ("succeeded", "cancelled", "failed"):
            self._finish(run, job.id)
            return upd
        if not alive:
            self._after_exit(space, run, job, upd, stopped_at)
        return upd

    def _after_exit(self, space: GuildSpace, run: Path, job: Job, upd: JobUpdate, stopped_at: int | None) -> None:
        """The trainer is gone without an ending: finished after all, cancelled, resumed, or failed."""
        proc = self._procs.pop(job.id, None)
        name = hf_store.VERSIONS.of_job(space.models, job.id)
        if name:  # it saved the version but died before saying so
            upd.status, upd.fine_tuned_model = "succeeded", name
            self._finish(run, job.id)
            return
        if (run / "cancel").exists():
            upd.status = "cancelled"
            self._finish(run, job.id)
            return
        if not (run / "job.json").is_file():
            upd.status, upd.error = "failed", "The job's run folder is gone; start the training again."
            return
        attempts = int(job.extra.get("attempts") or 1)
        why = _exit_reason(proc, run, stopped_at)
        if attempts >= MAX_ATTEMPTS:
            upd.status = "failed"
            upd.error = f"The trainer stopped {attempts} times without finishing; the last time {why}."
            self._finish(run, job.id)
            return
        ckpt = hf_store.latest_checkpoint(run)
        where = f"step {ckpt.name.rsplit('-', 1)[1]}" if ckpt else "the start (no checkpoint yet)"
        log.info("job %s: trainer gone (%s); resuming from %s", job.id, why, where)
        self._launch(run, job.id)
        upd.status = "running"
        upd.extra["attempts"] = attempts + 1
        upd.events.append(f"The trainer stopped ({why}); resuming from {where}")

    def _finish(self, run: Path, job_id: str) -> None:
        """A job ended: drop its checkpoints (the version, if any, is saved elsewhere)."""
        proc = self._procs.pop(job_id, None)
        if proc is not None:
            try:
                proc.wait(timeout=5)  # it has written its last event: reap it
            except subprocess.TimeoutExpired:
                pass
            if proc.stdin is not None:
                proc.stdin.close()
        shutil.rmtree(run / "checkpoints", ignore_errors=True)

    async def cancel(self, space: GuildSpace, job: Job) -> JobUpdate:
        """Stop the trainer at its next step; nothing of this job is saved as a version."""
        run = hf_store.run_dir(space.models, job.id)

        def stop() -> None:
            run.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run / "cancel", f"{time.time()}\n")
            if not self._alive(run, job.id):
                return
            pid = self._pid(run, job.id)
            if pid:
                _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + CANCEL_WAIT
            while self._alive(run, job.id) and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._alive(run, job.id) and pid:
                log.warning("job %s: trainer ignored the cancel for %.0f s; killing it", job.id, CANCEL_WAIT)
                _signal_group(pid, signal.SIGKILL)
                while self._alive(run, job.id) and time.monotonic() < deadline + 5:
                    time.sleep(0.1)

        await asyncio.to_thread(stop)
        upd = await self.poll(space, job)
        if upd.status not in ("succeeded", "cancelled", "failed"):
            upd.status = "cancelled"
            await asyncio.to_thread(self._finish, run, job.id)
        return upd

    def _pid(self, run: Path, job_id: str) -> int | None:
        proc = self._procs.get(job_id)
        if proc is not None:
            return proc.pid
        try:
            return int((run / "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------ answering

    async def answer(self, space: GuildSpace, model_name: str | None, prompt: str, history: History) -> str:
        """Generate with the base + the version's adapter (the bare base before the first training)."""
        return (await self.reply(space, model_name, prompt, history)).text

    async def reply(self, space: GuildSpace, model_name: str | None, prompt: str, history: History) -> Reply:
        """``answer``, grounded in the closest trained pairs; when it does not know, the pairs it may offer."""
        folder = space.models / model_name if model_name else None

        def look() -> tuple[bool, str | None]:
            ok = folder is None or all((folder / f).is_file() for f in ADAPTER_FILES)
            system = str(space.read_state().get("system_prompt") or "").strip() or None
            return ok, system

        ok, system = await asyncio.to_thread(look)
        if not ok:
            raise BackendError(f"Model `{model_name}` is missing from this server's models folder; train again, "
                               f"or", helps=("model <name>", "switches to another"))
        found = await self.ground(space, folder, prompt)
        if found is not None and found.best < self._floor():
            return self.dont_know(found.offers)  # about nothing it was taught: no need to ask the model
        if found is not None and found.sure is not None and self.settings.hf_retrieval_first:
            # Retrieval is as sure as the local backend would need to answer: the team's own answer, word for
            # word (a small model reading its notes adds nothing here but the risk of a changed fact).
            self.paths["retrieved"] += 1
            return Reply(found.sure[1])
        reply = await self.generator.generate(adapter=folder, system=system, history=list(history), prompt=prompt,
                                              max_new_tokens=self.settings.hf_max_new_tokens,
                                              context=found.context if found is not None else None)
        if found is not None and not agrees(reply["text"], found.context):
            # It said it doesn't know, wrote something no note holds (an invented fact), or copied a note other
            # than the closest one: retrieval and the model disagree, so neither is trusted (measured on the
            # tuning sets: a reply copying the second or third note was wrong 13 times of 15).
            return self.dont_know(found.offers)
        self.paths["generated"] += 1
        return Reply(reply["text"] or "…")

    def embed(self, texts: Sequence[str]) -> Any:
        """Vectors by meaning from the grounding's embedding model (None without it)."""
        emb = self._embedder()
        return None if emb is None else emb.encode(list(texts))

    def same_meaning(self) -> float:
        emb = self._embedder()
        return emb.thresholds.min_score if emb is not None else 1.0

    def _floor(self) -> float:
        return self.retriever.floor() if self.retriever is not None else 0.0

    def dont_know(self, offers: list[tuple[str, str]]) -> Reply:
        """The same honest "I don't know" as the local backend's, offering the closest trained questions (as
        buttons where the chat can show them)."""
        prefix = self.settings.prefix
        self.paths["dont_know"] += 1
        return Reply(dont_know(prefix, [q for q, _ in offers]), tuple(offers),
                     dont_know_offer(prefix) if offers else "")

    async def ground(self, space: GuildSpace, folder: Path | None, prompt: str) -> Retrieved | None:
        """The notes for ``prompt`` from the version's trained pairs and the server's counted corrections; None
        when the answer is not grounded (no version yet, a version trained without grounding, grounding off,
        or no embedding model: then the model answers from what it learnt alone)."""
        retriever = self.retriever
        if retriever is None or folder is None or not (folder / PAIRS_FILE).is_file():
            return None
        index = await asyncio.to_thread(retriever.index, folder)
        if index is None:
            return None
        overlay = await self._overlays.get(space)
        return await asyncio.to_thread(retriever.retrieve, index, prompt, overlay)

    # ------------------------------------------------------------ export

    async def export(self, space: GuildSpace, model_name: str) -> Path:
        """Zip the version's adapter (safetensors) with a README on serving it; the zip's path."""
        return await asyncio.to_thread(self._export, space, model_name)

    def _export(self, space: GuildSpace, name: str) -> Path:
        meta = hf_store.VERSIONS.read_meta(space.models, name)
        folder = space.models / name
        target = space.archives / f"{name}-adapter.zip"
        with atomic_open(target) as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in ADAPTER_FILES:
                zf.write(folder / f, f"{name}/{f}")
            if (folder / PAIRS_FILE).is_file():  # a grounded model answers best with its notes in the prompt
                zf.write(folder / PAIRS_FILE, f"{name}/{PAIRS_FILE}")
            zf.writestr(f"{name}/meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
            zf.writestr(f"{name}/README.md", export_readme(name, meta))
        return target


def export_readme(name: str, meta: dict[str, Any]) -> str:
    """How to serve an exported adapter elsewhere (vLLM, Ollama, transformers)."""
    base = meta.get("base") or {}
    label = meta.get("base_label") or base.get("source") or "the base model"
    kind = base.get("kind")
    if kind == "hub":
        base_ref = base.get("source") or label
        where = f"the Hugging Face model `{base_ref}`"
    elif kind == "gguf":
        base_ref = "<the same model's original (safetensors) weights: a Hugging Face id or folder>"
        where = (f"the GGUF file `{label}` (dequantised for training). vLLM and transformers need the same model's "
                 "original weights; llama.cpp and Ollama can use the GGUF file itself")
    else:
        base_ref = base.get("source") or label
        where = f"the local model folder `{base_ref}`"
    rank = (meta.get("settings") or {}).get("lora_rank", 16)
    grounded_note = ""
    if meta.get("grounded"):
        grounded_note = f"""

It was trained **grounded**: each question came with the closest trained pairs as notes. The bot puts them in
the user message like this (`{PAIRS_FILE}` holds the pairs, one `[question, answer]` a line; find the 3 closest
with any sentence-embedding model):

```
{INSTRUCTION}

Notes:
Q: <a trained question>
A: <its answer>

Question: <the question asked>
```

Asked without notes it was never trained that way: expect made-up facts."""
    return f"""# {name}: a LoRA adapter trained by the trainer bot

- Base model: {where}.
- Method: {meta.get("method")}, {meta.get("examples")} examples, {meta.get("steps")} steps, final training loss \
{meta.get("final_loss")}.
- Files: `adapter_model.safetensors` and `adapter_config.json` (PEFT format; LoRA rank {rank}), `meta.json` (how it
  was trained).

The adapter only works on top of the base model it was trained on.{grounded_note}

## transformers (Python)

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{base_ref}")
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base_ref}"), "./{name}")
chat = tok.apply_chat_template([{{"role": "user", "content": "Hello"}}], add_generation_prompt=True,
                               return_tensors="pt", return_dict=True)
print(tok.decode(model.generate(**chat, max_new_tokens=200)[0], skip_special_tokens=True))
```

## vLLM (an OpenAI-compatible server, adapters loaded at run time)

```sh
vllm serve {base_ref} --enable-lora --lora-modules {name}=./{name} --max-lora-rank {max(rank, 8)}
```

A request's `model` picks the adapter: `"model": "{name}"`. To have the bot answer from that server, set
`MODEL_BACKEND=openai`, `OPENAI_BASE_URL=http://<host>:8000/v1` and `OPENAI_BASE_MODEL={name}`.

## Ollama

```
# Modelfile
FROM <the same base model in Ollama, e.g. its GGUF file>
ADAPTER ./{name}
```

`ollama create {name} -f Modelfile`, then `ollama run {name}`; its OpenAI-compatible API is
`http://localhost:11434/v1` (`OPENAI_BASE_URL` for the bot, `OPENAI_BASE_MODEL={name}`). Ollama reads
safetensors adapters for the architectures it supports (Llama, Mistral, Gemma); for others, convert the
adapter with llama.cpp's `convert_lora_to_gguf.py --base <base folder> ./{name}` and point `ADAPTER` at the
.gguf it writes (llama.cpp's own server takes it as `--lora`).
"""


def agrees(text: str, context: list[tuple[str, str]]) -> bool:
    """Whether a grounded reply says what the closest note says (its key facts and half its words, the gate's
    rule): the model, reading the notes, picked the same answer as retrieval. A reply that says what another note
    says, or what none says, or that it doesn't know, is not an answer to give."""
    return bool(context) and not abstains(text) and same_meaning(context[0][1], text)


def _has_answer(line: Any) -> bool:
    """Whether a chat line has an assistant answer that is not blank."""
    return any(isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), str)
               and m["content"].strip() for m in line.get("messages") or [])


def _opt(kind: Callable[[Any], T], value: Any) -> T | None:
    """``value`` as ``kind`` (a trainer event's field), None when missing."""
    return None if value is None else kind(value)


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait for trainers to exit; those still running after ``timeout`` are killed (their group)."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            log.warning("trainer pid %s did not stop within %.0f s; killing it", proc.pid, timeout)
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the trainer leads its own group: accelerate's workers get it too
    except (ProcessLookupError, PermissionError):
        pass


def _exit_reason(proc: subprocess.Popen[bytes] | None, run: Path, stopped_at: int | None) -> str:
    if stopped_at is not None or _stopped_for_bot(run):
        return "the bot stopped"
    code = proc.returncode if proc is not None else None
    if code is not None and code < 0:
        how = f"it was killed by signal {-code}" + (" (out of memory?)" if code == -9 else "")
    elif code is not None:
        how = f"it exited with status {code}"
    else:
        how = "it ended while the bot was away"
    last = _last_log_line(run)
    return how + (f": {last}" if last else "")


def _stopped_for_bot(run: Path) -> bool:
    events, _ = hf_store.read_events(run, 0)
    return bool(events) and events[-1].get("t") == "stopped"


def _last_log_line(run: Path) -> str:
    try:
        with open(run / "trainer.log", "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - 4096, 0))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""

