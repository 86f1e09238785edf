"""Test doubles and sample data: a fake OpenAI server, sample datasets and audio, a crash-test writer."""
