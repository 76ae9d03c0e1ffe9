"""PHPG throughput: regions trained per second, all regions of a slice per decoder pass vs one region per pass.

On CT phantoms embedded by the foundation model, one training step is exactly ``samadapt train
--set objective=phpg``'s: read the slices (embedding + object masks) -> simulate every region's first
prompt -> first round + correction rounds + mask-only rounds, each a decoder pass -> losses (and the error
head's) -> backward -> AdamW step. "multi" decodes the K regions of a slice together in every round (the
segment-multi-region paradigm); "single" runs the same regions with the same rounds one region per pass
(``regions_per_pass=1``). Only slices with at least K objects are used, capped at K, so every slice
contributes exactly K regions. Two round settings: the CPU default (2 corrections + 1 mask-only round) and
SAM's recipe (8 + 2). Configurations are timed round-robin over several rounds and medians reported, so
machine noise hits them alike; the figures are ratios within this one run.

Writes ``benchmarks/results/phpg_speed.json``: ``regions_per_s`` per configuration,
``speedup_multi_vs_single`` per round setting, and the cost of the error head (the CPU default without it).

``--real``: what a PHPG step costs against a multi-prompt step on real CT, with the foundations that train on
it. The CURVAS abdominal CT slices of ``../shared/data/real`` (annotator 1: 36 slices, pancreas / kidney /
liver, one object per connected component, ~2.8 a slice; converted and prepared at 256 px as
``benchmarks/real_foundations.py`` does, read by path, never copied) are embedded by each model; then every
configuration trains the very same batches (``--slices-per-step`` slices, default 4, drawn once from a seed)
exactly as ``samadapt train`` does (losses -> backward -> AdamW). Configurations: ``multi-prompt`` (the default
objective), ``phpg`` (the defaults: 2 corrections + 1 mask-only round, error head on), ``phpg_no_error_head``
and ``phpg_recompute`` (``phpg_recompute_passes``: activation checkpointing of the decoder passes). Each
configuration runs in its own fresh process, round-robin over ``--rounds``, so its peak RSS is its own.
Per configuration (per batch the fastest of the rounds, then the mean over batches): the step time split
into forward (losses), backward and the optimiser, the time in the decoder's and the error head's forward
passes and in the simulated users, page faults; what autograd saves for the backward pass (MB, on the batch
of most objects); peak RSS and RSS after loading. Headline: the per-step ratio PHPG / multi-prompt per model,
in wall time and in process CPU time. Writes ``benchmarks/results/phpg_real_speed.json``.

    python benchmarks/bench_phpg.py                  # ~4 min on 2 CPU cores (phantoms, embeddings, timing)
    python benchmarks/bench_phpg.py --work /tmp/pw   # keep (and reuse) the phantoms and embeddings
    python benchmarks/bench_phpg.py --real --work /tmp/phpg_real                       # both models, ~10 min
    python benchmarks/bench_phpg.py --real --work /tmp/phpg_real --models tiny --steps 2 --rounds 1   # ~1 min
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from phantom_workbench import embedded_phantoms, phantom_arguments, timed_training_steps  # noqa: E402
from samadapt.config import FinetuneConfig, make_config  # noqa: E402
from samadapt.io.atomic import write_json_atomic  # noqa: E402
from samadapt.training.finetune import objective_from_config, trainable_parameters  # noqa: E402
from samadapt.training.phpg import PHPGSettings  # noqa: E402
from samadapt.training.slice_data import training_slices  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "phpg_speed.json"
REAL_RESULTS = Path(__file__).resolve().parent / "results" / "phpg_real_speed.json"
ROUNDS = {"cpu_default_2+1": (2, 1), "sam_recipe_8+2": (8, 2)}
REAL_CONFIGS = {  # name -> FinetuneConfig settings (groups as dicts) beyond the defaults; PHPG with its error
    "multi-prompt": {},  # head, as the recorded figures were measured (the head's default is off: docs/phpg.md)
    "phpg": {"objective": "phpg", "phpg": {"error_head": True}},
    "phpg_no_error_head": {"objective": "phpg", "phpg": {"error_head": False}},
    "phpg_recompute": {"objective": "phpg", "phpg": {"error_head": True, "recompute_passes": True}},
}


def time_steps(loaded, prepared, cache, pool, objective, slices_per_step: int, steps: int, seed: int) -> list[dict]:
    """``steps`` PHPG training steps on slices of ``pool``; per step: seconds, regions, prompt seconds."""
    named = trainable_parameters(loaded, train_prompt_encoder=False)
    if objective.error_head is not None:
        named.update({f"error_head.{n}": p for n, p in objective.error_head.named_parameters()})
    return timed_training_steps(loaded, prepared, cache, pool, objective, list(named.values()),
                                FinetuneConfig().is_lesion, slices_per_step, steps, seed)


# ----------------------------------------------------------------------------- --real: CURVAS, PHPG vs multi-prompt


def real_curvas(work: Path, models: list[str]):
    """CURVAS annotator 1 as a 2D folder, prepared at 256 px (all slices in ``train``) and embedded by each
    model in ``models``; every step resumes in ``work``. Returns the prepared dataset."""
    from real_foundations import CURVAS, IMAGE_SIZE, REAL, convert_set
    from samadapt.config import PrepareConfig
    from samadapt.data.prepare import prepare_dataset
    from samadapt.models.embedding_cache import compute_embeddings
    from samadapt.models.onnx_encoder import use_encoder_runtime
    from samadapt.models.sam import load_sam

    source = REAL / CURVAS
    if not source.is_dir():
        sys.exit(f"{source}: the real CURVAS slices are not here (../shared/data/real); --real needs them")
    convert_set("curvas", source / "annotator1", source / "labels.json", work / "curvas")
    prepared = prepare_dataset(work / "curvas", work / "prepared",
                               PrepareConfig(image_size=IMAGE_SIZE, min_area=7, split=(1.0, 0.0, 0.0)))
    for model in models:
        compute_embeddings(prepared, use_encoder_runtime(load_sam(model), "auto"), batch_size=4)
    return prepared


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024


def _real_worker(work: str, model: str, name: str, batches: list[list[int]], threads: int, queue) -> None:
    """One configuration in a fresh process: a warm-up step on the batch of most objects (the allocator then
    holds what every later step needs; what autograd saves for the backward pass is measured there), then one
    timed step per batch. Puts ``{rows, saved_mb, rss_loaded_mb, peak_rss_mb}`` (or ``{skipped}``)."""
    from samadapt.data.prepared import PreparedDataset
    from samadapt.models.embedding_cache import compute_embeddings
    from samadapt.models.sam import load_sam
    from samadapt.training.slice_data import load_slice

    torch.set_num_threads(threads)
    settings = REAL_CONFIGS[name]
    unknown = sorted(set(settings) - {f.name for f in fields(FinetuneConfig)})
    if unknown:  # an older samadapt (a before/after comparison)
        queue.put({"skipped": f"this samadapt has no setting {unknown}"})
        return
    config = make_config(FinetuneConfig, settings)
    loaded = load_sam(model)
    prepared = PreparedDataset(Path(work) / "prepared")
    cache = compute_embeddings(prepared, loaded)  # complete: opens it
    pool = training_slices(prepared, "train")
    objective = objective_from_config(config, loaded.spec.prompt_embed_dim)
    named = trainable_parameters(loaded, train_prompt_encoder=False)
    head = getattr(objective, "error_head", None)
    if head is not None:
        named.update({f"error_head.{n}": p for n, p in head.named_parameters()})
    optimizer = torch.optim.AdamW(list(named.values()), lr=1e-5)
    phases = {"decoder_forward_s": 0.0, "error_head_forward_s": 0.0}

    def timed(key, function):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = function(*args, **kwargs)
            phases[key] += time.perf_counter() - t0  # not reached by a recomputation, which torch stops early
            return out
        return wrapper

    # instance attributes: only this process's decoder and head are timed
    loaded.sam.mask_decoder.predict_masks = timed("decoder_forward_s", loaded.sam.mask_decoder.predict_masks)
    if head is not None:
        head.forward = timed("error_head_forward_s", head.forward)
    rss_loaded = _rss_mb()
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    def losses_of(samples, generator):
        return [objective.slice_loss(loaded.sam, sample, generator) for sample in samples]

    def step(batch: list[int], generator: torch.Generator, measure: bool) -> dict:
        phases.update(dict.fromkeys(phases, 0.0))
        samples = [load_slice(prepared, cache, pool[i], config.is_lesion) for i in batch]
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c0, t0 = time.process_time(), time.perf_counter()
        if measure:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                results = losses_of(samples, generator)
        else:
            results = losses_of(samples, generator)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.stack([loss for loss, _ in results]).mean().backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        return {"step_s": t3 - t0, "step_cpu_s": time.process_time() - c0, "forward_s": t1 - t0,
                "backward_s": t2 - t1, "optimizer_s": t3 - t2, **phases,
                "prompt_s": sum(stats["prompt_s"] for _, stats in results),
                "page_faults_k": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 1000,
                "regions": sum(stats["prompts"] for _, stats in results)}

    largest = max(batches, key=lambda batch: sum(len(pool[i].objects) for i in batch))
    step(largest, torch.Generator().manual_seed(1000), measure=True)
    rows = [step(batch, torch.Generator().manual_seed(i), measure=False) for i, batch in enumerate(batches)]
    queue.put({"rows": rows, "saved_mb": saved[0] / 2**20, "rss_loaded_mb": rss_loaded,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


MALLOC_RETAIN = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**34)}


def _in_fresh_process(*args) -> dict:
    context = multiprocessing.get_context("spawn")  # a new interpreter: it reads MALLOC_* from os.environ
    queue = context.Queue()
    process = context.Process(target=_real_worker, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def summarise(runs: list[dict]) -> dict:
    """One configuration's runs (rounds) -> per batch the fastest round (the least disturbed by other work on
    a shared machine), then each figure's mean over the batches, the memory maxima and the counts."""
    if any("skipped" in run for run in runs):
        return {"skipped": runs[0]["skipped"]}
    best = [min(rows, key=lambda row: row["step_s"]) for rows in zip(*(run["rows"] for run in runs), strict=True)]
    return {**{key: round(statistics.mean(row[key] for row in best), 3) for key in best[0]},
            "saved_for_backward_mb": round(max(run["saved_mb"] for run in runs)),
            "peak_rss_mb": round(max(run["peak_rss_mb"] for run in runs)),
            "rss_after_loading_mb": round(max(run["rss_loaded_mb"] for run in runs)),
            "batches": len(best), "rounds": len(runs)}


