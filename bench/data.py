"""Benchmarks of the data domain; prints figures, asserts nothing.

    python bench/data.py [--archive-mb 200] [--examples 100000] [--upload-mb 50]

1. check_lines: examples/s on 100k generated chat examples (goal >= 50,000/s).
2. ingest_file: a 50 MB JSONL upload streamed into a dataset (time, peak RSS of a child process).
3. archive_folder vs ``zip -r`` on the same generated folder of mixed text files
   (MB/s of source data, peak RSS of each in a child process; goal >= 0.8x zip -r).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Import the project, not this folder (a script's folder comes first on sys.path).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

from dataset import check

log = logging.getLogger(__name__)

WORDS = [
    "the",
    "model",
    "answer",
    "question",
    "data",
    "train",
    "server",
    "guild",
    "example",
    "correct",
    "feedback",
    "voice",
    "text",
    "label",
    "positive",
    "negative",
    "dataset",
    "archive",
    "token",
    "epoch",
    "file",
    "folder",
    "user",
    "assistant",
    "system",
    "message",
    "prompt",
    "completion",
    "hello",
    "world",
    "python",
    "discord",
    "bot",
    "learning",
    "rate",
    "batch",
    "loss",
    "accuracy",
    "validation",
    "test",
]


def make_examples(n: int, rng: random.Random, start: int = 0) -> list[str]:
    lines = []
    for i in range(start, start + n):
        user = " ".join(rng.choices(WORDS, k=rng.randint(5, 25)))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))
        ex = {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"{i}: {user}"},
                {"role": "assistant", "content": answer},
            ]
        }
        lines.append(json.dumps(ex))
    return lines


def bench_check(n: int) -> None:
    rng = random.Random(1)
    lines = make_examples(n, rng)
    size = sum(len(x) + 1 for x in lines)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        report = check.check_lines(lines)
        best = min(best, time.perf_counter() - start)
    assert report.ok, report.format()
    print(
        f"check_lines (str list): {n:,} examples, {size / 1e6:.1f} MB in {best:.3f} s "
        f"-> {n / best:,.0f} examples/s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_text("\n".join(lines) + "\n")
        start = time.perf_counter()
        with open(path, "rb") as fh:
            check.check_lines(fh)
        took = time.perf_counter() - start
        print(f"check_lines (binary file, like `model.py check`): {n / took:,.0f} examples/s")


def _hwm(pid: int) -> int:
    """VmHWM (peak RSS of the process's own memory, KiB) from /proc; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_rss(argv: list[str], cwd: Path) -> tuple[float, int, str]:
    """Run a command; returns (seconds, peak RSS KiB, stdout).

    ru_maxrss of a child is useless here: Linux carries the parent's high-water mark across
    fork+exec. VmHWM belongs to the new process image, so it is polled until the child exits
    (it only grows, and the last poll is within a few ms of the end).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=str(cwd), stdout=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _hwm(proc.pid))
        time.sleep(0.005)
    took = time.perf_counter() - start
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed with {proc.returncode}")
    return took, peak, out


def child_rss(code: str, *args: str) -> tuple[float, int, str]:
    """Run python code in a child; returns (seconds, peak RSS KiB, stdout)."""
    return run_rss([sys.executable, "-c", code, *args], ROOT)


def bench_upload(mb: int) -> None:
    rng = random.Random(2)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.jsonl"
        written = 0
        i = 0
        with open(path, "w", encoding="utf-8") as fh:
            while written < mb * 1024 * 1024:
                text = "\n".join(make_examples(2000, rng, start=i)) + "\n"
                i += 2000
                fh.write(text)
                written += len(text)
        code = (
            "import sys; from pathlib import Path; sys.path.insert(0, '.');"
            "from dataset import folder as dataset_folder; from storage import GuildSpace;"
            "sp = GuildSpace(1, Path(sys.argv[1]) / 'd', Path(sys.argv[1]) / 'c');"
            "r = dataset_folder.ingest_file(sp, Path(sys.argv[2]), author='bench');"
            "print(r.added, len(r.skipped))"
        )
        _, base_rss, _ = child_rss(
            "import sys, time; sys.path.insert(0, '.'); from dataset import folder; time.sleep(0.2)"
        )
        took, rss, out = child_rss(code, tmp, str(path))
        added = out.split()[0]
        print(
            f"ingest_file: {written / 1e6:.0f} MB upload, {int(added):,} examples in {took:.1f} s "
            f"({written / 1e6 / took:.1f} MB/s); peak RSS {rss / 1024:.0f} MiB "
            f"(bare interpreter {base_rss / 1024:.0f} MiB)"
        )


def make_tree(root: Path, total_mb: int, rng: random.Random) -> int:
    """Mixed text files: JSONL, CSV, prose; sizes from 1 KB to 4 MB."""
    vocab = WORDS + [f"w{n}" for n in range(3000)]  # a bigger vocabulary compresses like real text
    total = 0
    n = 0
    while total < total_mb * 1024 * 1024:
        folder = root / f"part{n % 7}" / f"sub{n % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.choice([1_000, 20_000, 200_000, 1_000_000, 4_000_000])
        kind = n % 3
        words = rng.choices(vocab, k=size // 6 + 1)
        if kind == 0:
            text = "\n".join(
                json.dumps({"text": " ".join(words[i : i + 12])}) for i in range(0, len(words), 12)
            )
            name = f"data{n}.jsonl"
        elif kind == 1:
            text = "\n".join(",".join(words[i : i + 8]) for i in range(0, len(words), 8))
            name = f"table{n}.csv"
        else:
            text = " ".join(words)
            name = f"notes{n}.txt"
        data = text.encode()
        (folder / name).write_bytes(data)
        total += len(data)
        n += 1
    return total


def bench_archive(mb: int) -> None:
    rng = random.Random(3)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "d"
        folder = data / "1" / "datasets" / "big"
        folder.mkdir(parents=True)
        t0 = time.perf_counter()
        total = make_tree(folder, mb, rng)
        files = sum(1 for _ in folder.rglob("*") if _.is_file())
        print(f"archive: generated {total / 1e6:.0f} MB in {files} files ({time.perf_counter() - t0:.0f} s)")
        code = (
            "import sys; from pathlib import Path; sys.path.insert(0, '.');"
            "from dataset import archive as archiver; from storage import GuildSpace;"
            "sp = GuildSpace(1, Path(sys.argv[1]), Path(sys.argv[1]) / 'c');"
            "r = archiver.archive_folder(sp, 'datasets/big'); r.path.unlink();"
            "print(r.files, r.bytes)"
        )
        ours: list[float] = []
        zips: list[float] = []
        zip_rss = ours_rss = 0
        zip_size = ours_size = 0
        for _ in range(2):  # alternate, best of two: both see a warm page cache
            out_zip = Path(tmp) / "ref.zip"
            took, zip_rss, _ = run_rss(["zip", "-r", "-q", str(out_zip), "."], folder)
            zips.append(took)
            zip_size = out_zip.stat().st_size
            out_zip.unlink()
            took, ours_rss, out = child_rss(code, str(data))
            ours.append(took)
            ours_size = int(out.split()[1])
        z, o = min(zips), min(ours)
        print(
            f"zip -r:         {z:.2f} s -> {total / 1e6 / z:.0f} MB/s, zip {zip_size / 1e6:.1f} MB "
            f"(peak RSS {zip_rss / 1024:.0f} MiB)"
        )
        print(
            f"archive_folder: {o:.2f} s -> {total / 1e6 / o:.0f} MB/s, zip {ours_size / 1e6:.1f} MB "
            f"(incl. interpreter start; peak RSS {ours_rss / 1024:.0f} MiB)"
        )
        print(f"archive_folder / zip -r throughput: {z / o:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--upload-mb", type=int, default=50)
    parser.add_argument("--archive-mb", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, zip at {shutil.which('zip')}")
    bench_check(args.examples)
    bench_upload(args.upload_mb)
    bench_archive(args.archive_mb)


if __name__ == "__main__":
    main()
