"""Local backend benchmark: answer quality, training time, answer latency and memory.

1. The three paraphrase sets (``tests/fakes/paraphrases``; see ``bench/calibrate.py``): right /
   wrong / "don't know" for word matching (TF-IDF, ``EMBED_MODEL=none``) and for the default
   embedding model, side by side.
2. Training time and answer latency (p50/p99, one thread: BLAS limited to one core) at
   1k/10k/100k generated pairs, for both; and the resident memory of a process that imported the
   bot and loaded the largest model (a fresh subprocess, so earlier sizes do not count).

Run: ``.venv/bin/python bench/model.py [sizes...]``. Prints tables; nothing is asserted.
"""

from __future__ import annotations

import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threadpoolctl import threadpool_limits  # noqa: E402

from bench.calibrate import load_sets, score, trained  # noqa: E402
from config import Settings  # noqa: E402
from storage import GuildSpace  # noqa: E402
from training.local import LocalBackend, load_version, train_version  # noqa: E402

log = logging.getLogger(__name__)

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


def bench(backend: LocalBackend, n: int, queries: int = 500) -> dict[str, float]:
    pairs = generate(n)
    emb = backend.embedder()
    with tempfile.TemporaryDirectory() as tmp:
        space = GuildSpace(1, Path(tmp) / "data", Path(tmp) / "corr").ensure()
        t0 = time.perf_counter()
        name = train_version(space, pairs, [], job_id="bench", method="supervised", embedder=emb)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = load_version(space, name, emb)
        load_s = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in (space.models / name).iterdir()) / 1e6
        rnd = random.Random(1)
        # Reworded questions: the right answer must still come back.
        picks = [pairs[rnd.randrange(n)] for _ in range(queries)]
        hits = wrong = 0
        lat = []
        with threadpool_limits(1):  # one core, as the issue asks
            for prompt, expected in picks:
                q = prompt.replace("how do I", "how can I").rstrip("?")
                t0 = time.perf_counter()
                ans = backend.answer_sync(model, q)
                lat.append((time.perf_counter() - t0) * 1000)
                hits += ans == expected
                wrong += ans != expected and ans != backend.dont_know()
        return {"n": n, "train_s": train_s, "load_s": load_s, "size_mb": size_mb, "p50_ms": statistics.median(lat),
                "p99_ms": percentile(lat, 0.99), "correct": hits / queries, "wrong": wrong / queries}


def quality(backends: dict[str, LocalBackend]) -> None:
    sets = load_sets()
    print("Paraphrase sets (right / wrong / don't know on paraphrased questions; unanswerable questions answered):")
    with tempfile.TemporaryDirectory() as tmp:
        for label, backend in backends.items():
            emb = backend.embedder()
            for s in sets:
                model = trained(s, emb, Path(tmp) / label)
                print(f"  {label:14} {s.name:12} {s.role:8}  {score(backend, model, s).line()}")
            for s in sets:
                if s.french:
                    model = trained(s, emb, Path(tmp) / f"{label}-fr")
                    print(f"  {label:14} {s.name:12} French    {score(backend, model, s, s.french).line().split('|')[0]}")


def resident_mb(n: int, embed_model: str) -> float:
    """VmRSS of a fresh process that imports the bot and loads (and answers with) an n-pair model."""
    code = f"""
import sys, tempfile; from pathlib import Path; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
import bot  # noqa: F401  everything the bot imports
from bench.model import generate
from storage import GuildSpace
from config import Settings
from training.local import LocalBackend, train_version
b = LocalBackend(Settings(), embed_model={embed_model!r})
with tempfile.TemporaryDirectory() as tmp:
    space = GuildSpace(1, Path(tmp) / "d", Path(tmp) / "c").ensure()
    name = train_version(space, generate({n}), [], job_id="rss", method="supervised", embedder=b.embedder())
    b._cache.clear()
    import gc; gc.collect()
    m = b.loaded(space, name)
    b.answer_sync(m, "how can I reset the wifi")
    print([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv] or [1_000, 10_000, 100_000]
    backends = {"word matching": LocalBackend(Settings(), embed_model="none"), "wordllama": LocalBackend(Settings(), embed_model="wordllama")}
    quality(backends)
    print()
    print(f"{'backend':>14} {'pairs':>8} {'train s':>8} {'load s':>7} {'disk MB':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'reworded ok':>11} {'wrong':>6}")
    for n in sizes:
        for label, backend in backends.items():
            r = bench(backend, n)
            print(f"{label:>14} {r['n']:>8} {r['train_s']:>8.2f} {r['load_s']:>7.2f} {r['size_mb']:>8.1f} "
                  f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['correct']:>11.0%} {r['wrong']:>6.0%}", flush=True)
    n = max(sizes)
    for label, spec in (("word matching", "none"), ("wordllama", "wordllama")):
        print(f"resident memory, bot imported + {n:,}-pair model loaded ({label}): {resident_mb(n, spec):.0f} MB",
              flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(sys.argv[1:]))
