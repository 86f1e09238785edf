"""``LocalBackend``: the local backend's door, tying its parts together.

It loads the embedding model once (``EMBED_MODEL``; word matching when it cannot be loaded, said once
to users), and WordLlama as the quick model of big trainings' first stage when that model is a slow
transformer; starts, follows, cancels and resumes trainings (``runner``, ``fit``), keeps loaded versions
in a small cache (``store.load_version``; a version whose full vectors arrive is dropped from it), and
answers with ``answer.search`` over the version and the guild's corrections overlay (``overlay``), with
the model that made the version's vectors, off the event loop whenever that is more than a lookup.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from errors import BackendError, InvalidInput, NotFound
from training.backend import History, Job, JobUpdate, Method, Reply, TrainingBackend
from training.embedding import DEFAULT_EMBED_MODEL, DISABLED, WORDLLAMA, Embedder, TransformerEmbedder, load_embedder
from training.local import answer as answer_rule
from training.local.overlay import Overlay, Overlays
from training.local.retrieval import LocalModel, pairs_from
from training.local.runner import Runner
from training.local.store import VERSIONS, export_version, load_version

if TYPE_CHECKING:
    from config import Settings
    from dataset.compile import Compiled
    from storage import GuildSpace

log = logging.getLogger(__name__)

CACHE_SIZE = 8
# Loaded versions beyond this many pairs in all are dropped, least recently used first (the newest always stays):
# a 100,000-pair version holds ~450 MB, and after a retrain the one before it need not stay loaded too.
CACHE_PAIRS = 150_000
THREAD_ABOVE = 5_000  # word matching answers in a worker thread when the index is this big


class LocalBackend(TrainingBackend):
    """Offline retrieval + classifier models, one numbered version per training."""

    name = "local"
    trainer_title = "The local model"
    methods = ("supervised",)  # retrieval has no preference training: corrections already win outright
    poll_seconds = 0.5  # jobs run in this process and finish in seconds
    ignored_check_codes = frozenset({"missing_system_message", "too_many_tokens"})
    blurb = ("Model: the built-in **local** backend — it learns from this server's examples and corrections "
             "in seconds, answers with the closest example it was trained on and classifies labelled texts. "
             "It retrieves, it does not generate new text.")
    no_loss_reason = ("No loss curve: this local model answers by finding the closest trained example, "
                      "which has no training loss (only labelled texts train a classifier with one).")
    no_loss_status = "none (nearest-example model)"
    applies_corrections_now = True  # corrections are searched before the trained pairs
    versions = VERSIONS  # the models are the local-v<N> folders on disk
    progress_unit = "pairs embedded"
    quick_model = WORDLLAMA  # a big training answers with it first, while the transformer embeds

    def __init__(self, settings: Settings, *, openai_client: Any = None, embed_model: str | None = None) -> None:
        super().__init__(settings)
        self.prefix = settings.prefix
        self.embed_model = embed_model or settings.embed_model or DEFAULT_EMBED_MODEL
        self.runner = Runner(on_upgrade=self._upgraded)
        self._cache: OrderedDict[tuple[int, str], LocalModel] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._loading: dict[tuple[int, str], threading.Lock] = {}  # one load per version at a time
        self._embed_lock = threading.Lock()
        self._embedder: Embedder | None = None
        self._embed_error: str | None = None  # why the embedding model is not in use
        self._embed_tried = False
        self._quick: Embedder | None = None
        self._quick_tried = False
        self._note_pending = False  # the one-time "word matching only" note for users
        self._overlays = Overlays(self.embedder)

    # ------------------------------------------------------------ the embedding model

    def embedder(self) -> Embedder | None:
        """The loaded embedding model, loading it on first use (sync); None: word matching."""
        if self._embed_tried:
            return self._embedder
        with self._embed_lock:
            if not self._embed_tried:
                if self.embed_model.lower() in DISABLED:
                    self._embed_error = "EMBED_MODEL is off"
                    log.info("EMBED_MODEL=%s: answering by word matching", self.embed_model)
                else:
                    try:
                        self._embedder = load_embedder(self.embed_model)
                        log.info("embedding model %s loaded from %s (%d dimensions)", self.embed_model,
                                 self._embedder.source, self._embedder.dim)
                        if not self._embedder.calibrated:
                            log.warning("EMBED_MODEL=%s has no calibrated thresholds: using strict defaults "
                                        "(run bench/calibrate.py to measure it)", self.embed_model)
                    except (BackendError, OSError, ValueError, RuntimeError) as exc:
                        self._embed_error = f"EMBED_MODEL={self.embed_model} could not be loaded: {exc}"
                        self._note_pending = True
                        log.warning("%s; answering by word matching instead", self._embed_error)
                self._embed_tried = True
        return self._embedder

    def quick_embedder(self) -> Embedder | None:
        """The quick first stage's model (sync, loads on first use): WordLlama when the embedding model is a
        transformer (slow to embed many pairs); None otherwise or when it cannot be loaded (no quick stage)."""
        if self._quick_tried:
            return self._quick
        with self._embed_lock:
            if not self._quick_tried:
                if isinstance(self.embedder(), TransformerEmbedder):
                    try:
                        self._quick = load_embedder(self.quick_model)
                    except (BackendError, OSError, ValueError, RuntimeError) as exc:
                        log.warning("quick model %s could not be loaded (%s): big trainings answer only when "
                                    "their embedding is done", self.quick_model, exc)
                self._quick_tried = True
        return self._quick

    def _upgraded(self, guild_id: int, name: str) -> None:
        """A version's full vectors are saved (worker thread): its loaded copy, with quick vectors, goes."""
        with self._cache_lock:
            self._cache.pop((guild_id, name), None)

    def describe(self) -> str:
        """One line for ``!model``/``!help``: how this backend answers."""
        emb = self.embedder()
        if emb is not None:
            offers = " and offers the closest questions it knows" if emb.thresholds.suggest is not None else ""
            return f"answers by meaning with the `{emb.name}` embedding model; unsure: says it doesn't know{offers}"
        return f"answers by word matching ({self._embed_error or 'no embedding model'})"

    async def start(self) -> None:
        """Load the embedding model in a worker thread, before the first message needs it."""
        await asyncio.to_thread(self.embedder)

    async def close(self) -> None:
        await self.runner.close()

    async def start_job(
        self, space: GuildSpace, compiled: Compiled, *, method: Method, suffix: str
    ) -> Job:
        """Start training in a worker thread; returns at once with a running job."""
        pairs = pairs_from(compiled)
        labelled = [(t, lab) for t, lab in compiled.labelled if t.strip() and lab.strip()]
        if method == "dpo" and not compiled.preference:
            raise InvalidInput("DPO needs preference pairs (a preferred and a rejected answer); there are none yet.")
        if not pairs and len({lab for _, lab in labelled}) < 2:
            raise InvalidInput("Nothing to train on: add prompt/answer examples or texts with at least two labels.")
        embedder = await asyncio.to_thread(self.embedder)
        run = self.runner.start(space, pairs, labelled, method=method, embedder=embedder, quick=self.quick_embedder)
        return Job(id=run.job_id, backend=self.name, method=method, status="running",
                   total_steps=run.progress.total_steps,
                   extra={"pairs": len(pairs), "labelled": len(labelled), "attempts": run.attempts})

    async def poll(self, space: GuildSpace, job: Job) -> JobUpdate:
        """Progress of a training of this process; one cut short by a restart goes on from its work folder."""
        return await self.runner.poll(space, job, self.embedder, self.quick_embedder)

    async def wait(self, job_id: str) -> None:
        """Wait until a job started by this process ends (tests, benchmarks)."""
        await self.runner.wait(job_id)

    async def cancel(self, space: GuildSpace, job: Job) -> JobUpdate:
        return await self.runner.cancel(space, job)

    # ------------------------------------------------------------ answering

    def loaded(self, space: GuildSpace, name: str) -> LocalModel:
        """The cached model for (guild, version), loading it if needed (sync; may hit the disk)."""
        key = (space.guild_id, name)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # several answers asking for a version not loaded yet (the evaluation gate's) load it once
            with self._cache_lock:
                if key in self._cache:
                    return self._cache[key]
            model = load_version(space, name, self.embedder(), self.quick_embedder)
            with self._cache_lock:
                self._cache[key] = model
                self._loading.pop(key, None)
                while len(self._cache) > 1 and (len(self._cache) > CACHE_SIZE or sum(
                        len(m.answers) for m in self._cache.values()) > CACHE_PAIRS):
                    self._cache.popitem(last=False)
        return model

    async def _model(self, space: GuildSpace, name: str) -> LocalModel:
        with self._cache_lock:
            cached = self._cache.get((space.guild_id, name))
        if cached is not None:
            return cached
        try:
            return await asyncio.to_thread(self.loaded, space, name)
        except NotFound:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise BackendError(f"Model `{name}` could not be loaded ({exc}); train again or pick another.") from None

    def method_refusal(self, method: str) -> str:
        return (f"The local model does not train with `{method}`: it answers with corrections as soon as they "
                f"are made and learns them in a plain `{self.prefix}train`. For preference (DPO) training of a "
                f"generative model, use `MODEL_BACKEND=hf` or `openai`.")

    def not_trained(self) -> str:
        return (f"I haven't been trained on this server yet. A trainer can add examples and run "
                f"`{self.prefix}train` to teach me.")

    async def export(self, space: GuildSpace, model_name: str) -> Path:
        """Zip the version's pairs and vectors with a README on using them elsewhere; the zip's path."""
        target = space.archives / f"{model_name}-local.zip"
        return await asyncio.to_thread(export_version, space, model_name, target)

    def dont_know(self, suggestions: Sequence[str] = ()) -> str:
        """The honest "I don't know", offering the closest trained questions when there are some."""
        return answer_rule.dont_know(self.prefix, suggestions, reviewed=self.settings.review_corrections)

    def match(self, model: LocalModel | None, prompt: str, overlay: Overlay | None = None) -> tuple[str, int] | None:
        """(answer, source) for ``prompt`` or None for "don't know"; source 0 = trained, 1 = correction."""
        return self.search(model, prompt, overlay)[0]

    def search(self, model: LocalModel | None, prompt: str,
               overlay: Overlay | None = None) -> tuple[tuple[str, int] | None, list[str]]:
        """``match``'s result, and when it is None the trained questions worth suggesting instead.

        Sync and CPU-bound: ``answer`` runs it in a thread (with embeddings always, since embedding
        the question is a forward pass; word matching above ``THREAD_ABOVE`` pairs).
        """
        return answer_rule.search(model, prompt, overlay, self._embedder_of(model))

    def _embedder_of(self, model: LocalModel | None) -> Embedder | None:
        """The model that embeds questions for ``model``: the one that made its vectors (a quick stage's) or ours."""
        return model.embedder if model is not None and model.embedder is not None else self.embedder()

    def answer_sync(self, model: LocalModel | None, prompt: str, overlay: Overlay | None = None) -> str:
        """The trained (or corrected) answer closest to ``prompt``, or an honest "I don't know yet"."""
        found, suggestions = self.search(model, prompt, overlay)
        return found[0] if found is not None else self.dont_know(suggestions)

    def _with_note(self, text: str) -> str:
        """The one-time note that the embedding model is missing, on the first answer after start."""
        if self._note_pending:
            self._note_pending = False
            text += (f"\n-# Note: my embedding model could not be loaded, so I match words only for now "
                     f"(an admin can check `EMBED_MODEL` and the log; `{self.prefix}model` says more).")
        return text

    async def answer(self, space: GuildSpace, model_name: str | None, prompt: str, history: History) -> str:
        """Retrieval answer; ``history`` is not used by this backend (each prompt stands alone)."""
        return (await self.reply(space, model_name, prompt, history)).text

    async def reply(self, space: GuildSpace, model_name: str | None, prompt: str, history: History) -> Reply:
        """``answer``, with the offered (question, answer) pairs when it does not know."""
        if not self._embed_tried:
            await asyncio.to_thread(self.embedder)  # loading reads ~90 MB: not on the loop
        model = await self._model(space, model_name) if model_name else None
        overlay = await self._overlays.get(space, self._embedder_of(model))  # corrections count at once
        if model is None and (overlay is None or not overlay.prompts):
            return Reply(self._with_note(self.not_trained()))
        if self._embedder is not None or model is not None and len(model.answers) > THREAD_ABOVE:
            # Embedding the question is a transformer's forward pass (~10 ms): never on the loop.
            return self._noted(await asyncio.to_thread(self.reply_sync, model, prompt, overlay))
        return self._noted(self.reply_sync(model, prompt, overlay))

    def reply_sync(self, model: LocalModel | None, prompt: str, overlay: Overlay | None = None) -> Reply:
        found, offers = answer_rule.search_offers(model, prompt, overlay, self._embedder_of(model))
        if found is not None:
            return Reply(found[0])
        return Reply(self.dont_know([q for q, _ in offers]), tuple(offers),
                     answer_rule.dont_know_offer(self.prefix, reviewed=self.settings.review_corrections) if offers else "")

    def _noted(self, reply: Reply) -> Reply:
        text = self._with_note(reply.text)
        if text == reply.text:
            return reply
        return Reply(text, reply.offers, reply.offer_text + text[len(reply.text):] if reply.offers else "")

    def embed(self, texts: Sequence[str]) -> Any:
        emb = self.embedder()
        return None if emb is None else emb.encode(list(texts))

    def same_meaning(self) -> float:
        emb = self.embedder()
        return 1.0 if emb is None else emb.thresholds.min_score

    async def predict_label(self, space: GuildSpace, model_name: str | None, text: str) -> str:
        """The classifier's label; falls back to the retrieval answer when no classifier was trained."""
        if not model_name:
            return self.not_trained()
        model = await self._model(space, model_name)
        label = model.label(text)
        if label is not None:
            return label
        if self._embedder is not None or len(model.answers) > THREAD_ABOVE:
            return await asyncio.to_thread(self.answer_sync, model, text)
        return self.answer_sync(model, text)
