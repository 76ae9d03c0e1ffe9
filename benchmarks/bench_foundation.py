"""Foundation benchmark: prepare throughput, image-encoder throughput, embedding-cache size.

Writes ``benchmarks/results/foundation.json`` (atomically) with absolute numbers, ratios and the machine
they were measured on. All timings are fp32 on the CPU and use random weights, which run as fast as
trained ones.

    python benchmarks/bench_foundation.py            # full run (includes 2 ViT-B images, ~1-2 min)
    python benchmarks/bench_foundation.py --quick    # smoke run: small data, no ViT-B
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK
import torch

from samadapt.data.prepare import prepare_dataset
from samadapt.io.atomic import write_json_atomic
from samadapt.models.embedding_cache import bytes_per_slice, compute_embeddings
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import LoadedModel, build_sam

RESULTS = Path(__file__).resolve().parent / "results" / "foundation.json"


def _sig(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant figures (small rates stay readable)."""
    return float(f"{value:.{digits}g}")


def machine() -> dict:
    """CPU count, the threads torch uses and the load at start (the machine may be shared)."""
    return {
        "platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(), "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "cuda_available": torch.cuda.is_available(),
    }


def _ellipsoid(grid: np.ndarray, centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    """``(Z, Y, X)`` bool ellipsoid; ``grid`` is ``np.mgrid`` of the volume (3 x Z x Y x X)."""
    return sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3)) <= 1


