"""Answers from the base model + a guild's adapter, generated in one long-lived worker process.

Why a process and not a thread: generation is hundreds of small torch calls per answer with Python
(the generate loop, sampling, tokenizing) between them, which holds the GIL and would make the
bot's event loop stutter on a 2-core machine; a process also keeps torch and the model (hundreds of
MB to GBs) out of the bot, and an out-of-memory kill or a native crash takes down only the worker,
which the next question starts again. The worker keeps the base model loaded and switches adapters
per request (``load_adapter``/``set_adapter``; the base stays in memory), so changing versions is
cheap. One answer is generated at a time: on a CPU two at once only share the same cores.

Protocol: JSON lines. The bot writes ``{"id", "adapter": path|null, "system", "history", "prompt",
"max_new_tokens"}`` or ``{"cancel": id}`` to the worker's stdin; the worker writes ``{"ready", "device"}``
once the base is loaded (or ``{"fatal": message}`` and exits), then ``{"id", "text", "ttft",
"tokens", "seconds"}`` or ``{"id", "error"}`` per request, on its stdout (anything libraries print
goes to stderr). The messages are the TypedDicts below (:class:`AnswerRequest`, :class:`Answered`, ...).

:class:`Generator` is the bot's side: bounded queue (``Busy`` when full), a timeout per answer
(the worker stops that generation within one token), restarts after a crash.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, final

from errors import BackendError, Busy

if TYPE_CHECKING:
    from training.hf_store import BaseSpecJSON

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
MAX_ADAPTERS = 8  # adapters kept loaded next to the base (a few MB each for small models)
STDERR_KEEP = 30
STREAM_LIMIT = 16 * 1024 * 1024  # one protocol line can hold a long answer


# ---------------------------------------------------------------- the protocol (JSON lines)

class WorkerConfig(TypedDict):
    """The worker's one command-line argument: the base model and how to run it."""

    base: BaseSpecJSON
    base_label: str
    device: NotRequired[str]  # HF_DEVICE: auto (the default), cpu, cuda, ...
    threads: NotRequired[int]  # CPU threads (0, the default: torch's choice)
    max_seq_length: NotRequired[int]  # 2048 by default


class AnswerRequest(TypedDict):
    """Bot → worker: answer ``prompt`` with the adapter at ``adapter`` (None: the bare base)."""

    id: int
    adapter: str | None
    system: str | None
    history: list[list[str]]  # [role, content] turns, oldest first
    prompt: str
    max_new_tokens: int
    context: NotRequired[list[list[str]] | None]  # grounding notes [question, answer], best first (training.hf_ground)


class CancelRequest(TypedDict):
    """Bot → worker: stop generating for request ``cancel`` (its id)."""

    cancel: int


class Ready(TypedDict):
    """Worker → bot, once: the base is loaded."""

    ready: bool
    device: str
    seconds: float


class Fatal(TypedDict):
    """Worker → bot, instead of Ready: the base could not be loaded (the worker exits)."""

    fatal: str


class Generated(TypedDict):
    """An answer and how fast it came."""

    text: str
    tokens: int
    ttft: float  # seconds to the first token
    seconds: float
    tokens_per_s: float | None
    cancelled: bool
    prompt_tokens: int
    prompt: str  # the prompt as the model saw it (its chat template rendered), for logs and tests
    notes: int  # grounding notes that fit in the prompt


@final
class Answered(Generated):
    """Worker → bot: the answer to request ``id``."""

    id: int


@final
class Failed(TypedDict):
    """Worker → bot: request ``id`` failed (one line)."""

    id: int
    error: str


