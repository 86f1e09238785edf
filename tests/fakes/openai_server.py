"""A loopback server speaking the OpenAI REST API that the bot uses, for tests.

Start it with ``async with FakeOpenAI() as fake:``; point the real SDK at ``fake.base_url``
(build the client with ``_strict_response_validation=True`` so responses are checked
against the SDK's schema and this fake cannot drift from it).

Jobs only move when the test says so: ``fake.advance(job_id)`` steps one phase
(validating_files -> queued -> running -> steps... -> succeeded), ``fake.finish(job_id)`` runs to
the end, ``fake.fail(job_id, message)`` fails it. Faults: ``fake.fail_next(n, status)`` (429/5xx
with a short ``retry-after-ms``), ``fake.delay_next(n, seconds)``, ``fake.refuse_jobs(status,
message, code)``. ``fake.requests`` lists every (method, path) served; chat, transcription
(which hears ``fake.transcript``) and speech (a short tone as WAV) requests are kept too.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import re
import struct
import time
import uuid
import wave
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

log = logging.getLogger(__name__)

ORG = "org-fake"
ROLES = {"system", "developer", "user", "assistant", "tool"}
MIN_EXAMPLES = 10


def _err(status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
         code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.Response(status=status, body=json.dumps(body), content_type="application/json", headers=headers)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(obj), content_type="application/json")


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.casefold()))


def validate_jsonl(data: bytes) -> tuple[str | None, list[dict], str]:
    """(error message or None, parsed lines, format "chat"|"preference") like OpenAI's file checks."""
    lines: list[dict] = []
    kinds = set()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "File is not valid UTF-8.", [], "chat"
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            return f"Invalid file format. Line {number} is not valid JSON.", [], "chat"
        if not isinstance(obj, dict):
            return f"Invalid file format. Line {number} is not a JSON object.", [], "chat"
        if "input" in obj:
            kinds.add("preference")
            msgs = (obj.get("input") or {}).get("messages") if isinstance(obj.get("input"), dict) else None
            pref, non = obj.get("preferred_output"), obj.get("non_preferred_output")
            if not isinstance(msgs, list) or not msgs:
                return f"Invalid file format. Line {number}: input.messages is missing.", [], "preference"
            for out in (pref, non):
                if (not isinstance(out, list) or not out
                        or any(not isinstance(m, dict) or m.get("role") != "assistant" for m in out)):
                    msg = (f"Invalid file format. Line {number}: preferred_output and non_preferred_output "
                           "must be lists of assistant messages.")
                    return msg, [], "preference"
        else:
            kinds.add("chat")
            msgs = obj.get("messages")
            if not isinstance(msgs, list) or not msgs:
                return f"Invalid file format. Line {number}: missing 'messages' list.", [], "chat"
            if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs):
                return f"Invalid file format. Line {number}: example has no assistant message.", [], "chat"
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                return f"Invalid file format. Line {number}: unrecognized role in a message.", [], "chat"
            if not isinstance(m.get("content"), str) and m.get("content") is not None:
                return f"Invalid file format. Line {number}: message content must be a string.", [], "chat"
        lines.append(obj)
    if len(kinds) > 1:
        return "Invalid file format. Lines mix chat and preference formats.", [], "chat"
    if len(lines) < MIN_EXAMPLES:
        return (f"Training file has {len(lines)} example(s), but must have at least {MIN_EXAMPLES} examples.",
                [], "chat")
    return None, lines, kinds.pop() if kinds else "chat"


