"""Local backend benchmark: training time and answer latency (p50/p99) for 1k/10k/100k examples.

Run: ``/work/main/.venv/bin/python bench/model.py [sizes...]``. Prints a table; nothing is asserted.
"""

from __future__ import annotations

import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import Settings  # noqa: E402
from storage import GuildSpace
from training.local import LocalBackend, load_version, train_version

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


def bench(n: int, queries: int = 500) -> dict[str, float]:
    pairs = generate(n)
    with tempfile.TemporaryDirectory() as tmp:
        space = GuildSpace(1, Path(tmp) / "data", Path(tmp) / "corr").ensure()
        t0 = time.perf_counter()
        name = train_version(space, pairs, [], job_id="bench", method="supervised")
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = load_version(space, name)
        load_s = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in (space.models / name).iterdir()) / 1e6
        backend = LocalBackend(Settings())
        rnd = random.Random(1)
        # Paraphrased questions: the right answer must still come back.
        picks = [pairs[rnd.randrange(n)] for _ in range(queries)]
        hits = 0
        lat = []
        for prompt, expected in picks:
            q = prompt.replace("how do I", "how can I").rstrip("?")
            t0 = time.perf_counter()
            ans = backend.answer_sync(model, q)
            lat.append((time.perf_counter() - t0) * 1000)
            hits += ans == expected
        return {"n": n, "train_s": train_s, "load_s": load_s, "size_mb": size_mb,
                "p50_ms": statistics.median(lat), "p99_ms": percentile(lat, 0.99), "correct": hits / queries}


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv] or [1_000, 10_000, 100_000]
    print(f"{'examples':>9} {'train s':>8} {'load s':>7} {'disk MB':>8} {'p50 ms':>7} {'p99 ms':>7} {'correct':>8}")
    for n in sizes:
        r = bench(n)
        print(f"{r['n']:>9} {r['train_s']:>8.2f} {r['load_s']:>7.2f} {r['size_mb']:>8.1f} {r['p50_ms']:>7.2f} "
              f"{r['p99_ms']:>7.2f} {r['correct']:>8.0%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