def write_synthetic_nnunet(root: Path, n_cases: int, shape_zyx: tuple[int, int, int], seed: int = 0) -> Path:
    """A small CT-like nnU-Net v2 dataset: an ellipsoid "organ" (1) with a spherical "lesion" (2) inside.

    Images are int16 HU (soft tissue ~40 HU with noise, organ ~60, lesion ~10); spacing (0.8, 0.8, 2.5)
    mm in SimpleITK's (x, y, z) order.
    """
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    Z, Y, X = shape_zyx
    grid = np.mgrid[:Z, :Y, :X].astype(np.float32)
    for i in range(n_cases):
        cz, cy, cx = Z / 2 + rng.uniform(-2, 2), Y / 2 + rng.uniform(-8, 8), X / 2 + rng.uniform(-8, 8)
        organ = _ellipsoid(grid, (cz, cy, cx), (0.4 * Z, 0.3 * Y, 0.25 * X))
        lesion = _ellipsoid(grid, (cz, cy, cx), (0.15 * Z, 0.08 * Y, 0.08 * X))
        labels = np.zeros(shape_zyx, np.uint8)
        labels[organ] = 1
        labels[organ & lesion] = 2
        hu = rng.normal(40, 15, shape_zyx) + 20 * (labels == 1) - 30 * (labels == 2)
        hu[:, :, : X // 10] = -1000  # air at one side
        for array, folder, name in ((hu.astype(np.int16), "imagesTr", f"case{i:03d}_0000.nii.gz"),
                                    (labels, "labelsTr", f"case{i:03d}.nii.gz")):
            image = SimpleITK.GetImageFromArray(array)
            image.SetSpacing((0.8, 0.8, 2.5))
            SimpleITK.WriteImage(image, str(root / folder / name))
    (root / "dataset.json").write_text(
        '{"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": [1, 2], "lesion": 2}, '
        f'"numTraining": {n_cases}, "file_ending": ".nii.gz", "name": "synthetic"}}\n'
    )
    return root


def make_source(work: Path, quick: bool) -> tuple[Path, str]:
    """A phantom dataset when :mod:`samadapt.data.phantoms` is available, else the synthetic one above."""
    n_cases, shape = (2, (16, 128, 128)) if quick else (4, (48, 256, 256))
    try:
        from samadapt.data.phantoms import write_phantom_dataset  # written in parallel; may not exist yet

        size = {"size": shape} if quick else {}  # (Z, Y, X); full runs use the phantoms' default grid
        root = Path(write_phantom_dataset(work / "phantoms", n_cases=n_cases, seed=0, **size))
        return root, f"phantoms, {n_cases} cases{f' of {shape}' if quick else ''}"
    except (ImportError, TypeError):  # absent, or another signature than assumed here
        return write_synthetic_nnunet(work / "raw", n_cases, shape), f"synthetic nnU-Net {n_cases}x{shape}"


def bench_prepare(source: Path, out: Path) -> dict:
    from samadapt.config import PrepareConfig

    volumes = sorted((source / "imagesTr").glob("*_0000.nii.gz"))
    n_source = sum(SimpleITK.ReadImage(str(p)).GetSize()[2] for p in volumes) if volumes else None
    start = time.perf_counter()
    prepared = prepare_dataset(source, out, PrepareConfig(image_size=256, keep_empty_ratio=1.0))
    seconds = time.perf_counter() - start
    n_written = sum(c["n_slices"] for c in prepared.manifest["cases"])
    return {
        "cases": len(prepared.case_ids()), "source_slices": n_source, "slices_written": n_written,
        "image_size": 256, "seconds": _sig(seconds),
        "slices_per_s": _sig(n_written / seconds),
        "source_slices_per_s": _sig(n_source / seconds) if n_source else None,
    }


def bench_encoder(name: str, n_images: int, batch_size: int, warmup: bool) -> dict:
    """Images/s of the image encoder alone, fp32, ``torch.inference_mode``, random weights."""
    spec = REGISTRY[name]
    torch.manual_seed(0)
    encoder = build_sam(spec).image_encoder
    x = torch.randn(batch_size, 3, spec.image_size, spec.image_size)
    times = []
    with torch.inference_mode():
        if warmup:
            encoder(x)
        for _ in range(n_images // batch_size):
            start = time.perf_counter()
            encoder(x)
            times.append(time.perf_counter() - start)
    per_image = [t / batch_size for t in times]
    return {
        "model": name, "image_size": spec.image_size, "batch_size": batch_size, "images": n_images,
        "warmup_batch": warmup,
        "params_encoder_M": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 2),
        "seconds_per_image": [_sig(t) for t in per_image],
        "seconds_total": _sig(sum(times), 6),
        "images_per_s": _sig(n_images / sum(times)),
    }


def bench_cache(prepared_root: Path, with_features: bool) -> dict:
    """Embed the prepared dataset with random-weight ``tiny``; measured bytes on disk per slice."""
    from samadapt.data.prepared import PreparedDataset

    prepared = PreparedDataset(prepared_root)
    spec = REGISTRY["tiny"]
    torch.manual_seed(0)
    loaded = LoadedModel(build_sam(spec), spec, None, {})
    start = time.perf_counter()
    cache = compute_embeddings(prepared, loaded, batch_size=8, with_features=with_features)
    seconds = time.perf_counter() - start
    n_slices = sum(cache.embeddings(c).shape[0] for c in cache.case_ids)
    disk = sum(p.stat().st_size for p in cache.root.glob("*.npy"))
    return {
        "model": "tiny", "with_features": with_features, "slices": n_slices, "seconds": _sig(seconds),
        "slices_per_s": _sig(n_slices / seconds), "bytes_per_slice_nominal": cache.bytes_per_slice,
        "bytes_per_slice_on_disk": round(disk / n_slices, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, fewer images, no ViT-B")
    parser.add_argument("--out", type=Path, default=RESULTS, help="result JSON path")
    args = parser.parse_args()

    results: dict = {"benchmark": "foundation", "quick": args.quick, "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench_foundation_") as tmp:
        work = Path(tmp)
        source, description = make_source(work, args.quick)
        results["prepare"] = {"source": description, **bench_prepare(source, work / "prepared")}
        print(f"prepare: {results['prepare']['slices_per_s']} slices/s", file=sys.stderr)
        results["cache"] = [bench_cache(work / "prepared", False), bench_cache(work / "prepared", True)]
        print(f"cache: {[c['bytes_per_slice_on_disk'] for c in results['cache']]} B/slice", file=sys.stderr)

    tiny = bench_encoder("tiny", n_images=8 if args.quick else 32, batch_size=8, warmup=True)
    results["encoder"] = {"tiny": tiny}
    print(f"encoder tiny: {tiny['images_per_s']} images/s", file=sys.stderr)
    if not args.quick:
        vit_b = bench_encoder("vit_b", n_images=2, batch_size=1, warmup=False)  # ~30 s per image here
        results["encoder"]["vit_b"] = vit_b
        print(f"encoder vit_b: {vit_b['images_per_s']} images/s", file=sys.stderr)
        results["ratios"] = {
            "tiny_over_vit_b_encoder_images_per_s": _sig(
                (tiny["images"] / tiny["seconds_total"]) / (vit_b["images"] / vit_b["seconds_total"])),
            "vit_b_over_tiny_embedding_bytes_per_slice": round(
                bytes_per_slice(REGISTRY["vit_b"], False)["embeddings"]
                / bytes_per_slice(REGISTRY["tiny"], False)["embeddings"], 1),
        }
    results["bytes_per_slice_nominal"] = {
        name: {"embeddings_only": bytes_per_slice(REGISTRY[name], False)["total"],
               "with_features": bytes_per_slice(REGISTRY[name], True)["total"]}
        for name in ("tiny", "vit_b")
    }
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