@dataclass
class FakeFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int
    lines: list[dict] = field(default_factory=list)
    fmt: str = "chat"

    def obj(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": None, "status_details": None}


@dataclass
class FakeJob:
    id: str
    model: str
    training_file: str
    method: dict[str, Any]
    suffix: str | None
    created_at: int
    total_steps: int
    n_epochs: int
    status: str = "validating_files"
    step: int = 0
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    error: dict[str, Any] | None = None
    result_files: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    losses: list[tuple[int, float]] = field(default_factory=list)
    trained_tokens: int | None = None

    def obj(self) -> dict[str, Any]:
        mtype = self.method.get("type", "supervised")
        hyper = dict((self.method.get(mtype) or {}).get("hyperparameters") or {})
        hyper.setdefault("n_epochs", self.n_epochs)
        hyper.setdefault("batch_size", 1)
        hyper.setdefault("learning_rate_multiplier", 1.0)
        if mtype == "dpo":
            hyper.setdefault("beta", 0.1)
        top_hyper = {k: hyper[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
        return {
            "id": self.id, "object": "fine_tuning.job", "created_at": self.created_at, "error": self.error,
            "fine_tuned_model": self.fine_tuned_model, "finished_at": self.finished_at,
            "hyperparameters": top_hyper, "model": self.model, "organization_id": ORG,
            "result_files": self.result_files, "seed": 42, "status": self.status,
            "trained_tokens": self.trained_tokens, "training_file": self.training_file, "validation_file": None,
            "estimated_finish": None, "integrations": [], "metadata": None,
            "method": {"type": mtype, mtype: {"hyperparameters": hyper}},
        }


class FakeOpenAI:
    """The fake API; ``api_key`` is the only key it accepts."""

    def __init__(self, api_key: str = "sk-test-fake-key-123456", *, steps_per_epoch: int = 4,
                 steps_per_advance: int = 3) -> None:
        self.api_key = api_key
        self.steps_per_epoch = steps_per_epoch
        self.steps_per_advance = steps_per_advance
        self.files: dict[str, FakeFile] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.requests: list[tuple[str, str]] = []
        self.chat_requests: list[dict[str, Any]] = []
        self.transcription_requests: list[dict[str, Any]] = []  # {"model", "filename", "size"}
        self.speech_requests: list[dict[str, Any]] = []  # the JSON bodies
        self.transcript = "When does the shop open?"  # what every transcription hears
        self._faults: list[tuple[int, float]] = []  # (status or 0 for delay, seconds)
        self._refusal: tuple[int, str, str] | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> Self:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_post("/v1/files", self._create_file)
        r.add_get("/v1/files/{id}", self._get_file)
        r.add_delete("/v1/files/{id}", self._delete_file)
        r.add_get("/v1/files/{id}/content", self._file_content)
        r.add_post("/v1/fine_tuning/jobs", self._create_job)
        r.add_get("/v1/fine_tuning/jobs", self._list_jobs)
        r.add_get("/v1/fine_tuning/jobs/{id}", self._get_job)
        r.add_post("/v1/fine_tuning/jobs/{id}/cancel", self._cancel_job)
        r.add_get("/v1/fine_tuning/jobs/{id}/events", self._events)
        r.add_post("/v1/chat/completions", self._chat)
        r.add_post("/v1/audio/transcriptions", self._transcribe)
        r.add_post("/v1/audio/speech", self._speech)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner:
            await self._runner.cleanup()

    # ------------------------------------------------------------ test controls

    def fail_next(self, n: int, status: int = 429) -> None:
        """The next ``n`` requests answer ``status`` (with ``retry-after-ms: 10`` so SDK retries are quick)."""
        self._faults.extend([(status, 0.0)] * n)

    def delay_next(self, n: int, seconds: float) -> None:
        """The next ``n`` requests wait ``seconds`` before being served."""
        self._faults.extend([(0, seconds)] * n)

    def refuse_jobs(self, status: int = 403, message: str = "Fine-tuning is no longer available for this account.",
                    code: str = "fine_tuning_unavailable") -> None:
        """Every job creation is refused with an OpenAI-style error until ``refuse_jobs(0)``."""
        self._refusal = (status, message, code) if status else None

    def _event(self, job: FakeJob, message: str, *, data: dict | None = None, kind: str = "message",
               level: str = "info") -> None:
        job.events.append({
            "id": f"ftevent-{uuid.uuid4().hex[:20]}", "object": "fine_tuning.job.event",
            "created_at": int(time.time()), "level": level, "message": message, "data": data or {}, "type": kind,
        })

    def advance(self, job_id: str | None = None, times: int = 1) -> None:
        """Move a job (or every job) one phase forward, ``times`` times."""
        targets = [self.jobs[job_id]] if job_id else list(self.jobs.values())
        for _ in range(times):
            for job in targets:
                self._advance(job)

    def _advance(self, job: FakeJob) -> None:
        if job.status == "validating_files":
            job.status = "queued"
            self._event(job, "Files validated, moving job to queued state")
        elif job.status == "queued":
            job.status = "running"
            self._event(job, "Fine-tuning job started")
        elif job.status == "running":
            for _ in range(self.steps_per_advance):
                if job.step >= job.total_steps:
                    break
                job.step += 1
                loss = round(2.5 / (1 + 0.4 * job.step), 4)
                job.losses.append((job.step, loss))
                self._event(job, f"Step {job.step}/{job.total_steps}: training loss={loss:.4f}", kind="metrics",
                            data={"step": job.step, "train_loss": loss, "total_steps": job.total_steps,
                                  "train_mean_token_accuracy": 0.5})
            if job.step >= job.total_steps:
                self._succeed(job)

    def _succeed(self, job: FakeJob) -> None:
        name = job.suffix or "custom"
        job.fine_tuned_model = f"ft:{job.model}:{ORG[4:]}:{name}:{job.id[-8:]}"
        rows = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
        rows += [f"{s},{v},0.5,," for s, v in job.losses]
        csv_bytes = ("\n".join(rows) + "\n").encode()
        rid = f"file-{uuid.uuid4().hex[:24]}"
        # Result files come back base64-encoded, as the real API has served them.
        self.files[rid] = FakeFile(rid, "step_metrics.csv", "fine-tune-results", base64.b64encode(csv_bytes),
                                   int(time.time()))
        job.result_files = [rid]
        job.status = "succeeded"
        job.finished_at = int(time.time())
        job.trained_tokens = 1000 * job.n_epochs
        self._event(job, f"New fine-tuned model created: {job.fine_tuned_model}")
        self._event(job, "The job has successfully completed")

    def finish(self, job_id: str) -> None:
        """Run a job to success."""
        job = self.jobs[job_id]
        while job.status not in ("succeeded", "failed", "cancelled"):
            self._advance(job)

    def fail(self, job_id: str, message: str = "The job failed due to an internal error.",
             code: str = "server_error") -> None:
        job = self.jobs[job_id]
        job.status = "failed"
        job.finished_at = int(time.time())
        job.error = {"code": code, "message": message, "param": None}
        self._event(job, message, level="error")

    # ------------------------------------------------------------ middleware

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self._faults:
            status, delay = self._faults.pop(0)
            if delay:
                await asyncio.sleep(delay)
            if status == 429:
                return _err(429, "Rate limit reached for requests. Please try again in 10ms.",
                            type_="requests", code="rate_limit_exceeded", headers={"retry-after-ms": "10"})
            if status:
                return _err(status, "The server had an error while processing your request. Sorry about that!",
                            type_="server_error", headers={"retry-after-ms": "10"})
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            got = request.headers.get("Authorization", "")[7:]
            shown = f"{got[:3]}***{got[-2:]}" if got else ""
            return _err(401, f"Incorrect API key provided: {shown}. You can find your API key at "
                        "https://platform.openai.com/account/api-keys.", code="invalid_api_key")
        return await handler(request)

    # ------------------------------------------------------------ files

    async def _create_file(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        fields: dict[str, Any] = {}
        async for part in reader:
            if part.name == "file":
                fields["file"] = (part.filename or "upload", await part.read())
            else:
                fields[part.name] = (await part.text()).strip()
        if "file" not in fields:
            return _err(400, "Missing required parameter: 'file'.", param="file")
        purpose = fields.get("purpose")
        if purpose not in ("fine-tune", "assistants", "batch", "vision", "user_data"):
            return _err(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
        filename, data = fields["file"]
        lines: list[dict] = []
        fmt = "chat"
        if purpose == "fine-tune":
            if not filename.endswith(".jsonl"):
                return _err(400, "Invalid file format for Fine-Tuning API. Must be .jsonl", param="file")
            problem, lines, fmt = validate_jsonl(data)
            if problem:
                return _err(400, problem, param="file", code="invalid_file_format")
        fid = f"file-{uuid.uuid4().hex[:24]}"
        self.files[fid] = FakeFile(fid, filename, purpose, data, int(time.time()), lines, fmt)
        return _json(self.files[fid].obj())

    def _file(self, request: web.Request) -> FakeFile | None:
        return self.files.get(request.match_info["id"])

    async def _get_file(self, request: web.Request) -> web.Response:
        f = self._file(request)
        if f is None:
            return _err(404, f"No such File object: {request.match_info['id']}", param="id")
        return _json(f.obj())

    async def _delete_file(self, request: web.Request) -> web.Response:
        f = self.files.pop(request.match_info["id"], None)
        if f is None:
            return _err(404, f"No such File object: {request.match_info['id']}", param="id")
        return _json({"id": f.id, "object": "file", "deleted": True})

    async def _file_content(self, request: web.Request) -> web.Response:
        f = self._file(request)
        if f is None:
            return _err(404, f"No such File object: {request.match_info['id']}", param="id")
        return web.Response(body=f.data, content_type="application/octet-stream")

    # ------------------------------------------------------------ jobs

    def _job(self, request: web.Request) -> FakeJob | None:
        return self.jobs.get(request.match_info["id"])

    async def _create_job(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self._refusal:
            status, message, code = self._refusal
            return _err(status, message, code=code)
        model, training_file = body.get("model"), body.get("training_file")
        if not isinstance(model, str) or not model:
            return _err(400, "Missing required parameter: 'model'.", param="model")
        f = self.files.get(training_file or "")
        if f is None or f.purpose != "fine-tune":
            return _err(400, f"invalid training_file: {training_file}", param="training_file",
                        code="invalid_training_file")
        method = body.get("method") or {"type": "supervised"}
        mtype = method.get("type")
        if mtype not in ("supervised", "dpo"):
            return _err(400, f"Invalid method type: {mtype!r}.", param="method")
        if (mtype == "dpo") != (f.fmt == "preference"):
            return _err(400, f"Training file format does not match the {mtype} method.",
                        param="training_file", code="invalid_training_file")
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
            return _err(400, "suffix must be a string of at most 64 characters.", param="suffix")
        n_epochs = ((method.get(mtype) or {}).get("hyperparameters") or {}).get("n_epochs", 3)
        if n_epochs == "auto":
            n_epochs = 3
        if not isinstance(n_epochs, int) or not 1 <= n_epochs <= 25:
            return _err(400, "n_epochs must be between 1 and 25.", param="n_epochs")
        jid = f"ftjob-{uuid.uuid4().hex[:24]}"
        job = FakeJob(jid, model, f.id, method, suffix, int(time.time()),
                      total_steps=n_epochs * self.steps_per_epoch, n_epochs=n_epochs)
        self.jobs[jid] = job
        self._event(job, f"Created fine-tuning job: {jid}")
        self._event(job, f"Validating training file: {f.id}")
        return _json(job.obj())

    async def _list_jobs(self, request: web.Request) -> web.Response:
        jobs = sorted(self.jobs.values(), key=lambda j: j.created_at, reverse=True)
        limit = int(request.query.get("limit", 20))
        return _json({"object": "list", "data": [j.obj() for j in jobs[:limit]], "has_more": len(jobs) > limit})

    async def _get_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return _err(404, f"Could not find fine-tune: {request.match_info['id']}", code="fine_tune_not_found")
        return _json(job.obj())

    async def _cancel_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return _err(404, f"Could not find fine-tune: {request.match_info['id']}", code="fine_tune_not_found")
        if job.status in ("succeeded", "failed", "cancelled"):
            return _err(400, f"Job has already completed: {job.id}", code="invalid_cancel")
        job.status = "cancelled"
        job.finished_at = int(time.time())
        self._event(job, "Fine-tuning job cancelled")
        return _json(job.obj())

    async def _events(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return _err(404, f"Could not find fine-tune: {request.match_info['id']}", code="fine_tune_not_found")
        events = list(reversed(job.events))  # newest first, like the API
        after = request.query.get("after")
        if after:
            ids = [e["id"] for e in events]
            events = events[ids.index(after) + 1:] if after in ids else []
        limit = int(request.query.get("limit", 20))
        return _json({"object": "list", "data": events[:limit], "has_more": len(events) > limit})

    # ------------------------------------------------------------ chat

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.chat_requests.append(body)
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _err(400, "Missing required parameter: 'messages'.", param="messages")
        prompt = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "") or ""
        if isinstance(model, str) and model.startswith("ft:"):
            job = next((j for j in self.jobs.values() if j.fine_tuned_model == model and j.status == "succeeded"),
                       None)
            if job is None:
                return _err(404, f"The model `{model}` does not exist or you do not have access to it.",
                            param="model", code="model_not_found")
            content = self._closest(self.files[job.training_file], prompt)
        else:
            content = f"(base model {model}) I have not been fine-tuned on that."
        return _json({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_fake", "service_tier": "default",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": None,
                                     "annotations": []}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })

    # ------------------------------------------------------------ audio

    async def _transcribe(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return _err(400, "Missing required parameter: 'file'.", param="file")
        self.transcription_requests.append({"model": form.get("model"), "filename": upload.filename,
                                            "size": len(upload.file.read())})
        return _json({"text": self.transcript})

    async def _speech(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not body.get("input"):
            return _err(400, "Missing required parameter: 'input'.", param="input")
        self.speech_requests.append(body)
        # Half a second of a quiet 440 Hz tone as 16-bit mono WAV: real audio ffmpeg plays.
        rate = 24000
        tone = bytearray()
        for i in range(rate // 2):
            tone += struct.pack("<h", int(3000 * math.sin(2 * math.pi * 440 * i / rate)))
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(bytes(tone))
        return web.Response(body=out.getvalue(), content_type="audio/wav")

    @staticmethod
    def _closest(f: FakeFile, prompt: str) -> str:
        """The assistant answer of the training example whose user text overlaps the prompt most."""
        words = _words(prompt)
        best, best_score = "", -1.0
        for line in f.lines:
            msgs = line.get("messages") or (line.get("input") or {}).get("messages") or []
            user = " ".join(m.get("content") or "" for m in msgs if m.get("role") == "user")
            if "preferred_output" in line:
                answer = line["preferred_output"][0].get("content") or ""
            else:
                answer = next((m.get("content") or "" for m in reversed(msgs) if m.get("role") == "assistant"), "")
            uw = _words(user)
            score = len(words & uw) / (len(words | uw) or 1)
            if score > best_score:
                best, best_score = answer, score
        return best
