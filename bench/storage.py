"""Benchmark of the records' database, SQLite and PostgreSQL side by side; prints figures, asserts nothing.

    python bench/storage.py [--answers 1000000] [--steps 10000] [--legacy 100000] [--lookups 2000]

1. Lookups with ``--answers`` logged answers (goal: p99 <= 5 ms): a 👎 (record the reaction and decide whether
   to ask), a reply to the bot's ask (find the ask, then its answer), a reaction (find the answer).
2. A ``--steps``-step job: the bytes its records take at 1/10 and at all of the steps (they must grow
   linearly: one row per loss point, the job row updated in place).
3. An answer's record-keeping, today (before the database: state.json read twice, one fsynced JSONL append,
   the corrections files stat-ed) against now (the current model, the answer logged, the corrections'
   signature), p50/p99, measured in the same run on the same disk (goal: at most +1 ms at p50).
4. The one-time import of a legacy folder with ``--legacy`` logged answers.

PostgreSQL is a throwaway server on a Unix socket (tests/postgres.py; needs Debian's postgresql package); it
runs with the server's default durability, as a deployment would.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Import the project, not this folder (a script's folder comes first on sys.path).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

from dataset import corrections as records
from records.db import Database
from records.legacy import import_legacy
from storage import GuildSpace, append_record, read_json, utc_now
from tests.postgres import PostgresServer, find_bin
from training import jobs
from training.backend import Job

GUILD = 4242
CHANNEL, USER = 10, 20


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def fill_answers(db: Database, n: int) -> None:
    """``n`` logged answers (and as many asks, one per answer) across 50 channels and 1,000 askers."""
    rng = random.Random(1)
    now = utc_now()
    batch = 50_000
    for start in range(0, n, batch):
        rows = [(GUILD, 10_000_000 + i, 0, 100 + i % 50, 9_000_000 + i, 1_000 + rng.randrange(1000), "someone",
                 "local-v3", f"question number {i} about something", f"answer number {i}", now)
                for i in range(start, min(n, start + batch))]
        asks = [(GUILD, 50_000_000 + i, 10_000_000 + i, 100, 1_000 + i % 1000, "someone", now)
                for i in range(start, min(n, start + batch), 10)]
        if db.engine == "postgresql":
            conn = db._conn()
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy("COPY answers (guild_id, message_id, part, channel_id, prompt_message_id, author_id, "
                              "author_name, model, prompt, answer, created_at) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                with cur.copy("COPY asks (guild_id, ask_message_id, message_id, channel_id, author_id, author_name, "
                              "created_at) FROM STDIN") as copy:
                    for row in asks:
                        copy.write_row(row)
        else:
            with db.tx() as tx:
                tx.executemany("INSERT INTO answers (guild_id, message_id, part, channel_id, prompt_message_id, "
                               "author_id, author_name, model, prompt, answer, created_at) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                tx.executemany("INSERT INTO asks (guild_id, ask_message_id, message_id, channel_id, author_id, "
                               "author_name, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)", asks)
    if db.engine == "postgresql":
        with db.tx() as tx:
            tx.execute("ANALYZE")


def bench_lookups(space: GuildSpace, n_answers: int, n: int) -> dict[str, tuple[float, float]]:
    rng = random.Random(2)

    def some_answer() -> int:
        return 10_000_000 + rng.randrange(n_answers)

    def thumbs_down() -> None:  # a 👎: its answer, and whether this person was asked about it already
        mid = some_answer()
        assert records.find_answer(space, mid) is not None
        records.was_asked(space, mid, 1_000 + rng.randrange(1000))

    def thumbs_down_recorded() -> None:  # Model.react whole: the lookups and the durable write (fsync)
        mid = some_answer()
        answer = records.find_answer(space, mid)
        assert answer is not None
        records.add_reaction(space, message_id=mid, channel_id=CHANNEL, kind="down", added=True,
                             author_id=rng.randrange(10**6), author_name="x", model=answer.model)

    def reply_to_ask() -> None:  # Model.answer_asked_about
        ask = records.find_ask(space, 50_000_000 + 10 * rng.randrange(n_answers // 10))
        assert ask is not None and records.find_answer(space, ask.message_id) is not None

    def reaction_answer() -> None:
        assert records.find_answer(space, some_answer()) is not None

    out = {}
    for name, fn in (("👎 → answer, asked?", thumbs_down), ("reply to an ask → answer", reply_to_ask),
                     ("reaction → answer", reaction_answer), ("👎 recorded (+ fsync)", thumbs_down_recorded)):
        timed(fn, 50)  # warm
        samples = timed(fn, n)
        out[name] = (statistics.median(samples), pct(samples, 0.99))
    return out


def db_bytes(db: Database) -> int:
    with db.tx(write=False) as tx:
        if db.engine == "sqlite":
            return int(tx.scalar("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"))
        return int(tx.scalar("SELECT pg_total_relation_size('jobs') + pg_total_relation_size('job_losses')"))


def bench_job(space: GuildSpace, steps: int) -> list[tuple[int, int]]:
    """Run a job's records as the watcher writes them (one save per poll of 10 new steps); bytes at milestones."""
    job = Job(id="bench-job", backend="hf", status="running", total_steps=steps)

    def size() -> int:
        if space.db.engine == "sqlite":  # outside a transaction: the log folded into the file
            space.db._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            space.db._conn().execute("VACUUM job_losses")
            space.db._conn().execute("VACUUM jobs")
        return db_bytes(space.db)

    jobs.save_job(space, job)
    base = size()
    marks = {steps // 10, steps // 2, steps}
    sizes = []
    for step in range(10, steps + 1, 10):
        job.step = step
        jobs.save_job(space, job, [(s, 1.0 / s) for s in range(step - 9, step + 1)])
        if step in marks:
            sizes.append((step, size() - base))
    assert len(jobs.job_losses(space, "bench-job")) == steps
    return sizes


def bench_answer_path(space: GuildSpace, tmp: Path, n: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """The record-keeping around one answer, before the database and now."""
    old = tmp / "old"
    (old / "corrections").mkdir(parents=True)
    state = old / "state.json"
    state.write_text(json.dumps({"model": {"local": {"current": "local-v3", "history": []}}}))
    answers = old / "corrections" / "answers.jsonl"
    ids = iter(range(10**9, 2 * 10**9))

    def before() -> None:
        read_json(state, {})  # Model.answer: the current model
        for name in ("corrections.jsonl", "reviews.jsonl"):  # the overlay's signature
            try:
                (old / "corrections" / name).stat()
            except FileNotFoundError:
                pass
        read_json(state, {})  # Model.record_answer: the current model again
        append_record(answers, {"time": utc_now(), "message_id": next(ids), "channel_id": CHANNEL,
                                "prompt_message_id": 1, "author_id": USER, "author_name": "x", "model": "local-v3",
                                "prompt": "When are salaries paid?", "answer": "On the 27th."})

    jobs.set_current_model(space, "local", "local-v3")

    def now() -> None:
        jobs.current_model(space, "local")
        records.corrections_signature(space)
        model = jobs.current_model(space, "local")
        records.record_answer(space, message_ids=[next(ids)], channel_id=CHANNEL, prompt="When are salaries paid?",
                              answer="On the 27th.", prompt_message_id=1, author_id=USER, model=model)

    results = []
    for fn in (before, now):
        timed(fn, 30)
        samples = timed(fn, n)
        results.append((statistics.median(samples), pct(samples, 0.99)))
    return results[0], results[1]


def make_legacy(root: Path, n: int) -> None:
    folder = root / "corrections" / str(GUILD)
    folder.mkdir(parents=True)
    with open(folder / "answers.jsonl", "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"time": "2026-11-01T10:00:00.000Z", "message_id": 10**12 + i, "channel_id": CHANNEL,
                                 "prompt_message_id": 10**11 + i, "author_id": 1000 + i % 300, "author_name": "x",
                                 "model": "local-v2", "prompt": f"question {i}", "answer": f"answer {i}"}) + "\n")
    (root / "data" / str(GUILD)).mkdir(parents=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answers", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--legacy", type=int, default=100_000)
    ap.add_argument("--lookups", type=int, default=2_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    server = None
    engines: list[tuple[str, Callable[[str], Database]]] = [
        ("SQLite", lambda name: Database.open(None, tmp / name))]
    if find_bin() is None:
        print("PostgreSQL is not installed (apt-get install postgresql): SQLite only")
    else:
        # Default durability (fsync on), as a deployment runs it: not the tests' fast settings.
        srv = server = PostgresServer(find_bin()).init()  # type: ignore[arg-type]
        server.start(durable=True)
        engines.append(("PostgreSQL", lambda name: Database.open(srv.create_database(name.replace("-", "_")),
                                                                 tmp / name)))
    try:
        print(f"machine: {os.cpu_count()} cores; {args.answers:,} answers, {args.steps:,}-step job, "
              f"{args.legacy:,}-answer legacy folder")
        for label, open_db in engines:
            print(f"\n== {label}")
            db = open_db("lookups")
            space = GuildSpace(GUILD, tmp / "lookups", tmp / "lookups-c", db)
            db.migrate()
            t = time.perf_counter()
            fill_answers(db, args.answers)
            print(f"loaded {args.answers:,} answers in {time.perf_counter() - t:.1f} s")
            for name, (p50, p99) in bench_lookups(space, args.answers, args.lookups).items():
                print(f"  {name:28s} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
            db.close()

            db = open_db("job")
            space = GuildSpace(GUILD, tmp / "job", tmp / "job-c", db)
            sizes = bench_job(space, args.steps)
            shown = ", ".join(f"{b:,} bytes at {s:,} steps ({b / s:.0f}/step)" for s, b in sizes)
            print(f"  a job's records: {shown}")
            db.close()

            db = open_db("answers")
            space = GuildSpace(GUILD, tmp / "answers", tmp / "answers-c", db)
            (b50, b99), (n50, n99) = bench_answer_path(space, tmp / f"old-{label}", 500)
            print(f"  an answer's records: before p50 {b50:.2f} ms p99 {b99:.2f} ms; now p50 {n50:.2f} ms "
                  f"p99 {n99:.2f} ms (added at p50: {n50 - b50:+.2f} ms)")
            db.close()

            root = tmp / f"legacy-{label}"
            make_legacy(root, args.legacy)
            db = open_db("legacy")
            db.migrate()
            t = time.perf_counter()
            (done,) = import_legacy(db, root / "data", root / "corrections")
            print(f"  legacy import of {done.rows['answers.jsonl']:,} answers: {time.perf_counter() - t:.1f} s")
            db.close()
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
