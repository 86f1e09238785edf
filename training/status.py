"""What a training job looks like to people: the status message text and the loss-curve PNG.

``render_status`` is cheap; ``loss_curve_png`` is CPU-bound (matplotlib): run it in a thread.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from typing import Literal

from training.backend import TERMINAL, Evaluation, Job, Score, TrainingBackend, backend_class

log = logging.getLogger(__name__)

BAR_WIDTH = 14


def _backend(job: Job) -> type[TrainingBackend]:
    """The class of the backend that ran ``job`` (its attributes say what to show); the base if unknown."""
    try:
        return backend_class(job.backend)
    except (KeyError, ImportError):
        return TrainingBackend


def progress_bar(step: int | None, total: int | None, width: int = BAR_WIDTH) -> str:
    """``[#######-------] 7/14``; unknown total gives an empty bar."""
    if not total:
        return f"[{'-' * width}] ?/?"
    step = max(0, min(step or 0, total))
    filled = round(width * step / total)
    return f"[{'#' * filled}{'-' * (width - filled)}] {step}/{total}"


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h {m:02d}m"
    if m:
        return f"{m}m {s:02d}s"
    return f"{s}s"


def render_status(job: Job, now: float | None = None) -> str:
    """A few lines for the status message the watcher edits."""
    now = time.time() if now is None else now
    status = job.status
    head = f"Training job `{job.id}` ({job.backend}, {job.method}): **{status}**"
    lines = [head, progress_bar(job.step, job.total_steps)]
    last = job.last_loss
    if last:
        smoothed = job.smoothed_loss
        also = f", smoothed {smoothed:.4f}" if smoothed is not None else ""
        lines.append(f"Training loss: {last[1]:.4f} (step {last[0]}{also})")
    elif status == "succeeded":
        # Say so rather than leave the line out: people look for the loss of a finished job.
        lines.append(f"Training loss: {_backend(job).no_loss_status}")
    end = job.finished_at if status in TERMINAL and job.finished_at else now
    if job.created_at:
        elapsed = f"Elapsed: {format_duration(end - job.created_at)}"
        if status not in TERMINAL and job.eta_s is not None:
            elapsed += f", ETA {format_duration(job.eta_s)}"
        lines.append(elapsed)
    if job.progress is not None and status not in TERMINAL:
        done, total = job.progress
        lines.append(f"Progress: {done:,}/{total:,} {_backend(job).progress_unit}")
    if job.stage and status not in TERMINAL:
        lines.append(job.stage)
    speed, device = job.examples_per_s, job.device
    if speed is not None:
        lines.append(f"Speed: {speed:.1f} examples/s" + (f" on {device}" if device else ""))
    elif device:
        lines.append(f"Device: {device}")
    est = job.estimate
    if est is not None:
        n = "?" if est.examples is None else est.examples
        what = f"{n} example{'' if n == 1 else 's'}"
        if _backend(job).bills_tokens:  # tokens and epochs mean something only where they are billed
            what += f", ~{_known(est.tokens)} tokens, {_known(est.epochs)} epochs"
        lines.append(f"Estimate: {what}")
    if job.resumed_from is not None:
        lines.append(f"Resumed from its checkpoint at step {job.resumed_from} after a restart.")
    if job.model:
        lines.append(f"Model: `{job.model}`")
    lines.extend(_evaluation_lines(job.evaluation))
    if status == "cancelled" and job.cancelled_by:
        lines.append(f"Cancelled by {job.cancelled_by}.")
    if job.error:
        lines.append(f"Error: {job.error}")
    return "\n".join(lines)


def _known(value: int | None) -> str:
    return "?" if value is None else str(value)


def score_text(score: Score | None, which: Literal["new", "old"]) -> str:
    """``7/10 (70%)``: one model's (``new`` or ``old``) score in an evaluation result; ``?`` without cases."""
    if score is None or not score.n:
        return "?"
    got = (score.new if which == "new" else score.old) or 0
    return f"{got}/{score.n} ({got / score.n:.0%})"


def held_back_reason(ev: Evaluation) -> str:
    """Why the evaluation gate held a model back, one clause (records from before reasons: it scored worse)."""
    return ev.reason or (f"more than {round(100 * ev.margin)} points worse than `{ev.old_model}` on the "
                         f"evaluation set")


def _evaluation_lines(ev: Evaluation | None) -> list[str]:
    """The evaluation gate's scores, new model vs the current one (nothing when the gate did not run)."""
    if ev is None:
        return []
    old = ev.old_model

    def line(title: str, score: Score) -> str:
        n = score.n
        said = f"{title} ({n} case{'s' * (n != 1)}): new {score_text(score, 'new')}"
        if score.old is not None:
            said += f" vs `{old}` {score_text(score, 'old')}"
        return said

    lines = []
    if ev.eval_set is not None:
        lines.append(line("Evaluation set", ev.eval_set))
    if ev.heldout is not None:
        lines.append(line("Held-out pairs (also trained on)", ev.heldout))
    if ev.error:
        lines.append(f"Not scored: {ev.error}")
    elif not lines:
        lines.append("Evaluation: nothing to score on yet (no test cases, too few pairs to hold out).")
    if ev.candidate:
        lines.append(f"Held back as a candidate: {held_back_reason(ev)}.")
    return lines


def no_loss_reason(job: Job) -> str:
    """Why a finished job has no loss curve, in one sentence."""
    return _backend(job).no_loss_reason or TrainingBackend.no_loss_reason or ""


def loss_curve_png(losses: Sequence[tuple[int, float]], title: str = "") -> bytes | None:
    """PNG of training loss by step, or None without loss points (sync, CPU: use to_thread)."""
    points = [(int(s), float(v)) for s, v in losses]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display here; must precede pyplot
    from matplotlib.figure import Figure

    # A bare Figure (not pyplot) keeps no global state, so threads don't step on each other.
    fig = Figure(figsize=(6, 3.2), dpi=100)
    ax = fig.add_subplot()
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 40 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
