"""training/status.py: the progress bar, the status text and the loss-curve PNG."""

from __future__ import annotations

from dataclasses import replace

from training import status
from training.backend import Estimate, Job


def test_progress_bar() -> None:
    assert status.progress_bar(7, 14) == "[#######-------] 7/14"
    assert status.progress_bar(0, 14) == "[--------------] 0/14"
    assert status.progress_bar(20, 14) == "[##############] 14/14"
    assert status.progress_bar(3, None) == "[--------------] ?/?"


def test_render_status() -> None:
    job = Job(id="ftjob-x", backend="openai", method="supervised", status="running", step=7, total_steps=14,
              last_loss=(7, 0.4123), created_at=1000.0, estimate=Estimate(examples=12, tokens=480, epochs=3))
    text = status.render_status(job, now=1000.0 + 192)
    assert "**running**" in text and "[#######-------] 7/14" in text
    assert "0.4123" in text and "3m 12s" in text and "12 examples" in text
    done = replace(job, status="failed", error="bad file", finished_at=1010.0)
    text = status.render_status(done, now=99999.0)
    assert "Error: bad file" in text and "Elapsed: 10s" in text
    assert "Training loss: 0.4123 (step 7)" in text
    smoothed = status.render_status(replace(job, smoothed_loss=0.5), now=1000.0)
    assert "Training loss: 0.4123 (step 7, smoothed 0.5000)" in smoothed
    none_yet = status.render_status(replace(job, last_loss=None), now=1000.0)
    assert "Training loss" not in none_yet
    finished = status.render_status(replace(job, status="succeeded", last_loss=None, finished_at=1010.0), now=1010.0)
    assert "Training loss: not reported" in finished  # a finished job without loss points says so


def test_loss_curve_png() -> None:
    png = status.loss_curve_png([(1, 2.0), (2, 1.0), (3, 0.5)], "j (running)")
    assert png is not None and png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert status.loss_curve_png([]) is None


def test_a_big_local_training_shows_pairs_done_speed_eta_and_its_live_stage() -> None:
    job = Job(id="local-x", backend="local", status="running", step=3, total_steps=5, created_at=1000.0,
              progress=(40_000, 100_000), examples_per_s=161.5, eta_s=372.0,
              stage="Stage 2/2: `local-v3` answers with quick wordllama vectors while all-MiniLM-L6-v2 embeds")
    text = status.render_status(job, now=1000.0 + 250)
    assert "Progress: 40,000/100,000 pairs embedded" in text
    assert "Speed: 161.5 examples/s" in text and "Elapsed: 4m 10s, ETA 6m 12s" in text
    assert "Stage 2/2: `local-v3` answers with quick wordllama" in text
    finished = status.render_status(replace(job, status="succeeded", finished_at=1600.0), now=1600.0)
    assert "Progress" not in finished and "Stage" not in finished