class Generator:
    """The bot's handle on the answer worker (async; never blocks the event loop)."""

    def __init__(self, config: WorkerConfig, *, queue: int, timeout: float, load_timeout: float = 900.0) -> None:
        self.config = config  # base spec, device, threads, max_seq_length: passed to the worker
        self.queue = queue
        self.timeout = timeout
        self.load_timeout = load_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[Ready] | None = None
        self._pending: dict[int, asyncio.Future[Answered | Failed]] = {}
        self._ids = itertools.count(1)
        self._start_lock = asyncio.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_KEEP)
        self.device: str | None = None

    @property
    def busy(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending)

    async def _ensure_started(self) -> asyncio.Future[Ready]:
        async with self._start_lock:
            if self._proc is not None and self._proc.returncode is None and self._ready is not None:
                return self._ready
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
            self._stderr.clear()
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "training.hf_generate", json.dumps(self.config),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                cwd=str(ROOT), env=env, limit=STREAM_LIMIT,
            )
            log.info("answer worker started (pid %s) for %s", self._proc.pid, self.config.get("base_label"))
            self._ready = asyncio.get_running_loop().create_future()
            self._reader = asyncio.create_task(self._read(self._proc, self._ready), name="hf-answer-reader")
            self._stderr_task = asyncio.create_task(self._drain_stderr(self._proc), name="hf-answer-stderr")
            return self._ready

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._stderr.append(line)
                log.debug("answer worker: %s", line)

    def _why_dead(self, proc: asyncio.subprocess.Process) -> str:
        code = proc.returncode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"
        last = next((line for line in reversed(self._stderr) if line.strip()), "")
        if code == -9:
            how += " (out of memory?)"
        return f"The answer worker {how}" + (f": {last[-300:]}" if last else "")

    async def _read(self, proc: asyncio.subprocess.Process, ready: asyncio.Future[Ready]) -> None:
        assert proc.stdout is not None
        error: str | None = None
        async for raw in proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                log.warning("answer worker wrote a line that is not JSON: %r", raw[:200])
                continue
            if "ready" in msg:
                self.device = msg.get("device")
                log.info("answer worker ready on %s (%.1f s to load)", self.device, msg.get("seconds", 0))
                if not ready.done():
                    ready.set_result(msg)
            elif "fatal" in msg:
                error = f"Could not load the base model {self.config.get('base_label')}: {msg['fatal']}"
            elif "id" in msg:
                fut = self._pending.pop(int(msg["id"]), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        await proc.wait()
        await asyncio.sleep(0)  # let the stderr drain catch up for the message
        reason = error or self._why_dead(proc)
        if proc.returncode not in (0, None) or error:
            log.warning("%s", reason)
        if not ready.done():
            ready.set_exception(BackendError(reason))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(BackendError(reason))
        self._pending.clear()

    async def _send(self, obj: AnswerRequest | CancelRequest) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise BackendError("The answer worker is not running.")
        proc.stdin.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
        try:
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise BackendError(self._why_dead(proc)) from None

    async def generate(self, *, adapter: Path | None, system: str | None, history: list[tuple[str, str]],
                       prompt: str, max_new_tokens: int,
                       context: list[tuple[str, str]] | None = None) -> Answered:
        """The worker's reply ``{"text", "ttft", "tokens", "seconds", ...}``; Busy when the queue is full.
        ``context``: grounding notes put in the prompt (``training.hf_ground.user_message``)."""
        if self.busy >= self.queue:
            raise Busy(f"I'm busy with other questions ({self.busy} waiting for the model); ask again in a moment.")
        req_id = next(self._ids)
        fut: asyncio.Future[Answered | Failed] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut  # counted from now, also while the worker is still loading
        try:
            ready = await self._ensure_started()
            try:
                await asyncio.wait_for(asyncio.shield(ready), self.load_timeout)
            except asyncio.TimeoutError:
                await self.close()
                raise BackendError(f"The base model did not load within {self.load_timeout:.0f} s.") from None
            await self._send({"id": req_id, "adapter": str(adapter) if adapter else None, "system": system,
                              "history": [list(t) for t in history], "prompt": prompt,
                              "max_new_tokens": max_new_tokens,
                              "context": [list(c) for c in context] if context is not None else None})
            try:
                reply = await asyncio.wait_for(asyncio.shield(fut), self.timeout)
            except asyncio.TimeoutError:
                await self._send({"cancel": req_id})
                raise BackendError(f"The model took longer than {self.timeout:g} s to answer (HF_ANSWER_TIMEOUT); "
                                   "try a shorter question.") from None
        finally:
            self._pending.pop(req_id, None)
        if "error" in reply:
            raise BackendError(f"The model could not answer: {reply['error']}")
        return reply

    async def close(self) -> None:
        """Stop the worker (closing its stdin ends it; killed if it does not go)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                await asyncio.wait_for(proc.wait(), 5)
            except (asyncio.TimeoutError, ProcessLookupError):
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
                await proc.wait()
        for task in (self._reader, self._stderr_task):
            if task is not None:
                try:
                    await asyncio.wait_for(task, 5)
                except (asyncio.TimeoutError, asyncio.CancelledError, BackendError):
                    task.cancel()


# ---------------------------------------------------------------- the worker process

def serve(config: WorkerConfig) -> int:
    """The worker's main loop (runs in the child process)."""
    import queue
    import threading

    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # whatever libraries print must not corrupt the protocol
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    def write(obj: Ready | Fatal | Answered | Failed) -> None:
        out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        out.flush()

    requests: queue.Queue[AnswerRequest | None] = queue.Queue()
    cancelled: set[int] = set()

    def read_stdin() -> None:
        for raw in sys.stdin:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if "cancel" in msg:
                cancelled.add(int(msg["cancel"]))
            else:
                requests.put(msg)
        requests.put(None)  # EOF: the bot closed us

    threading.Thread(target=read_stdin, name="requests", daemon=True).start()
    started = time.monotonic()
    try:
        import torch

        from training.hf_model import load_base, load_tokenizer, pick_device
        from training.hf_store import BaseSpec

        spec = BaseSpec.from_json(config["base"])
        device = pick_device(config.get("device") or "auto", int(config.get("threads") or 0))
        tok = load_tokenizer(spec)
        model = load_base(spec, device)
        model.eval()
    except Exception as exc:  # reported to the bot in one line
        log.exception("loading the base model failed")
        write({"fatal": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"})
        return 1
    write({"ready": True, "device": device.label, "seconds": round(time.monotonic() - started, 2)})
    worker = _Worker(model, tok, device, int(config.get("max_seq_length") or 2048), cancelled)
    while True:
        req = requests.get()
        if req is None:
            return 0
        req_id = int(req.get("id", 0))
        if req_id in cancelled:
            cancelled.discard(req_id)
            continue
        try:
            with torch.inference_mode():
                write({"id": req_id, **worker.answer(req)})
        except Exception as exc:
            log.exception("request %s failed", req_id)
            write({"id": req_id, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"})
        cancelled.discard(req_id)


class _Worker:
    """The loaded base model, its adapters (LRU) and one generate call per request."""

    def __init__(self, model: Any, tok: Any, device: Any, max_len: int, cancelled: set[int]) -> None:
        self.base = model
        self.model = model  # becomes a PeftModel once an adapter is loaded
        self.tok = tok
        self.device = device
        self.max_len = max_len
        self.cancelled = cancelled
        self.adapters: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()
        # Stop at the tokenizer's end of turn and at any the model's generation config names.
        eos = model.generation_config.eos_token_id
        self.eos = sorted({*(eos if isinstance(eos, list) else [eos] if eos is not None else []), tok.eos_token_id}
                          - {None})

    def _use(self, path: str | None) -> None:
        """Activate the adapter at ``path`` (None: the bare base), loading it first if needed."""
        from peft import PeftModel

        if path is None:
            return
        mtime = os.stat(os.path.join(path, "adapter_model.safetensors")).st_mtime
        key = f"a{abs(hash((path, mtime))) % 10**12}"
        if key not in self.adapters:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=key)
            else:
                self.model = PeftModel.from_pretrained(self.base, path, adapter_name=key)
            self.model.eval()
            self.adapters[key] = (path, mtime)
            while len(self.adapters) > MAX_ADAPTERS:
                old, _ = self.adapters.popitem(last=False)
                self.model.delete_adapter(old)
        self.adapters.move_to_end(key)
        self.model.set_adapter(key)

    def answer(self, req: AnswerRequest) -> Generated:
        import contextlib

        from peft import PeftModel
        from transformers import StoppingCriteria, StoppingCriteriaList

        from training.hf_ground import user_message
        from training.hf_model import prompt_fits, prompt_ids

        req_id = int(req["id"])
        max_new = int(req.get("max_new_tokens") or 256)
        budget = max(self.max_len - max_new, 16)
        history = [(str(r), str(c)) for r, c in req.get("history") or []]
        text = str(req["prompt"])
        raw_context = req.get("context")
        context = [(str(q), str(a)) for q, a in raw_context] if raw_context is not None else None
        if context is not None:
            # The notes, best first: the least close go until the question and its notes fit.
            while len(context) > 1 and not prompt_fits(self.tok, req.get("system"), user_message(text, context),
                                                       budget):
                context.pop()
            text = user_message(text, context)
        ids = prompt_ids(self.tok, req.get("system"), history, text, budget)
        adapter = req.get("adapter")
        self._use(adapter)
        marks: dict[str, float] = {}
        cancelled = self.cancelled

        class Watch(StoppingCriteria):
            """Called after every new token: notes the first one and stops a cancelled request."""

            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                import torch

                marks.setdefault("first", time.perf_counter())
                stop = req_id in cancelled
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        import torch

        input_ids = torch.tensor([ids], device=self.device.torch_device)
        ctx = (self.model.disable_adapter() if adapter is None and isinstance(self.model, PeftModel)
               else contextlib.nullcontext())
        started = time.perf_counter()
        with ctx:
            out = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new,
                do_sample=False, stopping_criteria=StoppingCriteriaList([Watch()]),
                pad_token_id=self.tok.pad_token_id, eos_token_id=self.eos,
            )
        ended = time.perf_counter()
        new = out[0, input_ids.shape[1]:]
        text = self.tok.decode(new, skip_special_tokens=True).strip()
        first = marks.get("first", ended)
        n = int(new.shape[0])
        return {"text": text, "tokens": n, "ttft": round(first - started, 4), "seconds": round(ended - started, 4),
                "tokens_per_s": round((n - 1) / (ended - first), 2) if n > 1 and ended > first else None,
                "cancelled": req_id in cancelled, "prompt_tokens": len(ids), "prompt": self.tok.decode(ids),
                "notes": len(context) if context is not None else 0}


if __name__ == "__main__":
    sys.exit(serve(json.loads(sys.argv[1])))
