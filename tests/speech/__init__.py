"""Tests of speech/: audio conversion, recognition, synthesis."""
