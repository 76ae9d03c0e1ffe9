"""Metrics, evaluation protocols and reports."""
