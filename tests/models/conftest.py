"""What the decoder tests of this folder share: the micro SAM and a fixed image embedding for it."""

from __future__ import annotations

import pytest
import torch

from samadapt.models.sam import load_sam


@pytest.fixture(scope="module")
def sam():
    """``test_micro``'s SAM (random weights from seed 0): a decoder that runs in milliseconds."""
    torch.manual_seed(0)
    return load_sam("test_micro").sam


@pytest.fixture
def embedding() -> torch.Tensor:
    """A fixed ``1x32x4x4`` image embedding for the micro SAM (seed 0)."""
    return torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(0))
