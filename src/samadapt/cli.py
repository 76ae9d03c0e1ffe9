"""The ``samadapt`` command line: parse options, call the library, print.

Each command is a thin wrapper; all work happens in library functions. Errors the user can fix
(:class:`samadapt.errors.SamadaptError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from samadapt.errors import SamadaptError

app = typer.Typer(
    name="samadapt",
    help="Adapt Segment Anything (SAM) to medical image segmentation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def user_errors_exit_2(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`SamadaptError` into ``samadapt: error: <message>`` on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SamadaptError as err:
            print(f"samadapt: error: {err}", file=sys.stderr)
            raise typer.Exit(code=2) from None

    return wrapper


@app.callback()
def main() -> None:
    """samadapt: prepare medical images, embed them with SAM, adapt SAM, evaluate, segment and serve."""


# Commands are registered below, one block per command, each calling into the library.


@app.command("embed")
@user_errors_exit_2
def embed_command(
    prepared: Path = typer.Argument(..., help="Prepared dataset folder (written by `samadapt prepare`)."),
    model: str = typer.Option("tiny", help="Registered model name or path of a SAM-format checkpoint."),
    batch_size: int = typer.Option(8, help="Slices per encoder call."),
    features: bool = typer.Option(
        False, "--features/--no-features", help="Also store multi-level encoder features (for ProMISe)."
    ),
    device: str = typer.Option("cpu", help="Torch device for the encoder: cpu, cuda, cuda:1, ..."),
    out: Path | None = typer.Option(None, help="Cache folder (default: PREPARED/embeddings/<signature[:16]>)."),
) -> None:
    """Run the frozen image encoder once per slice; cache fp16 embeddings (resumes)."""
    from tqdm import tqdm

    from samadapt.data.prepared import PreparedDataset
    from samadapt.models.embedding_cache import compute_embeddings, resolve_device
    from samadapt.models.sam import load_sam

    dataset = PreparedDataset(prepared)
    loaded = load_sam(model, device="cpu")
    with tqdm(unit="slice", desc="embed", dynamic_ncols=True) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        cache = compute_embeddings(
            dataset, loaded, out=out, batch_size=batch_size, with_features=features,
            device=resolve_device(device), progress=progress,
        )
    typer.echo(f"wrote embeddings of {len(cache.case_ids)} cases to {cache.root}")


@app.command("prepare")
@user_errors_exit_2
def prepare_command(
    source: Path = typer.Argument(..., help="Raw dataset: nnU-Net/MSD folder or images/ + masks/ folder."),
    out: Path = typer.Argument(..., help="Output folder of the prepared dataset (resumes if it exists)."),
    image_size: int | None = typer.Option(None, help="Model-frame side S (default 256)."),
    axis: str | None = typer.Option(None, help="Volume slicing axis: axial, coronal, sagittal (default axial)."),
    window: str | None = typer.Option(
        None, help="CT preset (abdomen, liver, lung, bone, soft_tissue, brain), 'W,L', percentiles or auto (default)."
    ),
    min_area: int | None = typer.Option(None, help="Drop objects under this many model-frame pixels (default 16)."),
    keep_empty: float | None = typer.Option(None, help="Fraction of object-free slices kept (default 0.1)."),
    seed: int | None = typer.Option(None, help="Seed of the case split and empty-slice choice (default 0)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of prepare settings (options override it)."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a setting: key=value (repeatable)."),
) -> None:
    """Window, slice and resize a raw dataset into SAM's frame, with per-slice objects (resumes)."""
    from tqdm import tqdm

    from samadapt.config import PrepareConfig, load_config, parse_overrides
    from samadapt.data.prepare import prepare_dataset

    options = {"image_size": image_size, "axis": axis, "window": window, "min_area": min_area,
               "keep_empty_ratio": keep_empty, "seed": seed}
    overrides = {k: v for k, v in options.items() if v is not None}
    overrides.update(parse_overrides(set_))
    settings = load_config(PrepareConfig, config, overrides)
    bars: list = []  # created on the first finished case, so early errors print alone

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="case", desc="prepare", dynamic_ncols=True))
        bars[0].update(done - bars[0].n)

    try:
        dataset = prepare_dataset(source, out, settings, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    n_slices = sum(c["n_slices"] for c in dataset.manifest["cases"])
    n_objects = sum(c["n_objects"] for c in dataset.manifest["cases"])
    typer.echo(f"wrote {len(dataset.case_ids())} cases, {n_slices} slices, {n_objects} objects to {out} "
               f"(hash {dataset.hash[:12]})")


@app.command("models")
@user_errors_exit_2
def models_command() -> None:
    """List the registered SAM architectures and where their checkpoints are expected."""
    from samadapt.models.registry import DEFAULT_MODEL, REGISTRY
    from samadapt.models.sam import cache_dir, packaged_checkpoint

    for name, spec in sorted(REGISTRY.items()):
        if spec.packaged:
            where = f"packaged: {packaged_checkpoint(spec)}"
        elif spec.filename:
            where = f"{cache_dir() / spec.filename}" + (f"  <- {spec.url}" if spec.url else f"  ({spec.notes})")
        else:
            where = "architecture only (random weights, for tests)"
        default = " (default)" if name == DEFAULT_MODEL else ""
        typer.echo(f"{name}{default}: ViT {spec.encoder_embed_dim}x{spec.encoder_depth}, {spec.image_size} px; {where}")


@app.command("pretrain")
@user_errors_exit_2
def pretrain_command(
    run_dir: Path = typer.Argument(..., help="Run folder (created; an existing one is resumed)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of pretraining settings."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a setting: key=value (repeatable)."),
) -> None:
    """Pretrain the small foundation model (samadapt-tiny) from scratch on the synthetic shape corpus.

    About an hour on a 2-core CPU with the defaults; resumes from its last checkpoint when restarted.
    """
    from tqdm import tqdm

    from samadapt.config import PretrainConfig, load_config, parse_overrides
    from samadapt.pretraining.pretrain import pretrain

    settings = load_config(PretrainConfig, config, parse_overrides(set_))
    bars: list[tqdm] = []  # opened at the first step, so early errors print alone

    def on_step(record: dict) -> None:
        if not bars:
            bars.append(tqdm(total=settings.steps, unit="step", desc="pretrain", dynamic_ncols=True))
        bars[0].n = record["step"]
        shown = {k: round(v, 3) for k, v in record.items() if k in ("loss", "iou_first_box", "eval_box_iou")}
        bars[0].set_postfix(shown, refresh=True)

    try:
        path = pretrain(run_dir, settings, on_step=on_step)
    finally:
        for bar in bars:
            bar.close()
    typer.echo(f"model written to {path} (sidecar {path.with_suffix('.json')})")


@app.command("train")
@user_errors_exit_2
def train_command(
    prepared: Path = typer.Argument(..., help="Prepared dataset folder (written by `samadapt prepare`)."),
    out: Path = typer.Option(..., "--out", help="Run folder: config, checkpoints, metrics, model.pth."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of training settings."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a setting: key=value (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
) -> None:
    """Fine-tune SAM's mask decoder with multi-prompt boxes (or the single-prompt baseline).

    Settings: see `FinetuneConfig` (docs/training.md); e.g. --set prompting=single --set steps=500.
    Data-parallel: `torchrun --nproc_per_node N -m samadapt train ...` (batch_size is split over the ranks).
    """
    from tqdm import tqdm

    from samadapt.config import FinetuneConfig, load_config, parse_overrides
    from samadapt.training.distributed import setup
    from samadapt.training.finetune import finetune, prepare_run_folder

    overrides = parse_overrides(set_)
    settings = load_config(FinetuneConfig, config, {**overrides, "data": str(prepared)})
    if resume:
        saved = prepare_run_folder(out, settings, resume=True)
        if config is not None or overrides or Path(saved.data).resolve() != prepared.resolve():
            from samadapt.errors import ConfigError

            raise ConfigError(f"{out}: --resume continues with the run's saved config.yaml; drop --config/--set "
                              f"and pass the same PREPARED folder ({saved.data})")
        settings = saved
    bars: dict[str, tqdm] = {}

    def embed_progress(done: int, total: int) -> None:
        bar = bars.setdefault("embed", tqdm(total=total, unit="slice", desc="embed", dynamic_ncols=True))
        bar.update(done - bar.n)

    def on_step(record: dict) -> None:
        bar = bars.setdefault("train", tqdm(total=settings.steps, unit="step", desc="train", dynamic_ncols=True))
        bar.n = record["step"]
        shown = {"loss": f"{record['loss']:.3f}", "obj/s": f"{record.get('prompts', 0) / record['step_s']:.0f}"}
        if "val_score" in record:
            shown["val_dice"] = f"{record['val_score']:.3f}"
        bar.set_postfix(shown, refresh=True)

    ranks, _ = setup(settings.device)
    try:
        if not resume and ranks.is_main:
            prepare_run_folder(out, settings, resume=False)
        ranks.barrier()
        result = finetune(out, settings, on_step=on_step, embed_progress=embed_progress)
    finally:
        for bar in bars.values():
            bar.close()
    if not ranks.is_main:
        return
    if result.best_val_dice is not None:
        typer.echo(f"best validation Dice {result.best_val_dice:.3f} at step {result.best_step}: {result.best}")
    typer.echo(f"model written to {result.model} (sidecar {result.model.with_suffix('.json')})")


@app.command("demo")
@user_errors_exit_2
def demo_command(
    out: Path = typer.Option(Path("samadapt-demo"), "--out", help="Folder for data, caches and the report."),
    fast: bool = typer.Option(False, "--fast", help="Fewer cases and shorter schedules (a quick look)."),
    device: str = typer.Option("cpu", "--device", help="Torch device: cpu, cuda, cuda:1 ..."),
    model: str = typer.Option("tiny", "--model", help="Foundation model: registry name or checkpoint path."),
) -> None:
    """Run the whole pipeline on CT phantoms (phantoms, prepare, embed, evaluate, adapt) into a report."""
    from tqdm import tqdm

    from samadapt.demo import run_demo

    def bars(desc: str, total: int | None):
        return tqdm(desc=desc, total=total, dynamic_ncols=True)

    summary = run_demo(out, fast=fast, device=device, model=model, bars=bars)
    typer.echo(f"report: {summary}")


@app.command("eval")
@user_errors_exit_2
def eval_command(
    prepared: Path = typer.Argument(..., help="Prepared dataset folder (written by `samadapt prepare`)."),
    model: list[str] | None = typer.Option(
        None, "--model", help="Registry name or SAM-format checkpoint path (repeatable; default: tiny)."
    ),
    split: str = typer.Option("test", "--split", help="Split to evaluate: train, val or test."),
    jitter: str = typer.Option("0,5,10,20", "--jitter", help="Box jitter levels in model-frame pixels (comma list)."),
    out: Path = typer.Option(Path("samadapt-eval"), "--out", help="Report folder (an earlier report is replaced)."),
    device: str = typer.Option("cpu", "--device", help="Torch device: cpu, cuda, cuda:1 ..."),
    seed: int = typer.Option(0, "--seed", help="Seed of the box jitter noise."),
) -> None:
    """Box-prompt evaluation of models side by side: 2D and 3D scores, jitter sensitivity, overlays."""
    from tqdm import tqdm

    from samadapt.evaluation.model_comparison import evaluate_models, parse_jitters

    levels = parse_jitters(jitter)

    def bars(desc: str, total: int | None):
        return tqdm(desc=desc, total=total, unit="slice", dynamic_ncols=True)

    summary = evaluate_models(prepared, model or ["tiny"], out, split=split, jitters=levels, device=device,
                              seed=seed, bars=bars)
    typer.echo(str(summary))


@app.command("phantoms")
@user_errors_exit_2
def phantoms_command(
    out: Path = typer.Argument(..., help="Output folder (nnU-Net v2 layout: imagesTr/, labelsTr/, dataset.json)."),
    cases: int = typer.Option(12, "--cases", help="Number of cases; an existing phantom folder is extended/resumed."),
    seed: int = typer.Option(0, "--seed", help="Random seed; case i is drawn from numpy default_rng((seed, i))."),
    size: str = typer.Option("40,160,160", "--size", help="Grid Z,Y,X in voxels."),
    spacing: str = typer.Option("2.5,2.5,5", "--spacing", help="Voxel size x,y,z in mm."),
) -> None:
    """Write synthetic abdominal CT phantoms (9 organs, lesions) as an nnU-Net v2 dataset."""
    from tqdm import tqdm

    from samadapt.data.phantoms import write_phantom_dataset
    from samadapt.errors import ConfigError

    def triple(text: str, option: str, kind: type) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != 3:
            raise ConfigError(f"{option} {text!r}: give three comma-separated numbers, e.g. "
                              f"{'40,160,160' if kind is int else '2.5,2.5,5'}")
        return values

    grid, step = triple(size, "--size", int), triple(spacing, "--spacing", float)
    bars: list = []  # opened at the first finished case, so that bad input gives a single error line

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="case", desc="phantoms", dynamic_ncols=True))
        bars[0].update(done - bars[0].n)

    try:
        path = write_phantom_dataset(out, n_cases=cases, seed=seed, size=grid, spacing=step, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    typer.echo(f"wrote {cases} phantom cases to {path}")
