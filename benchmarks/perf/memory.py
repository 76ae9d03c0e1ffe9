"""Memory: embedding-cache bytes per slice against the naive stores, and peak RSS of a training run.

Cache bytes: the fp16 payload per slice (``C x g x g x 2`` bytes, plus the features when stored), the bytes
actually on disk per slice (``.npy`` headers included) against that payload, and the naive float32 stores
(the ``3 x S x S`` model input per slice, or a float32 embedding). Peak RSS: ``samadapt train`` for a few
steps in a child process, measured with ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` by a wrapper
whose only child it is; next to the RSS of a process that only imports samadapt and loads the model, so
that the training's own share shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from samadapt.models.embedding_cache import EmbeddingCache, bytes_per_slice, embedding_shape
from samadapt.models.registry import REGISTRY

_WRAPPER = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True); "
            "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def same_threads() -> dict[str, str]:
    """The environment for a child process that uses as many threads as this one (torch reads OMP_NUM_THREADS)."""
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def peak_rss_bytes(command: list[str]) -> int:
    """Peak resident set size of ``command`` (run to its end in a child process), in bytes."""
    done = subprocess.run([sys.executable, "-c", _WRAPPER, *command], capture_output=True, text=True, check=True,
                          env=same_threads())
    code, kib = done.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {code}")
    return int(kib) * 1024  # Linux reports KiB


def cache_bytes(cache: EmbeddingCache) -> dict:
    """Per-slice bytes: the cache's payload and disk use, against the naive float32 stores, for tiny and vit_b."""
    slices = sum(cache.embeddings(c).shape[0] for c in cache.case_ids)
    disk = sum(p.stat().st_size for p in cache.root.glob("*.npy"))
    measured = {"model": cache.info["model"], "slices": slices, "disk_bytes_per_slice": round(disk / slices, 1),
                "payload_bytes_per_slice": cache.bytes_per_slice["total"],
                "disk_over_payload": round(disk / slices / cache.bytes_per_slice["total"], 3)}
    nominal = {}
    for name in ("tiny", "vit_b"):
        spec = REGISTRY[name]
        fp16 = bytes_per_slice(spec, False)["total"]
        naive_input = 3 * spec.image_size**2 * 4
        nominal[name] = {"cache_fp16_embedding": fp16, "cache_with_features": bytes_per_slice(spec, True)["total"],
                         "naive_float32_input": naive_input,
                         "naive_float32_embedding": int(np.prod(embedding_shape(spec))) * 4,
                         "naive_input_over_cache": round(naive_input / fp16, 1)}
    return {"measured": measured, "nominal": nominal}


def training_rss(prepared_root: Path, run_dir: Path, steps: int) -> dict:
    """Peak RSS of ``samadapt train`` for ``steps`` steps (cache present) and of the bare model load.

    ``run_dir`` is emptied first (a scratch folder of the suite)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    train = [sys.executable, "-m", "samadapt", "train", str(prepared_root), "--out", str(run_dir),
             "--set", f"engine.steps={steps}", "--set", f"engine.checkpoint_every={steps}",
             "--set", f"engine.eval_every={steps}"]
    bare = [sys.executable, "-c", "import samadapt.cli; from samadapt.models.sam import load_sam; load_sam('tiny')"]
    train_bytes, bare_bytes = peak_rss_bytes(train), peak_rss_bytes(bare)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"train_steps": len(metrics), "train_peak_rss_bytes": train_bytes, "bare_model_rss_bytes": bare_bytes,
            "training_share_bytes": train_bytes - bare_bytes}
