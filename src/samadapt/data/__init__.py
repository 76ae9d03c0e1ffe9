"""Preprocessing, the prepared-dataset format, and synthetic data generators (CT phantoms, shape corpus)."""