def main_real(args) -> None:
    work = args.work or Path("/tmp/samadapt_bench_phpg_real")
    out_path = REAL_RESULTS if args.out == RESULTS else args.out
    if args.malloc == "retain":
        os.environ.update(MALLOC_RETAIN)
    models = args.models.split(",")
    prepared = real_curvas(work, models)
    pool = training_slices(prepared, "train")
    generator = torch.Generator().manual_seed(args.seed)
    batches = [torch.randperm(len(pool), generator=generator)[: args.slices_per_step].tolist()
               for _ in range(args.steps)]
    names = [name for name in REAL_CONFIGS if name in args.configs.split(",")]
    out = {}
    for model in models:
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for _ in range(args.rounds):  # round-robin: slow spells of a shared machine hit every configuration
            for name in names:
                result = _in_fresh_process(str(work), model, name, batches, args.threads)
                runs[name].append(result)
                print(model, name, [round(row["step_s"], 2) for row in result.get("rows", [])],
                      result.get("skipped", ""), flush=True)
        table = {name: summarise(r) for name, r in runs.items()}
        ratios = {key: {name: round(row[key] / table["multi-prompt"][key], 2) for name, row in table.items()
                        if name != "multi-prompt" and key in row and "step_s" in table.get("multi-prompt", {})}
                  for key in ("step_s", "step_cpu_s")}
        out[model] = {"configurations": table, "step_ratio_vs_multi_prompt": ratios["step_s"],
                      "step_cpu_ratio_vs_multi_prompt": ratios["step_cpu_s"]}
        print(model, "PHPG / multi-prompt per step (wall, CPU):", ratios["step_s"], ratios["step_cpu_s"], flush=True)
    write_json_atomic(out_path, {
        "what": "one training step (losses -> backward -> AdamW) of PHPG vs multi-prompt fine-tuning on real CT: "
                f"CURVAS annotator 1 at 256 px, the same {args.steps} batches of {args.slices_per_step} slices for "
                "every configuration, decoder fine-tuning from cached embeddings, fp32 CPU; each configuration "
                "in a fresh process (its own peak RSS); per batch the fastest of the rounds, then the mean over "
                "batches; decoder_forward_s is the forward phase only (a recomputation counts in backward_s)",
        "objects_per_batch": [sum(len(pool[i].objects) for i in batch) for batch in batches],
        "slices_in_pool": len(pool), "models": out, "machine": machine(), "torch_threads": args.threads,
        "malloc": args.malloc if args.malloc == "default" else MALLOC_RETAIN,
        "phpg_settings": "defaults: 2 corrections + 1 mask-only round (4 decoder passes a step), error head on",
        "command": "python benchmarks/bench_phpg.py " + " ".join(sys.argv[1:]),
    })
    print(f"wrote {out_path}")


