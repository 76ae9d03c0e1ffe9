"""What the phantom benchmarks share: their common options, and CT phantoms prepared and embedded once."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from samadapt.config import PrepareConfig
from samadapt.data.phantoms import write_phantom_dataset
from samadapt.data.prepare import prepare_dataset
from samadapt.data.prepared import PreparedDataset
from samadapt.models.embedding_cache import EmbeddingCache, compute_embeddings
from samadapt.models.sam import LoadedModel, load_sam


def phantom_arguments(description: str, cases: int, out: Path) -> argparse.ArgumentParser:
    """A parser with ``--model``, ``--work`` (data and runs, reused), ``--cases`` and ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--work", type=Path, default=None, help="folder for data and runs (reused by a rerun)")
    parser.add_argument("--cases", type=int, default=cases)
    parser.add_argument("--out", type=Path, default=out)
    return parser


def embedded_phantoms(
    work: Path | None, model: str, cases: int, split: tuple[float, float, float] | None = None
) -> tuple[Path, LoadedModel, PreparedDataset, EmbeddingCache]:
    """(work folder, model, prepared phantoms at its size, their embeddings); each step resumes in ``work``."""
    work = work or Path(tempfile.mkdtemp(prefix="samadapt_bench_"))
    loaded = load_sam(model)
    source = write_phantom_dataset(work / "phantoms", n_cases=cases, seed=0)
    config = PrepareConfig(image_size=loaded.spec.image_size, **({"split": split} if split else {}))
    prepared = prepare_dataset(source, work / "prepared", config)
    return work, loaded, prepared, compute_embeddings(prepared, loaded)
