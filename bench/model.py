"""Local backend benchmark: a training's two stages side by side, at 1k / 10k / 100k pairs.

1. The three paraphrase sets (``tests/fakes/paraphrases``; ``bench/calibrate.py`` fits the thresholds on the
   two tuning sets, ``course`` is held out): right / wrong / "don't know" at each stage of a big training, the
   quick stage (WordLlama vectors, WordLlama's calibrated thresholds) and full quality (all-MiniLM-L6-v2), each
   set trained through the real staged path; word matching (``EMBED_MODEL=none``) for reference.
2. At each size, in a fresh process that imported the bot (so its peak memory is that training's), what
   ``!train`` does with an upload of generated pairs: seconds from the upload to the first answer (the quick
   stage's, when there is one) and to full quality; the full model's pairs a second; the longest wait between
   two progress reports; answer latency p50/p99 (one thread) at each stage, the quick one asked while the full
   embedding runs; reworded questions right / wrong at each stage; peak and final resident memory; and a
   retrain with one pair added (the vectors of unchanged pairs are reused); then the memory of a fresh process
   that imported the bot and loaded the trained model (what a restarted bot holds).

Run: ``.venv/bin/python bench/model.py [sizes...]``. Prints tables; nothing is asserted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from threadpoolctl import threadpool_limits  # noqa: E402

from bench.calibrate import load_sets, score  # noqa: E402
from config import Settings  # noqa: E402
from storage import GuildSpace  # noqa: E402
from training.local import LocalBackend, fit, load_version, train_version  # noqa: E402

log = logging.getLogger(__name__)

GUILD = 1
WORDS = ["shop", "office", "admin", "password", "wifi", "dog", "meeting", "bike", "holiday", "payroll", "coffee", "lunch", "server", "channel", "role", "voice", "music", "game", "event", "ticket", "invoice", "report", "backup", "deploy", "build", "test", "release", "branch", "token", "queue", "printer", "badge", "parking", "train", "bus", "garden", "kitchen", "library", "laptop", "screen", "camera", "phone"]
VERBS = ["open", "find", "reset", "change", "book", "cancel", "fix", "move", "share", "print", "join", "leave", "update", "install", "renew"]


def generate(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rnd = random.Random(seed)
    pairs = []
    for i in range(n):
        a, b = rnd.sample(WORDS, 2)
        verb = rnd.choice(VERBS)
        pairs.append((f"how do I {verb} the {a} near the {b} number {i}?", f"To {verb} the {a} #{i}, ask in #{b}."))
    return pairs


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# ---------------------------------------------------------------- 1. the paraphrase sets at each stage

class _Held(fit.Progress):
    """A training's progress that holds it at its first check after the quick stage went live."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def check(self) -> None:
        if self.live is not None:
            self.gate.wait()
        super().check()


def quality() -> None:
    backend = LocalBackend(Settings())
    words = LocalBackend(Settings(), embed_model="none")
    print("Paraphrase sets: right / wrong / don't know on reworded questions; unanswerable questions answered")
    fit.STAGE_ABOVE, stage_above = 0, fit.STAGE_ABOVE  # every set gets a quick stage
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for s in load_sets():
                space = GuildSpace(1, Path(tmp) / s.name / "data", Path(tmp) / s.name / "corr").ensure()
                prog = _Held()
                worker = threading.Thread(target=train_version, args=(space, s.pairs, []), kwargs={
                    "job_id": f"bench-{s.name}", "method": "supervised", "embedder": backend.embedder(),
                    "quick": backend.quick_embedder, "progress": prog})
                worker.start()
                while prog.live is None and worker.is_alive():
                    time.sleep(0.01)
                assert prog.live is not None, "no quick stage"
                quick = load_version(space, prog.live, backend.embedder(), backend.quick_embedder)
                print(f"  {'quick stage':18} {s.name:12} {s.role:8}  {score(backend, quick, s).line()}", flush=True)
                prog.gate.set()
                worker.join()
                full = load_version(space, prog.live, backend.embedder(), backend.quick_embedder)
                assert full.embedder is None
                print(f"  {'full quality':18} {s.name:12} {s.role:8}  {score(backend, full, s).line()}", flush=True)
                wspace = GuildSpace(2, Path(tmp) / s.name / "wdata", Path(tmp) / s.name / "wcorr").ensure()
                plain = load_version(wspace, train_version(wspace, s.pairs, [], job_id="w", method="supervised"))
                print(f"  {'word matching':18} {s.name:12} {s.role:8}  {score(words, plain, s).line()}", flush=True)
    finally:
        fit.STAGE_ABOVE = stage_above


# ---------------------------------------------------------------- 2. one training, as !train runs it

