"""Test-session settings shared by every test module."""

from __future__ import annotations

import torch

# The models under test are micro-sized: one thread runs them as fast as two, and it keeps the suite from
# stalling in OpenMP barriers when the (2-core) machine has anything else to do.
torch.set_num_threads(1)
