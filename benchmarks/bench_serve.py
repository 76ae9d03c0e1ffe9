"""Inference benchmark: click-to-mask latency of the web app over HTTP, volume segmentation speed, propagation.

Writes ``benchmarks/results/serve_latency.json`` (atomically):

- ``click_latency``: per model, the round trip of ``POST /predict`` over a kept-alive HTTP connection to a
  live ``samadapt serve`` app (uvicorn on loopback), with the slice embedding already cached: the prompt
  changes every click (a box, then a box plus clicks), as when a user refines a mask. p50 / p95 / mean in
  ms, the server's own share, and the first click of the slice (encoder included). Target: p50 <= 50 ms.
  ``vit_b`` is a *random-weight* ViT-B built from the registry's architecture (1024 px frame, 256-wide
  decoder): timing only, its masks are meaningless; speed does not depend on the weights. ``<model>/onnx``:
  the same with ``samadapt serve --decoder onnx`` (each click's decoder in onnxruntime; skipped without it).
- ``volume_segmentation``: seconds per slice of ``segment_volume`` with one 3D box per organ (all boxes of
  a slice decoded together) and with key-slice propagation, encoder included; ``vit_b`` on a few slices.
- ``propagation_quality``: 3D Dice of key-slice propagation against the label on CT phantoms with
  ``tiny``, next to the key slice alone (the trivial baseline) and two settings the defaults were chosen
  over (a 5% + 1 px box margin; no intensity stop rule). Depends on the weights: rerun after a new
  checkpoint.

    python benchmarks/bench_serve.py              # about 5 minutes on an idle 2-core CPU (ViT-B's encoder)
    python benchmarks/bench_serve.py --quick      # tiny only, fewer clicks and phantoms
    python benchmarks/bench_serve.py --threads 1  # one torch thread: steadier on a machine shared with others

Times depend on what else runs: ``machine.load_average_1m_at_start`` says how busy the CPU was.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from samadapt.data.phantoms import generate_phantom  # noqa: E402
from samadapt.inference.model_source import load_model  # noqa: E402
from samadapt.inference.propagation import PropagationSettings, propagate  # noqa: E402
from samadapt.inference.segmenter import Segmenter  # noqa: E402
from samadapt.inference.volume_prompts import VoxelBox  # noqa: E402
from samadapt.inference.volume_segmentation import VolumePrompt, segment_volume  # noqa: E402
from samadapt.io.atomic import write_json_atomic  # noqa: E402
from samadapt.io.volume import Volume, write_volume  # noqa: E402
from samadapt.models.registry import REGISTRY  # noqa: E402
from samadapt.models.sam import LoadedModel, build_sam  # noqa: E402
from samadapt.overlap import dice  # noqa: E402
from samadapt.prompts.boxes import boxes_from_masks  # noqa: E402
from samadapt.serve.app import create_app  # noqa: E402
from samadapt.serve.background import BackgroundServer  # noqa: E402
from samadapt.serve.sessions import ServeSettings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "serve_latency.json"
ORGANS = {"liver": (1, 10), "spleen": (2,), "kidney_right": (3, 11), "kidney_left": (4, 12), "stomach": (5,),
          "pancreas": (6, 13), "aorta": (7,)}
GRID, SPACING = (24, 128, 128), (3.125, 3.125, 8.0)  # Z, Y, X voxels; x, y, z mm (400 x 400 x 192 mm)
TARGET_P50_MS = 50.0


def _phantom(index: int):
    return generate_phantom(np.random.default_rng([0, index]), size=GRID, spacing=SPACING)


def _ms(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2), "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
            "mean": round(statistics.fmean(ordered), 2), "min": round(ordered[0], 2)}


def _post(connection: http.client.HTTPConnection, path: str, body: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    elapsed = 1000 * (time.perf_counter() - started)
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status} {payload[:200]!r}")
    return json.loads(payload), elapsed


def click_latency(loaded: LoadedModel, data: Path, case, clicks: int, rng: np.random.Generator,
                  decoder: str = "torch") -> dict:
    """Round trips of ``clicks`` prompts on one slice whose embedding is cached; see the module docstring."""
    app = create_app(loaded, ServeSettings(data_dir=data, decoder=decoder))
    liver = np.isin(case.label, ORGANS["liver"])
    k = int(liver.sum(axis=(1, 2)).argmax())
    rows, cols = np.nonzero(liver[k])
    box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=float)
    with BackgroundServer(app) as url:
        connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=600)
        connection.request("POST", "/api/volumes", json.dumps({"path": "case.nii.gz"}),
                           {"Content-Type": "application/json"})
        sid = json.loads(connection.getresponse().read())["id"]
        first, first_ms = _post(connection, f"/api/volumes/{sid}/predict", {"slice": k, "box": box.tolist()})
        assert first["embedded_now"]
        round_trips, server = [], []
        for i in range(clicks):
            jittered = np.clip(box + rng.uniform(-3, 3, 4), 0, GRID[2] - 1)
            body = {"slice": k, "box": [min(jittered[0], jittered[2]), min(jittered[1], jittered[3]),
                                        max(jittered[0], jittered[2]), max(jittered[1], jittered[3])]}
            if i % 2:  # every other click refines with a positive and a negative point
                body["points"] = [[float(cols.mean()), float(rows.mean())], [float(box[0]), float(box[1])]]
                body["labels"] = [1, 0]
            answer, elapsed = _post(connection, f"/api/volumes/{sid}/predict", body)
            assert not answer["embedded_now"]
            round_trips.append(elapsed)
            server.append(answer["server_ms"])
        connection.close()
    p50 = statistics.median(round_trips)
    return {"clicks": clicks, "slice_hw": [GRID[1], GRID[2]], "model_frame": loaded.spec.image_size,
            "round_trip_ms": _ms(round_trips), "server_ms": _ms(server), "first_click_ms": round(first_ms, 1),
            "first_click_server_ms": round(first["server_ms"], 1), "meets_p50_target": p50 <= TARGET_P50_MS}


def _organ_prompts(label: np.ndarray, propagate_from_key: bool) -> list[VolumePrompt]:
    """One 3D box per organ present in ``label`` ``(Z, Y, X)`` (voxel indices), in ``ORGANS`` order."""
    prompts = []
    for value, (name, raw) in enumerate(ORGANS.items(), start=1):
        z, y, x = np.nonzero(np.isin(label, raw))
        if z.size:
            box = VoxelBox((int(x.min()), int(y.min()), int(z.min())), (int(x.max()), int(y.max()), int(z.max())))
            prompts.append(VolumePrompt(name, value, box=box, propagate=propagate_from_key))
    return prompts


def volume_speed(loaded: LoadedModel, case, max_slices: int | None = None) -> dict:
    """Wall time of segmenting every organ from 3D boxes (and by propagation), encoder included.

    ``seconds_per_slice`` divides by the volume's slices; ``seconds_per_decode`` by the slice decodes (a
    slice decoded for two propagated organs counts twice). ``max_slices``: a central slab only (ViT-B).
    """
    image, label = case.image, case.label
    if max_slices is not None:
        lo = (image.shape[0] - max_slices) // 2
        image, label = image[lo : lo + max_slices], label[lo : lo + max_slices]
    volume = Volume(image, case.geometry)
    results = {}
    for mode, follow in (("boxes", False), ("propagation", True)):
        if follow and max_slices is not None:
            continue
        segmenter = Segmenter(loaded, max_cached_slices=image.shape[0])
        segmenter.set_volume(volume)
        started = time.perf_counter()
        result = segment_volume(segmenter, _organ_prompts(label, follow))
        wall = time.perf_counter() - started
        results[mode] = {"seconds": round(wall, 3), "volume_slices": int(image.shape[0]),
                         "slice_decodes": result.slices_decoded, "objects": len(result.objects),
                         "encoder_calls": segmenter.encoder_calls,
                         "seconds_per_slice": round(wall / image.shape[0], 4),
                         "seconds_per_decode": round(wall / max(1, result.slices_decoded), 4)}
    return results


def propagation_quality(loaded: LoadedModel, cases: list) -> dict:
    """Mean 3D Dice of key-slice propagation per setting, over the organs of ``cases``."""
    variants = {"default": PropagationSettings(),
                "margin_5pct_1px": PropagationSettings(margin_fraction=0.05, margin_px=1.0),
                "no_intensity_rule": PropagationSettings(max_intensity_shift=None)}
    scores: dict[str, list[float]] = {name: [] for name in [*variants, "key_slice_only"]}
    per_organ: dict[str, list[float]] = {}
    segmenter = Segmenter(loaded, max_cached_slices=GRID[0])
    for case in cases:
        slices = segmenter.set_volume(Volume(case.image, case.geometry))
        for organ, raw in ORGANS.items():
            truth = np.isin(case.label, raw)
            if truth.sum() < 50:
                continue
            key = int(truth.sum(axis=(1, 2)).argmax())
            key_mask = slices.labels_slice(truth.astype(np.uint8), key).astype(bool)
            box = boxes_from_masks(torch.from_numpy(key_mask)[None])[0].numpy()
            for name, settings in variants.items():
                result = propagate(segmenter, key, box=box, settings=settings)
                predicted = slices.empty_labels()
                for k, mask in result.masks.items():
                    slices.paint(predicted, k, mask, 1)
                scores[name].append(dice(predicted.astype(bool), truth))
                if name == "default":
                    per_organ.setdefault(organ, []).append(scores[name][-1])
                    alone = slices.empty_labels()
                    if key in result.masks:
                        slices.paint(alone, key, result.masks[key], 1)
                    scores["key_slice_only"].append(dice(alone.astype(bool), truth))
    return {"phantoms": len(cases), "objects": len(scores["default"]),
            "mean_dice": {name: round(float(np.mean(v)), 3) for name, v in scores.items()},
            "default_per_organ": {organ: round(float(np.mean(v)), 3) for organ, v in per_organ.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny only, fewer clicks and phantoms")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    clicks, n_phantoms = (20, 1) if args.quick else (60, 3)
    decoders = ["torch"]
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnxruntime is not installed: the onnx decoder rows are skipped", flush=True)
    else:
        decoders.append("onnx")
    rng = np.random.default_rng(0)
    report = {"machine": machine(), "target_p50_ms": TARGET_P50_MS, "grid_zyx": list(GRID),
              "spacing_xyz_mm": list(SPACING), "click_latency": {}, "volume_segmentation": {}}
    cases = [_phantom(i) for i in range(n_phantoms)]
    models = {"tiny": load_model("tiny")}
    if not args.quick:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            spec = REGISTRY["vit_b"]
            models["vit_b"] = LoadedModel(build_sam(spec), spec, None, {"note": "random weights, timing only"})
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        write_volume(cases[0].image, cases[0].geometry, data / "case.nii.gz")
        for name, loaded in models.items():
            for decoder in decoders:
                key = name if decoder == "torch" else f"{name}/{decoder}"
                report["click_latency"][key] = {
                    **click_latency(loaded, data, cases[0], clicks, rng, decoder), "decoder": decoder,
                    "weights": "random (registry architecture)" if name == "vit_b" else "packaged samadapt-tiny"}
                print(key, "click p50/p95 ms:", report["click_latency"][key]["round_trip_ms"], flush=True)
    report["volume_segmentation"]["tiny"] = volume_speed(models["tiny"], cases[0])
    if "vit_b" in models:
        report["volume_segmentation"]["vit_b"] = volume_speed(models["vit_b"], cases[0], max_slices=3)
    print("volume:", report["volume_segmentation"], flush=True)
    report["propagation_quality"] = {"model": "tiny", **propagation_quality(models["tiny"], cases)}
    print("propagation:", report["propagation_quality"]["mean_dice"], flush=True)
    write_json_atomic(RESULTS, report)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
