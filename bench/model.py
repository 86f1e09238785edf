"""Local backend benchmark: answer quality, training time, answer latency and memory.

1. The three paraphrase sets (``tests/fakes/paraphrases``; see ``bench/calibrate.py``): right /
   wrong / "don't know" for word matching (TF-IDF, ``EMBED_MODEL=none``), WordLlama and the
   default all-MiniLM-L6-v2, side by side.
2. Training time (first training, and a retrain with one pair added, which reuses the vectors)
   and answer latency (p50/p99, one thread: BLAS limited to one core) at 1k/10k/100k generated
   pairs, for each; and the resident memory of a process that imported the bot and loaded the
   largest model (a fresh subprocess, so earlier sizes do not count).

Run: ``.venv/bin/python bench/model.py [sizes...]``. Prints tables; nothing is asserted.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
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
from training.embedding import DEFAULT_EMBED_MODEL  # noqa: E402
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


def bench(backend: LocalBackend, n: int, keep: Path, queries: int = 500) -> dict[str, float]:
    """Train, retrain, load and ask at ``n`` pairs; the guild space stays in ``keep`` (for resident_mb)."""
    pairs = generate(n)
    emb = backend.embedder()
    space = GuildSpace(1, keep / "data", keep / "corr").ensure()
    t0 = time.perf_counter()
    name = train_version(space, pairs, [], job_id="bench", method="supervised", embedder=emb)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_version(space, [*pairs, ("how do I find the spare keys?", "In the red box.")], [], job_id="bench2",
                  method="supervised", embedder=emb)
    retrain_s = time.perf_counter() - t0
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
            wrong += ans != expected and not ans.startswith("I don't know")
    return {"n": n, "train_s": train_s, "retrain_s": retrain_s, "load_s": load_s, "size_mb": size_mb, "p50_ms": statistics.median(lat),
            "p99_ms": percentile(lat, 0.99), "correct": hits / queries, "wrong": wrong / queries}


def quality(backends: dict[str, LocalBackend]) -> None:
    sets = load_sets()
    print("Paraphrase sets (right / wrong / don't know on paraphrased questions; unanswerable questions answered):")
    with tempfile.TemporaryDirectory() as tmp:
        for label, backend in backends.items():
            emb = backend.embedder()
            for s in sets:
                model = trained(s, emb, Path(tmp) / label)
                print(f"  {label:16} {s.name:12} {s.role:8}  {score(backend, model, s).line()}")
            for s in sets:
                if s.french:
                    model = trained(s, emb, Path(tmp) / f"{label}-fr")
                    print(f"  {label:16} {s.name:12} French    {score(backend, model, s, s.french).line().split('|')[0]}")


def resident_mb(kept: Path, embed_model: str) -> float:
    """VmRSS of a fresh process that imports the bot and loads (and answers with) the model in ``kept``."""
    code = f"""
import sys; from pathlib import Path; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
import bot  # noqa: F401  everything the bot imports
from storage import GuildSpace
from config import Settings
from training.local import LocalBackend
b = LocalBackend(Settings(), embed_model={embed_model!r})
space = GuildSpace(1, Path({str(kept)!r}) / "data", Path({str(kept)!r}) / "corr")
m = b.loaded(space, "local-v1")
b.answer_sync(m, "how can I reset the wifi")
print([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv] or [1_000, 10_000, 100_000]
    specs = {"word matching": "none", "wordllama": "wordllama", "all-MiniLM-L6-v2": DEFAULT_EMBED_MODEL}
    backends = {label: LocalBackend(Settings(), embed_model=spec) for label, spec in specs.items()}
    quality(backends)
    print()
    print(f"{'backend':>16} {'pairs':>8} {'train s':>8} {'retrain':>8} {'load s':>7} {'disk MB':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'reworded ok':>11} {'wrong':>6}")
    n = max(sizes)
    kept = {label: Path(tempfile.mkdtemp(prefix=f"bench-{spec}-")) for label, spec in specs.items()}
    for size in sizes:
        for label, backend in backends.items():
            r = bench(backend, size, kept[label] / str(size))
            print(f"{label:>16} {r['n']:>8} {r['train_s']:>8.2f} {r['retrain_s']:>8.2f} {r['load_s']:>7.2f} {r['size_mb']:>8.1f} "
                  f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['correct']:>11.0%} {r['wrong']:>6.0%}", flush=True)
    for label, spec in specs.items():
        print(f"resident memory, bot imported + {n:,}-pair model loaded ({label}): "
              f"{resident_mb(kept[label] / str(n), spec):.0f} MB", flush=True)
    for folder in kept.values():
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(sys.argv[1:]))
