"""Tests of training/: the local and OpenAI backends, jobs, status, evaluation."""
