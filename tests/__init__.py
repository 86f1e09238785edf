"""The test suite; it mirrors the source tree (tests/dataset/ tests dataset/, and so on)."""
