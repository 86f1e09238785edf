"""The OpenAI fine-tuning API (or Azure OpenAI's v1 endpoint, via ``OPENAI_BASE_URL``).

One ``openai.AsyncOpenAI`` client for the bot's lifetime. Rate limits (429), server errors
(5xx), timeouts and dropped connections are retried by the SDK with exponential backoff
(honouring ``Retry-After``) up to ``max_retries``; after that a :class:`BackendError` with a
plain message is raised. Refusals (400/401/403/404...) carry OpenAI's own error text. The API
key is never logged and is scrubbed from every message.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import logging
import re
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import openai

from errors import BackendError, InvalidInput
from training.backend import History, Job, JobUpdate, Method, TrainingBackend

if TYPE_CHECKING:
    from config import Settings
    from dataset.compile import Compiled
    from dataset.lines import ChatLine, PreferenceLine
    from storage import GuildSpace

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_MAX_RETRIES = 3
DEFAULT_TIMEOUT = 60.0
EVENTS_PAGE = 100
SYSTEM_PROMPT = (
    "You are the assistant of this Discord server, fine-tuned by its members. "
    "Answer briefly and helpfully; if you do not know, say so."
)
MISSING_KEY = (
    "OpenAI is not configured: set OPENAI_API_KEY=sk-... in .env (and OPENAI_BASE_URL for Azure "
    "or a proxy), then restart the bot. Or use MODEL_BACKEND=local to train offline."
)
SHUTDOWN_HINT = ("(OpenAI stops new self-serve fine-tuning jobs for everyone on 2027-01-06: set MODEL_BACKEND=hf "
                 "to fine-tune an open-weights model on this machine instead.)")
AZURE_DEPLOY_NOTE = ("On Azure OpenAI a fine-tuned model answers only once it is deployed: create a deployment "
                     "named `{model}` for it (Azure AI Foundry or `az cognitiveservices account deployment "
                     "create`) before chatting.")
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*.]{3,})")


def _suffix(text: str) -> str:
    """OpenAI allows up to 64 characters in a suffix; keep it to safe ones."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40] or "trainer"


