"""Training/answering backends: ``local`` (offline scikit-learn) and ``openai`` (fine-tuning API)."""

from __future__ import annotations

import logging

from backends.base import TERMINAL, JobUpdate, TrainingBackend

log = logging.getLogger(__name__)

__all__ = ["TERMINAL", "JobUpdate", "TrainingBackend"]