def _rss() -> tuple[float, float]:
    """(peak, current) resident memory of this process, MB."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def _ask(backend: LocalBackend, model: object, picks: list[tuple[str, str]]) -> dict[str, float]:
    """Reworded questions through the answer rule, one BLAS thread: latency and right / wrong."""
    lat, right, wrong = [], 0, 0
    with threadpool_limits(1):
        for prompt, expected in picks:
            q = prompt.replace("how do I", "how can I").rstrip("?")
            t0 = time.perf_counter()
            ans = backend.answer_sync(model, q)  # type: ignore[arg-type]
            lat.append((time.perf_counter() - t0) * 1000)
            right += ans == expected
            wrong += ans != expected and not ans.startswith("I don't know")
    return {"p50": statistics.median(lat), "p99": percentile(lat, 0.99), "right": right / len(picks),
            "wrong": wrong / len(picks)}


async def one_training(n: int, queries: int) -> dict[str, object]:
    """Upload ``n`` generated pairs and train as ``!train`` does, in this (fresh) process; the figures."""
    import bot  # noqa: F401  everything the bot imports, as in a running bot
    from model import Model
    from records.db import Database

    tmp = Path(tempfile.mkdtemp(prefix="bench-model-"))
    settings = Settings(data_dir=tmp / "data", corrections_dir=tmp / "corr", model_backend="local")
    db = Database.open(None, settings.data_dir)
    m = Model(settings, db=db)
    await m.start()
    backend = m.backend
    assert isinstance(backend, LocalBackend)
    await asyncio.to_thread(backend.embedder)
    pairs = generate(n)
    data = "\n".join(json.dumps({"prompt": p, "completion": a}) for p, a in pairs).encode()
    rnd = random.Random(1)
    picks = [pairs[rnd.randrange(n)] for _ in range(queries)]
    out: dict[str, object] = {"n": n}
    t0 = time.perf_counter()
    await m.add_upload(GUILD, "pairs.jsonl", data, positive=True, author="bench")
    job, _ = await m.train(GUILD, started_by="bench", channel_id=1)
    out["train_call_s"] = time.perf_counter() - t0
    last_progress, last_change, gaps = None, time.perf_counter(), [0.0]
    while True:
        job = await m.poll_job(GUILD, job.id)
        now = time.perf_counter()
        if job.progress != last_progress:
            if last_progress is not None:
                gaps.append(now - last_change)
            last_progress, last_change = job.progress, now
        if "first_s" not in out and (job.live or job.status == "succeeded"):
            await m.answer(GUILD, picks[0][0])
            out["first_s"] = time.perf_counter() - t0
            out["stage"] = "quick" if job.status == "running" else "full"
            if job.status == "running":
                quick = backend.loaded(m.space(GUILD), str(job.model))
                out["quick"] = _ask(backend, quick, picks[:max(50, queries // 5)])  # while the full model embeds
                out["quick_model"] = quick.embedder.name if quick.embedder is not None else "?"
                del quick  # the backend drops it when the full vectors come: so must the bench
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        await asyncio.sleep(0.5)
    assert job.status == "succeeded", job.error
    await m.answer(GUILD, picks[0][0])
    out["full_s"] = time.perf_counter() - t0
    out["rate"] = job.examples_per_s
    out["max_gap_s"] = max(gaps)
    out["full"] = _ask(backend, backend.loaded(m.space(GUILD), str(job.model)), picks)
    out["peak_mb"], out["rss_mb"] = _rss()
    await m.add_text(GUILD, "how do I find the spare keys? => In the red box.", positive=True, author="bench")
    t0 = time.perf_counter()
    job, _ = await m.train(GUILD, started_by="bench", channel_id=1)
    await backend.wait(job.id)
    out["retrain_s"] = time.perf_counter() - t0
    await m.close()
    db.close()
    out["folder"] = str(tmp)
    return out


def resident_mb(folder: Path) -> float:
    """VmRSS of a fresh process that imports the bot, loads ``local-v1`` from ``folder`` and answers once."""
    code = f"""
import sys; from pathlib import Path; sys.path.insert(0, {str(ROOT)!r})
import bot  # noqa: F401  everything the bot imports
from config import Settings
from storage import GuildSpace
from training.local import LocalBackend
b = LocalBackend(Settings())
m = b.loaded(GuildSpace({GUILD}, Path({str(folder / "data")!r}), Path({str(folder / "corr")!r})), "local-v1")
b.answer_sync(m, "how can I reset the wifi")
print([line for line in open("/proc/self/status") if line.startswith("VmRSS")][0].split()[1])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def run_child(n: int, queries: int) -> dict[str, object]:
    """``one_training`` in a fresh process (its peak memory is this training's alone)."""
    code = (f"import asyncio, json, sys; sys.path.insert(0, {str(ROOT)!r}); from bench.model import one_training; "
            f"print('RESULT', json.dumps(asyncio.run(one_training({n}, {queries}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"the {n}-pair run failed:\n{out.stderr[-3000:]}")


def _lat(x: object) -> str:
    return f"{x['p50']:.1f}/{x['p99']:.1f}" if isinstance(x, dict) else "-"


def _ok(x: object) -> str:
    return f"{x['right']:.0%}/{x['wrong']:.0%}" if isinstance(x, dict) else "-"


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv] or [1_000, 10_000, 100_000]
    quality()
    print()
    print("!train with an upload of generated pairs (default EMBED_MODEL; seconds from the upload; p50/p99 ms,"
          " one thread; reworded questions right/wrong):")
    print(f"{'pairs':>8} {'1st answer':>10} {'stage':>6} {'full s':>7} {'pairs/s':>8} {'max gap':>7} "
          f"{'quick p50/p99':>14} {'full p50/p99':>13} {'quick ok/wrong':>15} {'full ok/wrong':>14} "
          f"{'peak MB':>8} {'end MB':>7} {'fresh MB':>8} {'retrain s':>9}")
    for n in sizes:
        r = run_child(n, 500)
        folder = Path(str(r["folder"]))
        fresh = resident_mb(folder)
        shutil.rmtree(folder, ignore_errors=True)
        q, f = r.get("quick"), r["full"]
        assert isinstance(f, dict)
        print(f"{n:>8} {r['first_s']:>10.1f} {r['stage']:>6} {r['full_s']:>7.1f} {r['rate'] or 0:>8.0f} "
              f"{r['max_gap_s']:>7.1f} {_lat(q):>14} {_lat(f):>13} {_ok(q):>15} {_ok(f):>14} "
              f"{r['peak_mb']:>8.0f} {r['rss_mb']:>7.0f} {fresh:>8.0f} {r['retrain_s']:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(sys.argv[1:]))
