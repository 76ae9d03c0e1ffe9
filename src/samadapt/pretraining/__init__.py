"""Pretraining the small foundation model (samadapt-tiny) with SAM's promptable recipe on synthetic shapes."""
