"""Test-session settings shared by every test module."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import torch

# The models under test are micro-sized: one thread runs them as fast as two, and it keeps the suite from
# stalling in OpenMP barriers when the (2-core) machine has anything else to do.
torch.set_num_threads(1)

# Exported ONNX encoders and any downloaded file go to a folder of this test session, never the user's cache
# (subprocesses such as torchrun ranks inherit it through the environment).
os.environ["SAMADAPT_CACHE"] = tempfile.mkdtemp(prefix="samadapt-test-cache-")
atexit.register(shutil.rmtree, os.environ["SAMADAPT_CACHE"], ignore_errors=True)
