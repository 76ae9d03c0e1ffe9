"""The suite's Markdown table: one row per headline figure, with its physical bound where there is one."""

from __future__ import annotations


def _row(section: str, figure: str, value, unit: str, bound=None, note: str = "",
         lower_is_better: bool = False) -> dict:
    """One table row; ``fraction_of_bound`` is the share of the physical limit reached (1 = at the bound):
    value / bound for rates, bound / value for latencies (``lower_is_better``)."""
    fraction = None
    if isinstance(bound, (int, float)) and bound and value:
        fraction = round(bound / value if lower_is_better else value / bound, 3)
    return {"section": section, "figure": figure, "value": value, "unit": unit, "bound": bound,
            "fraction_of_bound": fraction, "note": note}


def headline_rows(results: dict) -> list[dict]:
    """Rows for the table from the suite's results (sections that did not run are left out)."""
    rows = []
    machine = results.get("machine_bound", {})
    if machine:
        rows.append(_row("machine", "fp32 matmul, CPU", machine["cpu_fp32_gflops"], "GFLOP/s",
                         note=f"{machine['torch_threads']} torch threads; the bound below"))
        for dtype, value in machine.get("gpu_gflops", {}).items():
            rows.append(_row("machine", f"{dtype} matmul, GPU", value, "GFLOP/s"))
    encoder = results.get("encoder", {})
    for row in encoder.get("cpu_fp32", []):
        rows.append(_row("encoder", f"{row['model']} fp32 CPU, batch {row['batch_size']}", row["images_per_s"],
                         "images/s", row["bound_images_per_s"]))
    gpu = encoder.get("gpu", {})
    if "skipped" in gpu:
        rows.append(_row("encoder", "GPU variants (bf16, channels-last, torch.compile)", None, "", note=gpu["skipped"]))
    for row in gpu.get("rows", []):
        rows.append(_row("encoder", f"{row['model']} {row['variant']} GPU, batch {row['batch_size']}",
                         row["images_per_s"], "images/s", row["bound_images_per_s"]))
    finetune = results.get("finetune_vs_naive", {})
    for name, row in finetune.get("configurations", {}).items():
        ratio = finetune["ratio_vs_naive"].get(name)
        note = f"{ratio['objects_per_s']}x naive objects/s, {ratio['slices_per_s']}x slices/s" if ratio else (
            f"encoder {row.get('encoder_fraction_of_step')} of the step")
        rows.append(_row("fine-tuning", f"{name} ({row['objects_per_step']} objects/step)", row["objects_per_s"],
                         "objects/s", note=note))
    for name, entry in results.get("decoder", {}).items():
        for row in entry["torch_fp32"]:
            if row["prompts"] in (1, 8, 64):
                rows.append(_row("decoder", f"{name} torch, {row['prompts']} prompts", row["latency_ms"], "ms",
                                 row["bound_ms"], note=f"{row['ms_per_prompt']} ms/prompt", lower_is_better=True))
        fit = entry["fit"]
        rows.append(_row("decoder", f"{name} latency fit", fit["per_prompt_ms"], "ms/prompt",
                         note=f"+ {fit['fixed_ms']} ms fixed: batching can gain at most "
                              f"{fit['objects_per_s_gain_limit']}x objects/s"))
        for row in entry.get("onnxruntime", []) if isinstance(entry.get("onnxruntime"), list) else []:
            if row["prompts"] in (1, 8, 64):
                rows.append(_row("decoder", f"{name} onnxruntime, {row['prompts']} prompts", row["latency_ms"], "ms",
                                 note=f"{row['speedup_vs_torch']}x torch"))
    multi = results.get("multi_prompt", {})
    for key, value in multi.get("speedup_vs_single", {}).items():
        rows.append(_row("multi-prompt", f"objects/s multi vs single, {key.replace('_', ' ')}", value, "x",
                         note="benchmarks/bench_multi_prompt.py; target >= 3 at 8 objects"))
    if "step_fit_per_slice" in multi:
        fit = multi["step_fit_per_slice"]
        rows.append(_row("multi-prompt", "training step fit, per slice", fit["per_prompt_ms"], "ms/object",
                         note=f"+ {fit['fixed_ms']} ms fixed: multi-prompt can gain at most "
                              f"{fit['objects_per_s_gain_limit']}x objects/s"))
    memory = results.get("memory", {})
    if memory:
        measured = memory["cache"]["measured"]
        rows.append(_row("memory", f"cache on disk per slice ({measured['model']})", measured["disk_bytes_per_slice"],
                         "bytes", measured["payload_bytes_per_slice"], note="bound: the fp16 payload",
                         lower_is_better=True))
        for name, nominal in memory["cache"]["nominal"].items():
            rows.append(_row("memory", f"naive float32 input per slice ({name})", nominal["naive_float32_input"],
                             "bytes", note=f"{nominal['naive_input_over_cache']}x the fp16 cache "
                                           f"({nominal['cache_fp16_embedding']} B)"))
        rss = memory["training_rss"]
        rows.append(_row("memory", f"peak RSS, samadapt train ({rss['train_steps']} steps, tiny)",
                         round(rss["train_peak_rss_bytes"] / 2**20, 1), "MiB",
                         note=f"bare model load {round(rss['bare_model_rss_bytes'] / 2**20, 1)} MiB"))
    return rows


def markdown_table(rows: list[dict], header: str) -> str:
    """``rows`` as a Markdown table under ``header``."""
    lines = [header, "", "| section | figure | value | unit | bound | of bound | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["section"], r["figure"], "" if r["value"] is None else r["value"], r["unit"],
                 "" if r["bound"] is None else r["bound"],
                 "" if r["fraction_of_bound"] is None else r["fraction_of_bound"], r["note"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
