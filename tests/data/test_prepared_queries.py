"""What a prepared dataset answers about itself: the split of a case, and a class selection checked against it."""

from __future__ import annotations

from pathlib import Path

import pytest

from samadapt.errors import ConfigError, DatasetError
from support import synthetic_prepared


def test_split_of_and_select_classes(tmp_path: Path):
    prepared = synthetic_prepared(tmp_path / "p", 32, {"c0": (2, (32, 32), False)}, seed=0, tag="queries")
    assert prepared.split_of("c0") == "train"
    with pytest.raises(DatasetError, match="no case 'c9'"):
        prepared.split_of("c9")
    assert prepared.select_classes(None) == ["organ"] == prepared.select_classes(("organ",))
    with pytest.raises(ConfigError, match=r"^adapt setting classes: brain not in .*\(classes: organ\)$"):
        prepared.select_classes(["organ", "brain"], "adapt setting classes")
