"""LiteMedSAM (``medsam_lite``) on this CPU: the encoder in torch vs onnxruntime beside its FLOP bound, parity, cache
bytes, and click-to-mask latency over HTTP.

Writes ``benchmarks/results/encoder_runtime.json`` (atomically):

- ``bound``: the encoder's FLOPs per 256 px slice (torch's FlopCounterMode) and the best single-thread float32
  matmul rate measured in this run; ``bound_s`` = FLOPs / rate, the time no runtime can beat on one thread.
- ``encoder``: median seconds per slice on ONE thread for torch (eager) and onnxruntime (the inference
  paths' default), each as a multiple of the bound (target: onnxruntime within 2x).
- ``parity``: on real CT slices (CURVAS, annotator 1; random images when the data is absent), the largest
  |onnx - torch| over the embeddings, and the Dice between the masks the two embeddings give for every
  ground-truth box (target >= 0.99).
- ``cache``: bytes per slice in the embedding cache (fp16), with and without ProMISe's features.
- ``click_latency``: ``samadapt serve`` round trips per click with the embedding cached, torch and onnx
  decoders (the same routine as ``bench_serve.py``; target p50 <= 30 ms with onnx).

    python benchmarks/bench_encoder_runtime.py            # ~3 minutes on an idle 2-core CPU
    python benchmarks/bench_encoder_runtime.py --quick    # fewer slices and clicks
    python benchmarks/bench_encoder_runtime.py --click-threads 2   # clicks on both cores, as serve runs

Times are ratios within one run; ``machine.load_average_1m_at_start`` says how busy the machine was.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from bench_serve import _phantom, click_latency  # noqa: E402
from perf.machine_bound import matmul_flops_per_s  # noqa: E402
from perf.timing import median_seconds, sig  # noqa: E402
from samadapt.evaluation.metrics import dice  # noqa: E402
from samadapt.inference.segmenter import Segmenter  # noqa: E402
from samadapt.io.atomic import write_json_atomic  # noqa: E402
from samadapt.io.volume import write_volume  # noqa: E402
from samadapt.models.embedding_cache import bytes_per_slice  # noqa: E402
from samadapt.models.onnx_encoder import use_encoder_runtime  # noqa: E402
from samadapt.models.preprocess import to_model_input  # noqa: E402
from samadapt.models.sam import load_sam  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "encoder_runtime.json"
CURVAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "ct_abdomen_multiorgan_curvas_png"
COLOURS = ((0, 255, 255), (255, 255, 0), (255, 0, 255))  # pancreas, kidney, liver


def real_slices(n: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Up to ``n`` (grey 512x512 slice, object masks) pairs; random images without masks when absent."""
    from scipy import ndimage

    folder = CURVAS / "annotator1"
    if not folder.is_dir():
        rng = np.random.default_rng(0)
        return [(rng.integers(0, 256, (512, 512), dtype=np.uint8), []) for _ in range(n)]
    pairs = []
    for path in sorted((folder / "images").glob("*.png"))[:n]:
        truth = np.asarray(Image.open(folder / "masks" / path.name).convert("RGB"))
        objects = []
        for colour in COLOURS:
            parts, count = ndimage.label(np.all(truth == colour, axis=-1))
            objects += [parts == k for k in range(1, count + 1) if (parts == k).sum() >= 100]
        pairs.append((np.asarray(Image.open(path).convert("L")), objects))
    return pairs


def box_masks(segmenter: Segmenter, image: np.ndarray, objects: list[np.ndarray]) -> np.ndarray:
    """Masks for every object's tight box (``NxHxW`` bool)."""
    segmenter.set_image(image)
    boxes = []
    for mask in objects:
        rows, cols = np.nonzero(mask)
        boxes.append([cols.min(), rows.min(), cols.max(), rows.max()])
    return segmenter.predict(boxes=np.array(boxes, dtype=float)).masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--click-threads", type=int, default=1,
                        help="torch / onnxruntime threads for the click latency (the encoder is timed on one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n_slices, repeats, clicks = (3, 3, 20) if args.quick else (8, 5, 60)
    report: dict = {"machine": machine(), "model": "medsam_lite", "threads": 1}

    loaded = load_sam("medsam_lite")
    spec = loaded.spec
    x = to_model_input(np.zeros((1, spec.image_size, spec.image_size), np.uint8), spec)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        loaded.sam.image_encoder(x)
    flops = counter.get_total_flops()
    rate = matmul_flops_per_s(torch.device("cpu"))
    report["bound"] = {"encoder_gflop_per_slice": sig(flops / 1e9), "matmul_gflop_per_s_1_thread": sig(rate / 1e9),
                       "bound_s": sig(flops / rate)}

    pairs = real_slices(n_slices)
    inputs = to_model_input(np.stack([np.asarray(Image.fromarray(image).resize((256, 256))) for image, _ in pairs]),
                            spec)
    with torch.inference_mode():
        torch_s, _ = median_seconds(lambda: loaded.sam.image_encoder(inputs[:1]), repeats)
    use_encoder_runtime(loaded, "onnx")
    onnx_s, _ = median_seconds(lambda: loaded.onnx_encoder(inputs[:1].numpy()), repeats)
    report["encoder"] = {
        "torch_s_per_slice": sig(torch_s), "onnxruntime_s_per_slice": sig(onnx_s),
        "torch_x_bound": sig(torch_s / report["bound"]["bound_s"], 3),
        "onnxruntime_x_bound": sig(onnx_s / report["bound"]["bound_s"], 3),
        "onnxruntime_speedup": sig(torch_s / onnx_s, 3), "target_x_bound": 2.0,
    }
    print(report["bound"], report["encoder"], flush=True)

    with torch.inference_mode():
        ref = loaded.sam.image_encoder(inputs).numpy()
    got = loaded.onnx_encoder(inputs.numpy())[0]
    on_torch = Segmenter.from_model("medsam_lite", encoder_runtime="torch")
    on_onnx = Segmenter.from_model("medsam_lite", encoder_runtime="onnx")
    dices = []
    for image, objects in pairs:
        if objects:
            a, b = box_masks(on_torch, image, objects), box_masks(on_onnx, image, objects)
            dices += [dice(p, q) for p, q in zip(a, b, strict=True)]
    report["parity"] = {"slices": len(pairs), "objects": len(dices),
                        "embedding_max_abs_diff": sig(float(np.abs(got - ref).max())),
                        "embedding_max_abs": sig(float(np.abs(ref).max())),
                        "mask_dice_min": sig(min(dices)) if dices else None,
                        "mask_dice_mean": sig(float(np.mean(dices))) if dices else None, "target_dice": 0.99}
    report["cache"] = {"bytes_per_slice": bytes_per_slice(spec, False),
                       "bytes_per_slice_with_features": bytes_per_slice(spec, True), "dtype": "float16"}
    print(report["parity"], report["cache"], flush=True)

    rng = np.random.default_rng(0)
    case = _phantom(0)
    torch.set_num_threads(args.click_threads)
    report["click_latency"] = {"threads": args.click_threads}
    with tempfile.TemporaryDirectory() as tmp:
        write_volume(case.image, case.geometry, Path(tmp) / "case.nii.gz")
        for decoder in ("torch", "onnx"):
            report["click_latency"][decoder] = click_latency(loaded, Path(tmp), case, clicks, rng, decoder=decoder)
            print(decoder, report["click_latency"][decoder]["round_trip_ms"], flush=True)
    report["click_latency"]["target_p50_ms_onnx"] = 30.0
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