def jsonl(lines: list[ChatLine] | list[PreferenceLine]) -> bytes:
    return b"".join(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n" for line in lines)


def parse_result_csv(content: bytes) -> list[tuple[int, float]]:
    """(step, train_loss) from a job's result file (plain or base64-encoded CSV)."""
    text = content.decode("utf-8", "replace")
    if not text.lstrip().startswith("step"):
        try:  # result files have been served base64-encoded
            text = base64.b64decode(content, validate=False).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return []
    points = []
    for row in csv.DictReader(io.StringIO(text)):
        try:
            points.append((int(float(row["step"])), float(row["train_loss"])))
        except (KeyError, TypeError, ValueError):
            continue
    return points


def make_client(settings: Settings, **options: Any) -> openai.AsyncOpenAI | None:
    """The bot's one OpenAI client (fine-tuning, chat, transcription, speech), or None without a key.

    ``options`` go to ``AsyncOpenAI`` (tests pass ``_strict_response_validation=True``).
    """
    if not settings.openai_api_key:
        return None
    return openai.AsyncOpenAI(api_key=settings.openai_api_key, base_url=settings.openai_base_url,
                              max_retries=options.pop("max_retries", DEFAULT_MAX_RETRIES),
                              timeout=options.pop("timeout", DEFAULT_TIMEOUT), **options)


class OpenAIBackend(TrainingBackend):
    """Fine-tuning jobs and chat answers through the OpenAI API."""

    name = "openai"
    min_examples = 10  # the API refuses fewer
    trainer_title = "OpenAI"
    methods = ("supervised", "dpo")
    bills_tokens = True
    generates = True  # a fine-tuned chat model writes its answers: scored by meaning
    paid = True  # every answer is a billed chat completion: members' daily budgets apply
    blurb = ("Model: **OpenAI fine-tuning** — training runs as a fine-tuning job on OpenAI (or Azure OpenAI), "
             "and answers come from the fine-tuned model. OpenAI takes no new fine-tuning jobs from 2027-01-06 and "
             "its gpt-4o/4.1 fine-tunes stop answering on 2027-01-14; `MODEL_BACKEND=hf` trains a model you keep.")

    def __init__(
        self,
        settings: Settings,
        *,
        openai_client: openai.AsyncOpenAI | None = None,
        system_prompt: str = SYSTEM_PROMPT,
    ) -> None:
        super().__init__(settings)
        self.base_model = settings.openai_base_model
        self.system_prompt = system_prompt
        # The bot builds the one client (bot.make_openai_client) and hands it in; it closes it too.
        self._client = openai_client

    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            raise BackendError(MISSING_KEY)
        return self._client

    def _scrub(self, text: str) -> str:
        key = self.settings.openai_api_key
        if key:
            text = text.replace(key, "sk-***")
        return _KEYLIKE.sub("sk-***", text)

    async def _call(self, what: str, coro: Awaitable[T]) -> T:
        """Await an SDK call, turning its errors into one safe BackendError line."""
        max_retries = getattr(self._client, "max_retries", 0)
        retries = f"after {max_retries} retries" if max_retries else "(retries are off)"
        try:
            return await coro
        except openai.APITimeoutError:
            raise BackendError(f"OpenAI did not answer in time while trying to {what} {retries}; "
                               "try again later.") from None
        except openai.APIConnectionError:
            where = self.settings.openai_base_url or "api.openai.com"
            raise BackendError(f"Could not reach OpenAI ({where}) to {what} {retries}; "
                               "check the network or OPENAI_BASE_URL.") from None
        except openai.RateLimitError as exc:
            raise BackendError(self._scrub(f"OpenAI is rate-limiting us (429) {retries} while trying to {what}: "
                                           f"{self._message(exc)} Try again later.")) from None
        except openai.InternalServerError as exc:
            raise BackendError(self._scrub(f"OpenAI had a server error ({exc.status_code}) {retries} while "
                                           f"trying to {what}; try again later.")) from None
        except openai.AuthenticationError as exc:
            raise BackendError(self._scrub(f"OpenAI rejected the API key (401): {self._message(exc)} "
                                           "Check OPENAI_API_KEY in .env.")) from None
        except openai.APIStatusError as exc:
            err = BackendError(self._scrub(f"OpenAI refused to {what} ({exc.status_code}): {self._message(exc)}"))
            err.status = exc.status_code  # start_job tells a refusal apart
            raise err from None
        except openai.OpenAIError as exc:
            raise BackendError(self._scrub(f"OpenAI client error while trying to {what}: {exc}")) from None

    @staticmethod
    def _message(exc: openai.APIStatusError) -> str:
        body = exc.body
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return body["message"]
        return str(exc.message)

    # ------------------------------------------------------------ jobs

    async def start_job(
        self, space: GuildSpace, compiled: Compiled, *, method: Method, suffix: str
    ) -> Job:
        """Upload the JSONL and create the job; a refusal raises and leaves no job behind."""
        client = self.client
        lines = compiled.supervised if method == "supervised" else compiled.preference
        if not lines:
            what = "chat examples" if method == "supervised" else "preference pairs (DPO)"
            raise InvalidInput(f"There are no {what} to fine-tune on.")
        data = jsonl(lines)
        filename = f"guild-{space.guild_id}-{method}.jsonl"
        uploaded = await self._call("upload the training file",
                                    client.files.create(file=(filename, data), purpose="fine-tune"))
        hyper: dict[str, Any] = {}
        epochs = getattr(compiled.report, "epochs", None)
        if isinstance(epochs, int) and epochs > 0:
            hyper["n_epochs"] = epochs  # the same epochs the cost estimate used
        method_param: dict[str, Any] = {"type": method, method: {"hyperparameters": hyper}}
        try:
            job = await self._call(
                "start the fine-tuning job",
                client.fine_tuning.jobs.create(
                    model=self.base_model, training_file=uploaded.id, method=method_param,  # type: ignore[arg-type]
                    suffix=_suffix(suffix),
                ),
            )
        except BackendError as exc:
            # Don't leave an orphan upload behind a refused job; best effort only.
            try:
                await client.files.delete(uploaded.id)
            except openai.OpenAIError:
                log.info("could not delete upload %s after a refused job", uploaded.id)
            if getattr(exc, "status", None) in (400, 403, 404):  # refused, not a key or rate problem
                raise BackendError(f"{exc} {SHUTDOWN_HINT}") from None
            raise
        log.info("guild %s: started OpenAI job %s (%s, %d lines)", space.guild_id, job.id, method, len(lines))
        return Job(id=job.id, backend=self.name, method=method, status=job.status, total_steps=None,
                   extra={"training_file": uploaded.id, "base_model": job.model})

    async def poll(self, space: GuildSpace, job: Job) -> JobUpdate:
        """Status from ``retrieve``, progress and loss from new ``metrics`` events."""
        client = self.client
        info = await self._call("check the job", client.fine_tuning.jobs.retrieve(job.id))
        page = await self._call("read the job's events",
                                client.fine_tuning.jobs.list_events(job.id, limit=EVENTS_PAGE))
        last_seen = job.extra.get("last_event_id")
        fresh = []
        for event in page.data:  # newest first: stop at the newest one already seen
            if event.id == last_seen:
                break
            fresh.append(event)
        fresh.reverse()
        update = JobUpdate(status=info.status, fine_tuned_model=info.fine_tuned_model)
        if page.data:
            update.extra["last_event_id"] = page.data[0].id
        for event in fresh:
            data = event.data if isinstance(event.data, dict) else {}
            if event.type == "metrics" and "step" in data:
                step = int(data["step"])
                update.step = step
                if data.get("total_steps"):
                    update.total_steps = int(data["total_steps"])
                if data.get("train_loss") is not None:
                    update.losses.append((step, float(data["train_loss"])))
            else:
                update.events.append(event.message)
        if info.error is not None and info.error.message:
            update.error = self._scrub(info.error.message)
        if info.status == "succeeded":
            if job.total_steps or update.total_steps:
                update.step = update.total_steps or job.total_steps
            # The result file has every step's metrics, also those beyond the events page.
            for file_id in info.result_files[:1]:
                try:
                    content = await client.files.content(file_id)
                    update.losses = parse_result_csv(content.content) or update.losses
                except openai.OpenAIError as exc:
                    log.info("job %s: result file %s unreadable: %s", job.id, file_id, type(exc).__name__)
            if update.losses and not update.total_steps and not job.total_steps:
                update.total_steps = update.step = update.losses[-1][0]
        if info.status == "succeeded" and info.fine_tuned_model and "azure.com" in (self.settings.openai_base_url or ""):
            update.note = AZURE_DEPLOY_NOTE.format(model=info.fine_tuned_model)
        if info.trained_tokens is not None:
            update.extra["trained_tokens"] = info.trained_tokens
        return update

    async def cancel(self, space: GuildSpace, job: Job) -> JobUpdate:
        info = await self._call("cancel the job", self.client.fine_tuning.jobs.cancel(job.id))
        return JobUpdate(status=info.status, fine_tuned_model=info.fine_tuned_model)

    # ------------------------------------------------------------ answering

    async def answer(self, space: GuildSpace, model_name: str | None, prompt: str, history: History) -> str:
        """Chat with the guild's fine-tuned model (the base model until one is trained)."""
        messages: list[dict[str, str]] = [{"role": "system", "content": self.system_prompt}]
        for role, content in history:
            if role in ("user", "assistant") and content:
                messages.append({"role": role, "content": content})
        messages.append({"role": "user", "content": prompt})
        reply = await self._call(
            "answer",
            self.client.chat.completions.create(model=model_name or self.base_model, messages=messages),  # type: ignore[arg-type]
        )
        if not reply.choices:
            raise BackendError("OpenAI returned no answer.")
        msg = reply.choices[0].message
        if msg.content:
            return msg.content.strip()
        if msg.refusal:
            return msg.refusal
        raise BackendError("OpenAI returned an empty answer.")
