"""What the phantom benchmarks share: their common options (``--set`` overrides too), CT phantoms prepared and
embedded once, and the timed training-step loop of the throughput benchmarks."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from samadapt.config import PrepareConfig, parse_overrides
from samadapt.data.phantoms import write_phantom_dataset
from samadapt.data.prepare import prepare_dataset
from samadapt.data.prepared import PreparedDataset
from samadapt.models.embedding_cache import EmbeddingCache, compute_embeddings
from samadapt.models.sam import LoadedModel, load_sam
from samadapt.training.slice_data import TrainingSlice, load_slice


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


def add_set_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``; read it with :func:`set_overrides`."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def set_overrides(pairs: list[str]) -> tuple[dict, str]:
    """``--set`` pairs as config values (nested groups; build configs with ``make_config``, which reads "1e-4"
    as a float) and the tag that names them in run folders (``-engine.lr=1e-4``; empty without overrides)."""
    pairs = sorted(pair.partition("=")[::2] for pair in pairs)
    return parse_overrides([f"{k}={v}" for k, v in pairs]), "".join(f"-{k.strip()}={v.strip()}" for k, v in pairs)


def timed_training_steps(
    loaded: LoadedModel, prepared: PreparedDataset, cache: EmbeddingCache, pool: list[TrainingSlice],
    objective, parameters: list[torch.Tensor], is_lesion: Callable[[str], bool], slices_per_step: int, steps: int,
    seed: int,
) -> list[dict]:
    """``steps`` training steps as ``samadapt train`` runs them: read ``slices_per_step`` random slices of
    ``pool`` -> ``objective.slice_loss`` on each -> mean -> backward -> AdamW step on ``parameters``.

    Returns one row per step: ``step_s`` (all of it), ``data_s`` (reading the slices), ``prompt_s`` (making
    the prompts, from the objective's statistics) and ``prompts`` (objects or regions trained).
    """
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(steps):
        t0 = time.perf_counter()
        picks = torch.randint(0, len(pool), (slices_per_step,), generator=generator).tolist()
        samples = [load_slice(prepared, cache, pool[i], is_lesion) for i in picks]
        data_s = time.perf_counter() - t0
        losses, prompts, prompt_s = [], 0.0, 0.0
        for sample in samples:
            loss, stats = objective.slice_loss(loaded.sam, sample, generator)
            losses.append(loss)
            prompts += stats["prompts"]
            prompt_s += stats["prompt_s"]
        optimizer.zero_grad(set_to_none=True)
        torch.stack(losses).mean().backward()
        optimizer.step()
        rows.append({"step_s": time.perf_counter() - t0, "data_s": data_s, "prompt_s": prompt_s, "prompts": prompts})
    return rows
