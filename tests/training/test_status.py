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
