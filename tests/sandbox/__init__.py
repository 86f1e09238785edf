"""Tests of sandbox/: the loopback voice server and the terminal chat."""
