"""ProMISe on CT phantoms, SAM frozen: APM + IPS (automatic) vs frozen SAM with naive prompts vs a fine-tuned
decoder given ground-truth boxes; IPS with ground-truth prompts vs frozen SAM with the same prompts.

CT phantoms (organs and lesions) are prepared for the foundation model. Runs on the same training cases:
``samadapt adapt`` in mode ``apm+ips`` (fully automatic) and in mode ``ips`` (IPS alone, ground-truth
prompts: mixed boxes and point sets, or boxes alone), each trained for SAM's single-mask output and for its
multimask output's first mask (the paper's), and ``samadapt train`` (multi-prompt decoder fine-tuning, the
prompted reference).
``samadapt eval --prompts auto`` then scores, on the test cases, every (slice, class) pair automatically
(with false positives on slices without the class) and every object with box and 8 + 8 point prompts
(docs/promise.md, ``samadapt.promise.auto_protocol``). Writes the report under ``<work>/report`` and the
table to ``benchmarks/results/promise_phantoms.json``. SAM's weights are checked unchanged (sha256).

    python benchmarks/promise_phantoms.py                 # ~20 CPU-minutes (six ProMISe runs + a reference)
    python benchmarks/promise_phantoms.py --cases 8 --steps 100 --work /tmp/pp   # a quick look
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import machine  # noqa: E402
from phantom_workbench import embedded_phantoms, phantom_arguments  # noqa: E402
from promise_runs import adapted, issue_table, print_table  # noqa: E402
from samadapt.config import FinetuneConfig, PromiseConfig, config_to_dict  # noqa: E402
from samadapt.io.atomic import write_json_atomic  # noqa: E402
from samadapt.models.sam import load_sam, sam_digest  # noqa: E402
from samadapt.promise.auto_protocol import evaluate_automatic  # noqa: E402
from samadapt.training.engine import EngineSettings  # noqa: E402
from samadapt.training.finetune import finetune, prepare_run_folder  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "promise_phantoms.json"


def main() -> None:
    parser = phantom_arguments(__doc__.splitlines()[0], cases=12, out=RESULTS)
    parser.add_argument("--steps", type=int, default=300, help="steps of each ProMISe run (batch 8 slices)")
    parser.add_argument("--ft-steps", type=int, default=200, help="steps of the fine-tuned reference (batch 4)")
    args = parser.parse_args()
    started = time.time()
    work, loaded, prepared, _ = embedded_phantoms(args.work, args.model, args.cases)
    digest_before = sam_digest(loaded.sam)
    runs, adapters = {}, []
    # IPS is trained with ground-truth prompts: a mix of boxes and 8+8 points (the default), and boxes alone;
    # each decoding SAM's single-mask output (samadapt's default) and its first multimask output (the paper's)
    single, multi = {"multimask_output": False}, {"multimask_output": True}
    variants = (("apm_ips", "apm+ips", single), ("ips", "ips", single),
                ("ips_box", "ips", {"ips_prompts": "box", **single}),
                ("apm_ips_multimask", "apm+ips", multi), ("ips_multimask", "ips", multi),
                ("ips_box_multimask", "ips", {"ips_prompts": "box", **multi}))
    for name, mode, extra in variants:
        engine = replace(PromiseConfig().engine, steps=args.steps, eval_every=max(1, args.steps // 3))
        config = PromiseConfig(data=str(prepared.root), model=args.model, mode=mode, engine=engine, **extra)
        result, runs[name] = adapted(work / "runs" / name, config)
        runs[name]["config"] = config_to_dict(config)
        adapters.append(str(result.adapter.parent))
    ft = FinetuneConfig(data=str(prepared.root), model=args.model, engine=EngineSettings(steps=args.ft_steps))
    ft_dir = work / "runs" / "multi-prompt-ft"
    ft = prepare_run_folder(ft_dir, ft, resume=(ft_dir / "config.yaml").is_file())
    tuned = finetune(ft_dir, ft)
    runs["multi-prompt FT (reference)"] = {"steps": tuned.steps, "wall_s": round(tuned.wall_s, 1)}
    summary = evaluate_automatic(prepared, adapters, work / "report", references=[str(tuned.model)],
                                 nsd_tolerance_mm=None)
    evaluation = json.loads((work / "report" / "evaluation.json").read_text())
    table = issue_table(evaluation)
    # adapt() itself fails if SAM's weights move; here: the checkpoint on disk and what every adapter recorded
    recorded = {json.loads((Path(a) / "adapter.json").read_text())["base_digest"] for a in adapters}
    unchanged = recorded == {digest_before} and sam_digest(load_sam(args.model).sam) == digest_before
    write_json_atomic(args.out, {
        "what": "ProMISe on CT phantoms, SAM frozen: automatic Dice per class (mean over classes; present = "
                "slices holding the class, all slices = absent counts 1 if left empty, 3D = per case over all "
                "slices), false-positive rate on slices without the class, and the promptable check (Dice per "
                "object with tight boxes / 8+8 ground-truth points; IPS of each adapter vs frozen SAM)",
        "model": args.model, "cases": args.cases, "steps": args.steps, "classes": evaluation["classes"],
        "test_cases": len(prepared.case_ids("test")), "runs": runs, "table": table,
        "sam_weights_unchanged": bool(unchanged), "report": str(summary), "machine": machine(),
        "total_s": round(time.time() - started, 1),
        "command": f"python benchmarks/promise_phantoms.py --model {args.model} --cases {args.cases} "
                   f"--steps {args.steps} --ft-steps {args.ft_steps}",
    })
    print_table(table)
    print(f"report: {summary}\nwrote {args.out}")


if __name__ == "__main__":
    main()
