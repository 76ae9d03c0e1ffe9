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
  decoders (the same routine as ``bench_serve.py``; target p50 <= 30 ms with onnx), for each thread count
  of ``--click-threads`` (``runs``), with the load average before and after each; ``phases``: where one
  onnx click's server time goes, timed in process on the same slice (prompt graph alone, the per-image
  graph that runs on a slice's first click, ``Segmenter.predict`` in all, the run-length encoding).

    python benchmarks/bench_encoder_runtime.py            # ~3 minutes on an idle 2-core CPU
    python benchmarks/bench_encoder_runtime.py --quick    # fewer slices and clicks
    python benchmarks/bench_encoder_runtime.py --click-threads 2     # clicks on both cores, as serve runs
    python benchmarks/bench_encoder_runtime.py --click-threads 1,2   # both

Times are ratios within one run; ``machine.load_average_1m_at_start`` says how busy the machine was.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from bench_serve import ORGANS, _phantom, click_latency  # noqa: E402
from perf.machine_bound import matmul_flops_per_s  # noqa: E402
from perf.timing import median_seconds, sig  # noqa: E402
from samadapt.inference.onnx_decoding import OnnxDecoding  # noqa: E402
from samadapt.inference.segmenter import Segmenter  # noqa: E402
from samadapt.io.atomic import write_json_atomic  # noqa: E402
from samadapt.io.volume import Volume, write_volume  # noqa: E402
from samadapt.models.embedding_cache import bytes_per_slice  # noqa: E402
from samadapt.models.onnx_encoder import use_encoder_runtime  # noqa: E402
from samadapt.models.preprocess import to_model_input  # noqa: E402
from samadapt.models.sam import LoadedModel, load_sam  # noqa: E402
from samadapt.overlap import dice  # noqa: E402
from samadapt.serve.encoding import run_lengths  # noqa: E402

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


def click_phases(loaded: LoadedModel, case, repeats: int) -> dict:
    """Median ms of the parts of one onnx click on the liver's largest slice of ``case`` (embedding cached)."""
    from samadapt.export.onnx_decoder import onnx_prompt_arrays
    from samadapt.export.split_decoder import IMAGE_OUTPUTS

    onnx = OnnxDecoding(loaded)
    onnx.prepare()
    segmenter = Segmenter(loaded, onnx=onnx)
    slices = segmenter.set_volume(Volume(case.image, case.geometry))
    liver = np.isin(case.label, ORGANS["liver"])
    k = int(liver.sum(axis=(1, 2)).argmax())
    rows, cols = np.nonzero(slices.labels_slice(liver.astype(np.uint8), k))
    box = np.array([[cols.min(), rows.min(), cols.max(), rows.max()]], dtype=float)
    clicks = {"points": [[[float(cols.mean()), float(rows.mean())], [float(box[0, 0]), float(box[0, 1])]]],
              "labels": [[1, 0]]}
    embedding = segmenter.embedding(k).embedding
    terms = onnx.image_terms(embedding)
    scale = loaded.spec.image_size / max(slices.slice_hw)
    coords, labels = onnx_prompt_arrays(boxes=torch.from_numpy(box * scale).float())
    feeds = {**dict(zip(IMAGE_OUTPUTS, terms, strict=True)), "point_coords": coords, "point_labels": labels}
    mask = segmenter.predict(boxes=box, slice_index=k).masks[0, 0]

    def ms(run) -> float:
        return round(1000 * median_seconds(run, repeats)[0], 2)

    return {"slice_hw": list(slices.slice_hw), "tokens_box": 7, "tokens_box_2_clicks": 9,
            "prompt_graph_box_ms": ms(lambda: onnx.session(False).run(None, feeds)),
            "image_graph_ms_first_click_of_a_slice": ms(lambda: onnx.image_terms(embedding)),
            "segmenter_predict_box_ms": ms(lambda: segmenter.predict(boxes=box, slice_index=k)),
            "segmenter_predict_box_2_clicks_ms": ms(lambda: segmenter.predict(boxes=box, slice_index=k, **clicks)),
            "run_lengths_ms": ms(lambda: run_lengths(mask))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--click-threads", default="1",
                        help="torch / onnxruntime threads for the click latency, e.g. 2 or 1,2 (the encoder is "
                             "timed on one)")
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

    case = _phantom(0)
    report["click_latency"] = {"target_p50_ms_onnx": 30.0, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        write_volume(case.image, case.geometry, Path(tmp) / "case.nii.gz")
        for threads in [int(t) for t in str(args.click_threads).split(",")]:
            torch.set_num_threads(threads)
            rng = np.random.default_rng(0)
            run = {"threads": threads, "load_average_1m_before": round(os.getloadavg()[0], 2)}
            for decoder in ("torch", "onnx"):
                run[decoder] = click_latency(loaded, Path(tmp), case, clicks, rng, decoder=decoder)
                print(threads, decoder, run[decoder]["round_trip_ms"], run[decoder]["server_ms"], flush=True)
            run["phases_onnx"] = click_phases(loaded, case, repeats=clicks // 2)
            run["load_average_1m_after"] = round(os.getloadavg()[0], 2)
            print(threads, run["phases_onnx"], flush=True)
            report["click_latency"]["runs"].append(run)
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