def main() -> None:
    parser = phantom_arguments(__doc__.splitlines()[0], cases=6, out=RESULTS)
    parser.add_argument("--regions", type=int, default=6, help="regions per slice (K)")
    parser.add_argument("--steps", type=int, default=3, help="steps per configuration per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slices-per-step", type=int, default=None, help="2 (phantoms), 4 (--real)")
    parser.add_argument("--real", action="store_true", help="PHPG vs multi-prompt on real CURVAS CT (see above)")
    parser.add_argument("--models", default="medsam_lite,tiny", help="--real: foundations, comma-separated")
    parser.add_argument("--configs", default=",".join(REAL_CONFIGS), help="--real: configurations to run")
    parser.add_argument("--threads", type=int, default=2, help="--real: torch threads per process")
    parser.add_argument("--seed", type=int, default=0, help="--real: the batches")
    parser.add_argument("--malloc", choices=("default", "retain"), default="default",
                        help="--real: glibc malloc as is, or told to keep freed memory (MALLOC_MMAP_THRESHOLD_, "
                             "MALLOC_TRIM_THRESHOLD_): no fresh pages, so no page faults, at every step")
    args = parser.parse_args()
    if args.real:
        args.slices_per_step = args.slices_per_step or 4
        main_real(args)
        return
    args.slices_per_step = args.slices_per_step or 2
    _, loaded, prepared, cache = embedded_phantoms(args.work, args.model, args.cases, split=(1.0, 0.0, 0.0))
    pool = [s for s in training_slices(prepared, "train") if len(s.objects) >= args.regions]
    configs = {}
    for setting, (corrections, mask_only) in ROUNDS.items():
        phpg = PHPGSettings(correction_rounds=corrections, mask_only_rounds=mask_only, error_head=True)
        base = FinetuneConfig(objective="phpg", max_prompts_per_slice=args.regions, phpg=phpg)
        multi = objective_from_config(base, loaded.spec.prompt_embed_dim)
        configs[f"{setting}/multi"] = multi
        configs[f"{setting}/single"] = replace(multi, regions_per_pass=1)
        if setting == "cpu_default_2+1":
            configs[f"{setting}/multi_no_error_head"] = replace(multi, error_head=None)
    timings: dict[str, list[dict]] = {name: [] for name in configs}
    for objective in configs.values():  # warm-up: allocator, first-call overheads
        time_steps(loaded, prepared, cache, pool, objective, 1, 1, seed=99)
    for round_index in range(args.rounds):
        for name, objective in configs.items():
            timings[name] += time_steps(loaded, prepared, cache, pool, objective, args.slices_per_step, args.steps,
                                        seed=round_index)
    result = {}
    for name, rows in timings.items():
        step_s = statistics.median(r["step_s"] for r in rows)
        regions = statistics.mean(r["prompts"] for r in rows)
        result[name] = {"regions_per_step": regions, "median_step_s": round(step_s, 4),
                        "regions_per_s": round(regions / step_s, 2),
                        "prompt_fraction": round(statistics.median(r["prompt_s"] / r["step_s"] for r in rows), 3),
                        "steps_timed": len(rows)}
    rate = {name: row["regions_per_s"] for name, row in result.items()}
    head_cost = round(rate["cpu_default_2+1/multi_no_error_head"] / rate["cpu_default_2+1/multi"], 2)
    sam_vs_default = round(rate["cpu_default_2+1/multi"] / rate["sam_recipe_8+2/multi"], 2)
    speedup = {setting: round(rate[f"{setting}/multi"] / rate[f"{setting}/single"], 2) for setting in ROUNDS}
    write_json_atomic(args.out, {
        "what": f"regions trained per second with PHPG (K={args.regions} regions per slice, {args.slices_per_step} "
                "slices per step, error head on, decoder fine-tuning from cached embeddings, fp32 CPU): all regions "
                "of a slice in one decoder pass per round (multi) vs one region per pass (single), same rounds",
        "model": args.model, "machine": machine(), "slices_in_pool": len(pool), "configurations": result,
        "speedup_multi_vs_single": speedup,
        "error_head_slowdown": head_cost, "sam_recipe_slowdown_vs_default": sam_vs_default,
        "prompt_fraction": "share of the step spent simulating users (first prompts, correction clicks)",
        "command": "python benchmarks/bench_phpg.py",
    })
    print(f"speed-up, all regions per pass vs one: {speedup}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
