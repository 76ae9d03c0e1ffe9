"""The performance suite: every speed and memory figure of samadapt in one run, JSON + a Markdown table.

Sections (each figure next to its physical bound where one exists; FLOPs counted by torch's
FlopCounterMode, the bound is FLOPs / the machine's measured matmul FLOP/s):

- ``machine_bound``: fp32 matmul FLOP/s on the CPU (and fp32/bf16 on a GPU).
- ``encoder``: image-encoder images/s, tiny at batch 1-8 and random-weight vit_b at batch 1-2, fp32 CPU;
  on a GPU also bf16 autocast, channels-last and torch.compile variants (skipped without one).
- ``finetune_vs_naive``: fine-tuning objects/s and slices/s of ``samadapt train`` (cache + single, cache +
  multi-prompt, PHPG) against the naive loop (float32 per-slice files, encoder every step, one prompt).
- ``decoder``: prompt encoder + mask decoder latency for 1..64 prompts (torch, onnxruntime), its linear fit.
- ``multi_prompt``: objects/s multi- vs single-prompt, by ``benchmarks/bench_multi_prompt.py`` (run here).
- ``memory``: cache bytes per slice vs the naive stores; peak RSS of a short ``samadapt train``.

    python benchmarks/perf_suite.py            # everything, ~5 min on 2 quiet CPU cores
    python benchmarks/perf_suite.py --quick    # smaller sweeps, ~4 min
    python benchmarks/perf_suite.py --only machine_bound,encoder --device cuda   # a GPU's encoder figures

Writes ``benchmarks/results/perf_suite.json`` and ``perf_suite.md`` (``perf_suite_quick.*`` with --quick).
Run it on a quiet machine: other processes on the cores skew every figure (the load average at the start
is recorded); ``--threads`` sets torch's thread count (default: torch's own).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from bench_multi_prompt import SLICES_PER_STEP  # noqa: E402
from perf.decoder_speed import decoder_section, linear_fit  # noqa: E402
from perf.encoder_speed import encoder_section  # noqa: E402
from perf.finetune_speed import finetune_section  # noqa: E402
from perf.machine_bound import matmul_flops_per_s  # noqa: E402
from perf.memory import cache_bytes, same_threads, training_rss  # noqa: E402
from perf.report import headline_rows, markdown_table  # noqa: E402
from perf.timing import sig  # noqa: E402
from phantom_workbench import embedded_phantoms  # noqa: E402
from samadapt.io.atomic import atomic_path, write_json_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
SECTIONS = ("machine_bound", "encoder", "finetune_vs_naive", "decoder", "multi_prompt", "memory")


def machine_bound_section(use_gpu: bool) -> dict:
    cpu = torch.device("cpu")
    out = {"cpu_fp32_gflops": sig(matmul_flops_per_s(cpu) / 1e9), "torch_threads": torch.get_num_threads()}
    if use_gpu:
        gpu = torch.device("cuda")
        out["gpu_gflops"] = {"fp32": sig(matmul_flops_per_s(gpu, n=8192) / 1e9),
                             "bf16": sig(matmul_flops_per_s(gpu, torch.bfloat16, n=8192) / 1e9)}
    return out


def multi_prompt_section(work: Path, cases: int, quick: bool) -> dict:
    """``bench_multi_prompt.py`` on the suite's phantoms (same work folder: no new data or embeddings)."""
    out = work / "multi_prompt_speed.json"
    steps, rounds = ("6", "1") if quick else ("10", "2")
    command = [sys.executable, str(HERE / "bench_multi_prompt.py"), "--work", str(work), "--cases", str(cases),
               "--steps", steps, "--rounds", rounds, "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, env=same_threads())
    report = json.loads(out.read_text())
    configs = report["configurations"]
    multi = sorted((c["objects_per_step"] / SLICES_PER_STEP, c["median_step_s"] / SLICES_PER_STEP)
                   for name, c in configs.items() if name.startswith("multi_"))
    return {"speedup_vs_single": report["speedup_vs_single"], "configurations": configs,
            # a training step per slice = fixed + per_object x objects: what batching the prompts can gain at most
            "step_fit_per_slice": linear_fit([k for k, _ in multi], [s for _, s in multi]),
            "command": " ".join(["python benchmarks/bench_multi_prompt.py", "--steps", steps, "--rounds", rounds])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sweeps and fewer steps")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of sections: {', '.join(SECTIONS)}")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="whether to run the GPU variants (auto: when CUDA is available)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--cases", type=int, default=None, help="phantom cases (default 6, --quick 4)")
    parser.add_argument("--work", type=Path, default=None, help="folder for phantoms, caches, runs (reused)")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    use_gpu = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    if use_gpu and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU here")
    cases = args.cases or (4 if args.quick else 6)
    work = args.work or Path(tempfile.mkdtemp(prefix="samadapt_perf_"))

    results: dict = {"suite": "samadapt performance suite", "quick": args.quick, "machine": machine(),
                     "gpu": torch.cuda.get_device_name(0) if use_gpu else None, "seconds": {}}
    cpu_flops = None
    data = None

    def phantoms():
        nonlocal data
        if data is None:
            data = embedded_phantoms(work, "tiny", cases, split=(1.0, 0.0, 0.0))
        return data

    for section in SECTIONS:
        if section not in chosen and not (section == "machine_bound" and {"encoder", "decoder"} & set(chosen)):
            continue
        start = time.perf_counter()
        print(f"perf: {section} ...", file=sys.stderr, flush=True)
        if section == "machine_bound":
            results[section] = machine_bound_section(use_gpu)
            cpu_flops = results[section]["cpu_fp32_gflops"] * 1e9
        elif section == "encoder":
            gpu_flops = {k: v * 1e9 for k, v in results["machine_bound"].get("gpu_gflops", {}).items()} or None
            results[section] = encoder_section(args.quick, cpu_flops, gpu_flops)
        elif section == "finetune_vs_naive":
            _, _, prepared, _ = phantoms()
            results[section] = finetune_section(work, prepared, args.quick)
        elif section == "decoder":
            results[section] = decoder_section(args.quick, cpu_flops)
        elif section == "multi_prompt":
            phantoms()
            results[section] = multi_prompt_section(work, cases, args.quick)
        elif section == "memory":
            _, _, prepared, cache = phantoms()
            results[section] = {"cache": cache_bytes(cache),
                                "training_rss": training_rss(prepared.root, work / "rss_run", 6 if args.quick else 12)}
        results["seconds"][section] = round(time.perf_counter() - start, 1)
    results["table"] = headline_rows(results)
    stem = "perf_suite_quick" if args.quick else "perf_suite"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out_dir / f"{stem}.json", results)
    header = (f"# samadapt performance suite{' (quick)' if args.quick else ''}\n\n"
              f"`python benchmarks/perf_suite.py{' --quick' if args.quick else ''}`; machine: "
              f"{results['machine']['cpus_usable']} CPUs, torch {results['machine']['torch']}, "
              f"{results['machine']['torch_threads']} threads, load {results['machine']['load_average_1m_at_start']} "
              f"at start; GPU: {results['gpu'] or 'none'}. Section times (s): {results['seconds']}.")
    with atomic_path(args.out_dir / f"{stem}.md", suffix=".md") as tmp:
        tmp.write_text(markdown_table(results["table"], header))
    print(f"wrote {args.out_dir / stem}.json and .md (work folder {work})", file=sys.stderr)


if __name__ == "__main__":
    main()
