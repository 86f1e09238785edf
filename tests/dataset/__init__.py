"""Tests of dataset/: formats, folder, corrections, compile, check, archive."""
