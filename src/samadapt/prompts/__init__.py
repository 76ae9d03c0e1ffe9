"""Prompt generation: boxes and clicks from masks, human-behaviour simulators, error-guided corrections."""
