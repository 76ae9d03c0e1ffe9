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


_HELD_LOCKS: list = []  # folder locks a command holds until it returns (see _start_run)


def user_errors_exit_2(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`SamadaptError` into ``samadapt: error: <message>`` on stderr and exit code 2.

    So are storage failures (``OSError`` of a full disk, read-only file system, denied permission, a file
    where a folder is needed, a name too long; see :func:`samadapt.errors.storage_error`): the line names the
    file the error names, else the command's output (``out``, ``run_dir``, ``prepared``). Folder locks the
    command took are released when it ends, and under ``torchrun`` the rank leaves its process group
    (:func:`samadapt.runtime.leave`).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        failed = True
        try:
            result = func(*args, **kwargs)
            failed = False
            return result
        except SamadaptError as err:
            print(f"samadapt: error: {err}", file=sys.stderr)
            raise typer.Exit(code=2) from None
        except (OSError, RuntimeError) as err:
            from samadapt.errors import storage_error

            hint = next((kwargs[k] for k in ("out", "run_dir", "prepared") if kwargs.get(k) is not None), None)
            translated = storage_error(err, hint)
            if translated is None:
                raise
            print(f"samadapt: error: {translated}", file=sys.stderr)
            raise typer.Exit(code=2) from None
        finally:
            while _HELD_LOCKS:
                _HELD_LOCKS.pop().release()
            runtime = sys.modules.get("samadapt.runtime")  # (a command that never loaded it joined no job)
            if runtime is not None:
                runtime.leave(failed)  # the process group goes before the interpreter does

    return wrapper


@app.callback()
def main() -> None:
    """samadapt: prepare medical images, embed them with SAM, adapt SAM, evaluate, segment and serve."""


# Commands are registered below, one block per command, each calling into the library.

SET_HELP = "Override a setting: key=value, group.key=value for a group's field (repeatable)."
CONFIG_HELP = "YAML file of settings (groups as nested mappings); options and --set override it."


def _command_settings(cls: type, config: Path | None, options: dict, set_: list[str] | None) -> Any:
    """A command's settings (:mod:`samadapt.settings`): defaults < ``--config`` < the options given on the
    command line (those not None) < ``--set``. A bad setting of the file is reported with the file's name."""
    from samadapt.settings import command_settings, parse_overrides

    return command_settings(cls, config, options, parse_overrides(set_))


@app.command("embed")
@user_errors_exit_2
def embed_command(
    prepared: Path = typer.Argument(..., help="Prepared dataset folder (written by `samadapt prepare`)."),
    model: str | None = typer.Option(
        None, help="Registered model name (medsam_lite, tiny, vit_b, ...) or a SAM-format checkpoint path "
        "(default medsam_lite)."),
    batch_size: int | None = typer.Option(None, help="Slices per encoder call (default 8)."),
    features: bool | None = typer.Option(
        None, "--features/--no-features", help="Also store multi-level encoder features (for ProMISe; default no)."
    ),
    device: str | None = typer.Option(None, help="Torch device for the encoder: cpu (default), cuda, cuda:1, ..."),
    out: Path | None = typer.Option(None, help="Cache folder (default: PREPARED/embeddings/<signature[:16]>)."),
    encoder_runtime: str | None = typer.Option(
        None, "--encoder-runtime", help="Image encoder on the CPU: auto (default; onnxruntime for LiteMedSAM's "
        "TinyViT), torch or onnx."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Run the frozen image encoder once per slice; cache fp16 embeddings (resumes).

    Several processes or GPUs: `torchrun --nproc_per_node N -m samadapt embed ...` splits the cases over the
    ranks and merges one cache, the same bytes as one process (the bar shows rank 0's share).
    """
    from tqdm import tqdm

    from samadapt.config import EmbedConfig
    from samadapt.data.prepared import PreparedDataset
    from samadapt.models.embedding_cache import compute_embeddings
    from samadapt.models.onnx_encoder import use_encoder_runtime
    from samadapt.models.sam import load_sam
    from samadapt.runtime import resolve_device, setup

    settings = _command_settings(EmbedConfig, config, {
        "model": model, "batch_size": batch_size, "features": features, "device": device,
        "out": str(out) if out is not None else None, "encoder_runtime": encoder_runtime}, set_)
    dataset = PreparedDataset(prepared)
    loaded = load_sam(settings.model, device="cpu")
    ranks, device = setup(settings.device)
    use_encoder_runtime(loaded, settings.encoder_runtime, resolve_device(device))
    bars: list[tqdm] = []  # opened at the first report of work: a finished cache shows no bar

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="slice", desc="embed", dynamic_ncols=True))
        bars[0].update(done - bars[0].n)

    try:
        cache = compute_embeddings(
            dataset, loaded, out=settings.out, batch_size=settings.batch_size, with_features=settings.features,
            device=resolve_device(device), progress=progress if ranks.is_main else None, ranks=ranks,
        )
    finally:
        for bar in bars:
            bar.close()
    if ranks.is_main:
        done = "wrote" if bars or ranks.world > 1 else "already computed:"  # (rank 0 sees its own share only)
        typer.echo(f"{done} embeddings of {len(cache.case_ids)} cases in {cache.root}")


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
    split: str | None = typer.Option(None, help="train,val,test fractions (default 0.7,0.15,0.15)."),
    split_group: str | None = typer.Option(
        None, help="Regex naming a case's subject (first group), e.g. '^(patient\\d+)': one split per subject."),
    split_file: Path | None = typer.Option(
        None, help='JSON {"train": [...], "val": [...], "test": [...]} of case ids, or nnU-Net splits_final.json.'),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Window, slice and resize a raw dataset into SAM's frame, with per-slice objects (resumes).

    Split by patient when a patient has several cases (frames, scans, slices): --split-group, --split-file.

    Rerunning prepare with other split settings rewrites the split only (the prepared cases are kept).
    """
    from tqdm import tqdm

    from samadapt.config import PrepareConfig
    from samadapt.data.prepare import prepare_dataset

    options = {"image_size": image_size, "axis": axis, "window": window, "min_area": min_area,
               "keep_empty_ratio": keep_empty, "seed": seed, "split": split.split(",") if split else None,
               "split_group": split_group, "split_file": str(split_file) if split_file else None}
    settings = _command_settings(PrepareConfig, config, options, set_)
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
    counts = {split: len(dataset.case_ids(split)) for split in ("train", "val", "test")}
    typer.echo(f"wrote {len(dataset.case_ids())} cases ({counts['train']} train, {counts['val']} val, "
               f"{counts['test']} test), {n_slices} slices, {n_objects} objects to {out} (hash {dataset.hash[:12]})")
    for warning in dataset.manifest.get("warnings", []):
        typer.echo(f"samadapt: warning: {warning}", err=True)


@app.command("models")
@user_errors_exit_2
def models_command() -> None:
    """List the registered SAM architectures and where their checkpoints are expected."""
    from samadapt.models.registry import DEFAULT_MODEL, REGISTRY, TEST_MODELS
    from samadapt.models.sam import cache_dir, packaged_checkpoint

    for name, spec in sorted(REGISTRY.items()):
        if name in TEST_MODELS:
            continue
        if spec.packaged:
            where = f"packaged: {packaged_checkpoint(spec)}"
        elif spec.package:
            where = f"ships in the {spec.package} package ({spec.notes})"
        elif spec.filename:
            where = f"{cache_dir() / spec.filename}" + (f"  <- {spec.url}" if spec.url else f"  ({spec.notes})")
        else:
            where = "architecture only (random weights, for tests)"
        default = " (default)" if name == DEFAULT_MODEL else ""
        typer.echo(f"{name}{default}: {spec.describe()}; {where}")


@app.command("pretrain")
@user_errors_exit_2
def pretrain_command(
    run_dir: Path = typer.Argument(..., help="Run folder: config, corpus, checkpoints, metrics, model.pth."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in RUN_DIR from its last checkpoint."),
) -> None:
    """Pretrain the small foundation model (samadapt-tiny) from scratch on the synthetic shape corpus.

    The defaults are the first of the shipped model's three stages (about 2 hours on one CPU core); each
    later one continues the previous with --set init_from=RUN/model.pth (docs/model_card_tiny.md has the
    commands). Runs on the training engine, like `train`: --resume continues a stopped run;
    data-parallel: `torchrun --nproc_per_node N -m samadapt pretrain ...` (batch_size is split over the ranks).
    """
    from tqdm import tqdm

    from samadapt.config import PretrainConfig
    from samadapt.pretraining.pretrain import prepare_pretrain_folder, pretrain
    from samadapt.runtime import current

    settings = _run_settings(PretrainConfig, None, run_dir, config, set_, resume)
    bars: list[tqdm] = []  # opened at the first step, so early errors print alone

    def on_step(record: dict) -> None:
        if not bars:
            bars.append(tqdm(total=settings.engine.steps, unit="step", desc="pretrain", dynamic_ncols=True,
                             disable=not current().is_main))
        bars[0].n = record["step"]
        shown = {k: round(v, 3) for k, v in record.items() if k in ("loss", "iou_first_box", "val_box_iou")}
        bars[0].set_postfix(shown, refresh=True)

    try:
        ranks = _start_run(run_dir, settings, resume, prepare=prepare_pretrain_folder)
        path = pretrain(run_dir, settings, on_step=on_step)
    finally:
        for bar in bars:
            bar.close()
    if ranks.is_main:
        typer.echo(f"model written to {path} (sidecar {path.with_suffix('.json')})")


def _run_settings(cls: type, prepared: Path | None, out: Path, config: Path | None, set_: list[str] | None,
                  resume: bool) -> Any:
    """The settings of a run command (``train``, ``adapt``; ``pretrain`` without ``prepared`` data):
    defaults < ``--config`` < ``--set``; with ``--resume``, the run folder's saved config.yaml, which options
    may not change. A bad setting of the ``--config`` file is reported with the file's name."""
    from samadapt.config import load_config, parse_overrides
    from samadapt.errors import ConfigError
    from samadapt.training.engine import STATE_FILE
    from samadapt.training.finetune import CONFIG_FILE

    overrides = parse_overrides(set_)
    data = {} if prepared is None else {"data": str(prepared)}
    settings = load_config(cls, config, {**overrides, **data})  # a bad file setting names it
    if not resume:
        return settings
    saved_path = out / CONFIG_FILE
    if not saved_path.is_file():
        raise ConfigError(f"{out}: nothing to resume (no {CONFIG_FILE}); start the run without --resume")
    saved = load_config(cls, saved_path)
    if config is not None or overrides or (prepared is not None and Path(saved.data).resolve() != prepared.resolve()):
        afresh = "" if (out / STATE_FILE).is_file() else (
            "; it saved no step yet, so a run without --resume starts it afresh with new settings")
        same = "" if prepared is None else f" and pass the same PREPARED folder ({saved.data})"
        raise ConfigError(f"{out}: --resume continues with the run's saved config.yaml; drop --config/--set"
                          f"{same}{afresh}")
    return saved


def _start_run(out: Path, settings: Any, resume: bool, prepare: Callable[..., Any] | None = None) -> Any:
    """Join the ``torchrun`` job (if any); on rank 0, lock the run folder for this command (a second
    command on it is refused, naming the holder), check the run's inputs and, for a new run, set up the
    folder (``prepare(out, settings, resume)``, by default
    :func:`samadapt.training.finetune.prepare_run_folder`; nothing is written unless the inputs check out,
    and a folder this call created goes again). Returns the ranks."""
    import contextlib

    from samadapt.io.folder_lock import lock_folder
    from samadapt.runtime import setup
    from samadapt.training.finetune import prepare_run_folder

    prepare = prepare or prepare_run_folder

    ranks, _ = setup(settings.device)
    error = None
    if ranks.is_main:
        created, lock = not out.exists(), None
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock = lock_folder(out)
            _HELD_LOCKS.append(lock)  # released when the command ends (user_errors_exit_2)
            prepare(out, settings, resume=resume)
        except Exception as err:
            error = err
            if created:
                if lock is not None:
                    _HELD_LOCKS.remove(lock)
                    lock.release()
                with contextlib.suppress(OSError):
                    out.rmdir()
    ranks.raise_together(error)
    return ranks


class _RunBars:
    """Progress bars of a run command: ``embed`` (the cache, when missing) and the run's steps, with the
    loss, validation Dice and, where the records carry prompt counts, objects per second. Each bar opens at
    its first update, and only on rank 0 of a ``torchrun`` job (the other ranks' bars would interleave)."""

    def __init__(self, desc: str, total_steps: int) -> None:
        self.desc, self.total_steps, self.bars = desc, total_steps, {}

    def _bar(self, name: str, total: int, unit: str):
        from tqdm import tqdm

        from samadapt.runtime import current

        if name not in self.bars:
            self.bars[name] = tqdm(total=total, unit=unit, desc=name, dynamic_ncols=True,
                                   disable=not current().is_main)
        return self.bars[name]

    def embed_progress(self, done: int, total: int) -> None:
        bar = self._bar("embed", total, "slice")
        bar.update(done - bar.n)
        if done >= total:  # finished: the run's bar takes its place
            bar.close()

    def on_step(self, record: dict) -> None:
        bar = self._bar(self.desc, self.total_steps, "step")
        bar.n = record["step"]
        shown = {"loss": f"{record['loss']:.3f}"}
        if "prompts" in record:
            shown["obj/s"] = f"{record['prompts'] / record['step_s']:.0f}"
        if "val_score" in record:
            shown["val_dice"] = f"{record['val_score']:.3f}"
        bar.set_postfix(shown, refresh=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


@app.command("train")
@user_errors_exit_2
def train_command(
    prepared: Path = typer.Argument(..., help="Prepared dataset folder (written by `samadapt prepare`)."),
    out: Path = typer.Option(..., "--out", help="Run folder: config, checkpoints, metrics, model.pth."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
) -> None:
    """Fine-tune SAM's mask decoder with multi-prompt boxes (or the single-prompt baseline).

    Settings: see `FinetuneConfig` (docs/training.md); e.g. --set prompting=single --set engine.steps=500;
    --set objective=phpg for PHPG's simulated users and correction rounds (docs/phpg.md).
    Data-parallel: `torchrun --nproc_per_node N -m samadapt train ...` (batch_size is split over the ranks).
    """

    from samadapt.config import FinetuneConfig
    from samadapt.training.finetune import finetune

    settings = _run_settings(FinetuneConfig, prepared, out, config, set_, resume)
    bars = _RunBars("train", settings.engine.steps)
    try:
        ranks = _start_run(out, settings, resume)
        result = finetune(out, settings, on_step=bars.on_step, embed_progress=bars.embed_progress)
    finally:
        bars.close()
    if not ranks.is_main:
        return
    chosen = result.selection
    score = f", validation Dice {chosen['val_dice']:.3f}" if chosen.get("val_dice") is not None else ""
    last = (f"; the last step {chosen['last_step']} is last.pth" + (
        f" (validation Dice {chosen['last_val_dice']:.3f})" if chosen.get("last_val_dice") is not None else "")
        if chosen.get("step") != chosen.get("last_step") else "")
    stopped = (f"; stopped early at step {result.steps} (patience {settings.engine.patience})"
               if chosen.get("stopped_early") else "")
    typer.echo(f"model written to {result.model}: step {chosen.get('step')} ({chosen.get('rule')}{score})"
               f"{last}{stopped}")


@app.command("adapt")
@user_errors_exit_2
def adapt_command(
    prepared: Path = typer.Argument(..., help="Prepared dataset folder (written by `samadapt prepare`)."),
    out: Path = typer.Option(..., "--out", help="Run folder: config, checkpoints, metrics, adapter.pt."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
) -> None:
    """ProMISe with SAM frozen: train the auto-prompting module (APM) and/or pattern shifting (IPS).

    Settings: see `PromiseConfig` (docs/promise.md); e.g. --set mode=ips --set engine.steps=500. Embeds the data
    (with encoder features for the APM) first when the cache is missing. Writes adapter.pt + adapter.json;
    SAM's weights are never changed or saved. Data-parallel: `torchrun --nproc_per_node N -m samadapt adapt ...`.
    """

    from samadapt.config import PromiseConfig
    from samadapt.promise.adapt import adapt, prepare_adapt_folder

    settings = _run_settings(PromiseConfig, prepared, out, config, set_, resume)
    bars = _RunBars("adapt", settings.engine.steps)
    try:
        ranks = _start_run(out, settings, resume, prepare=prepare_adapt_folder)
        result = adapt(out, settings, on_step=bars.on_step, embed_progress=bars.embed_progress)
    finally:
        bars.close()
    if not ranks.is_main:
        return
    if result.best_val_score is not None:
        stopped = (f" (stopped early at step {result.steps}, patience {settings.engine.patience})"
                   if result.stopped_early else "")
        typer.echo(f"best validation Dice {result.best_val_score:.3f} at step {result.best_step}: "
                   f"{result.best}{stopped}")
    typer.echo(f"adapter written to {result.adapter} ({result.trainable_parameters} trainable parameters, "
               f"{result.seconds_per_epoch:.1f} s per epoch; SAM frozen)")


@app.command("demo")
@user_errors_exit_2
def demo_command(
    out: Path = typer.Option(Path("samadapt-demo"), "--out", help="Folder for data, caches and the report."),
    fast: bool = typer.Option(False, "--fast", help="Fewer cases and shorter schedules (a quick look)."),
    device: str = typer.Option("cpu", "--device", help="Torch device: cpu, cuda, cuda:1 ..."),
    model: str = typer.Option("tiny", "--model", help="Foundation model: registry name or checkpoint path."),
) -> None:
    """Run the whole pipeline on CT phantoms (phantoms, prepare, embed, evaluate, adapt) into a report.

    Says first how long it should take here (measured); OUT/report/summary.md appears once the data is
    prepared and gains a row as each method finishes. Rerun the same command to continue a stopped demo.
    """
    from tqdm import tqdm

    from samadapt.demo import run_demo

    def bars(desc: str, total: int | None):  # a phase without a count is a status line with its time
        return tqdm(desc=desc, total=total, dynamic_ncols=True,
                    bar_format=None if total is not None else "{desc}: {elapsed}")

    def status(line: str) -> None:
        tqdm.write(f"samadapt demo: {line}", file=sys.stderr)

    summary = run_demo(out, fast=fast, device=device, model=model, bars=bars, status=status)
    typer.echo(f"report: {summary}")


@app.command("eval")
@user_errors_exit_2
def eval_command(
    prepared: Path = typer.Argument(..., help="Prepared dataset folder (written by `samadapt prepare`)."),
    model: list[str] | None = typer.Option(
        None, "--model", help="Registry name or SAM-format checkpoint path (repeatable; default: medsam_lite)."
    ),
    split: str | None = typer.Option(None, "--split", help="Split to evaluate: train, val or test (default)."),
    jitter: str | None = typer.Option(
        None, "--jitter", help="Box jitter levels in model-frame pixels (comma list; default 0,5,10,20)."),
    out: Path | None = typer.Option(
        None, "--out", help="Report folder (default samadapt-eval; an earlier report is replaced)."),
    device: str | None = typer.Option(None, "--device", help="Torch device: cpu (default), cuda, cuda:1 ..."),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of the box jitter noise, simulated prompts and --max-slices (default 0)."),
    protocol: str | None = typer.Option(
        None, "--protocol", help="Comma list: box (always), interactive (Dice after k clicks, NoC@85/90), "
        "robustness (Dice per simulated prompting behaviour and its spread)."
    ),
    prompts: str | None = typer.Option(
        None, "--prompts", help="box (default): prompted models side by side; auto: ProMISe adapters (--adapter) "
        "without prompts, against frozen SAM with naive prompts and --model decoders given GT boxes."
    ),
    adapter: list[str] | None = typer.Option(
        None, "--adapter", help="A `samadapt adapt` run folder or adapter file (repeatable; with --prompts auto)."
    ),
    max_slices: str | None = typer.Option(
        None, "--max-slices", metavar="N", help="Evaluate a random sample of N of the split's slices (drawn with "
        "--seed, the same for every model); means come with 95% bootstrap intervals either way."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Processes scoring slices at once in the interactive, robustness and automatic "
        "protocols (CPU; default 1; docs/training.md)."
    ),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Box-prompt evaluation of models side by side: 2D and 3D scores, jitter sensitivity, overlays.

    `--protocol box,interactive,robustness` adds the interactive and human-factor robustness protocols.
    `--prompts auto --adapter RUN` evaluates ProMISe: automatic segmentation per class (with false positives
    on slices without the class), the promptable check and the adapters' cost (docs/promise.md).
    The slow protocols keep each finished slice in OUT/slice_results/: rerun the same command to resume.
    """
    from tqdm import tqdm

    from samadapt.config import EvalConfig
    from samadapt.errors import ConfigError

    def bars(desc: str, total: int | None):  # writing the report: a status line with its time
        return tqdm(desc=desc, total=total, unit="slice", dynamic_ncols=True,
                    bar_format="{desc}: {elapsed}" if desc == "report" else None)

    import json

    from samadapt.evaluation.slice_sample import estimate_lines, parse_max_slices
    from samadapt.evaluation.slice_store import check_workers

    def finish(summary: Path) -> None:  # the means with their intervals, then the report's path
        for line in estimate_lines(json.loads((summary.parent / "evaluation.json").read_text())):
            typer.echo(line)
        typer.echo(str(summary))

    options = {"model": model or None, "split": split, "jitter": jitter, "out": str(out) if out else None,
               "device": device, "seed": seed, "protocol": protocol, "prompts": prompts, "adapter": adapter or None,
               "max_slices": max_slices, "workers": workers}
    settings = _command_settings(EvalConfig, config, options, set_)
    sample_size, workers = parse_max_slices(settings.max_slices), check_workers(settings.workers, settings.device)
    out = Path(settings.out)
    if settings.prompts == "box" and settings.adapter:
        raise ConfigError("--adapter needs --prompts auto (ProMISe adapters segment without prompts)")
    if settings.prompts == "auto":
        from samadapt.promise.auto_protocol import evaluate_automatic

        summary = evaluate_automatic(prepared, settings.adapter or [], out, references=settings.model or [],
                                     split=settings.split, device=settings.device, seed=settings.seed, bars=bars,
                                     max_slices=sample_size, workers=workers)
        finish(summary)
        return

    from samadapt.evaluation.model_comparison import evaluate_models, parse_jitters
    from samadapt.evaluation.prompt_protocols import parse_protocols

    levels = parse_jitters(settings.jitter)
    protocols = parse_protocols(settings.protocol)

    from samadapt.models.registry import DEFAULT_MODEL

    summary = evaluate_models(prepared, settings.model or [DEFAULT_MODEL], out, split=settings.split, jitters=levels,
                              device=settings.device, seed=settings.seed, bars=bars, protocols=protocols,
                              max_slices=sample_size, workers=workers, interactive=settings.interactive)
    finish(summary)


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


@app.command("export-onnx")
@user_errors_exit_2
def export_onnx_command(
    model: str = typer.Argument(..., help="Registry name, SAM-format .pth, or a train/adapt run folder."),
    out: Path = typer.Option(Path("decoder.onnx"), "--out", help="ONNX file to write (plus <out>.json, a sidecar)."),
    adapter: str | None = typer.Option(None, "--adapter", help="ProMISe adapter (file or run folder): add its IPS."),
    multimask: bool | None = typer.Option(
        None, "--multimask/--single-mask", help="SAM's 3 ambiguity outputs or 1 (default: the adapter's mode, else 1)."
    ),
    upscale: bool = typer.Option(False, "--upscale", help="Also output logits upscaled to the model-input frame."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check parity with onnxruntime (1, 4, 16 prompts)."),
) -> None:
    """Export SAM's prompt encoder + mask decoder (+ IPS) to ONNX, with a dynamic number of prompts.

    Inputs: the image embedding (from `samadapt embed` or the encoder), point_coords NxPx2 and point_labels
    NxP (boxes as two corners labelled 2 and 3); outputs low-res logits and IoU predictions. See
    docs/scaling.md.
    """
    from samadapt.export.onnx_decoder import export_decoder, export_source

    loaded, found_adapter = export_source(model, adapter)
    info = export_decoder(loaded, out, found_adapter, multimask=multimask, upscale=upscale, opset=opset,
                          verify_counts=(1, 4, 16) if verify else None)
    typer.echo(f"wrote {out} ({info['model']}, {'with' if info['ips'] else 'without'} IPS, "
               f"{'3 masks' if info['multimask'] else '1 mask'} per prompt; sidecar {out}.json)")
    if "parity" in info:
        parity = info["parity"]
        typer.echo(f"onnxruntime vs torch: max |logit difference| {parity['max_abs_diff_low_res_logits']:.2e} "
                   f"(logits up to {parity['logit_scale']:.1f}), IoU {parity['max_abs_diff_iou']:.2e}")


@app.command("segment")
@user_errors_exit_2
def segment_command(
    source: Path = typer.Argument(..., help="A volume (NIfTI, NRRD, MHA, DICOM folder) or a folder of volumes."),
    out: Path = typer.Option(..., "--out", help="Output folder: <case>.nii.gz label volumes and <case>.json sidecars."),
    model: str | None = typer.Option(
        None, "--model", help="Registry name, SAM-format .pth or `samadapt train` run folder (default medsam_lite; "
        "with --adapter its base model)."),
    boxes: Path | None = typer.Option(None, "--boxes", help="JSON prompt file: 3D boxes / clicks (docs/inference.md)."),
    auto: bool = typer.Option(False, "--auto", help="Segment without prompts through a ProMISe adapter (--adapter)."),
    adapter: Path | None = typer.Option(None, "--adapter", help="`samadapt adapt` run folder or its adapter file."),
    window: str | None = typer.Option(
        None, "--window", help="CT preset, 'W,L', percentiles, none or auto (default; as prepare)."),
    modality: str | None = typer.Option(None, "--modality", help="CT or MR: resolves --window auto (default guessed)."),
    device: str = typer.Option("cpu", "--device", help="Torch device: cpu, cuda, cuda:1 ..."),
    config: Path | None = typer.Option(
        None, "--config", help="YAML file of segment settings (window, modality, propagation, auto)."),
    set_: list[str] | None = typer.Option(
        None, "--set", help="propagation.KEY=VALUE or auto.KEY=VALUE (repeatable; docs/inference.md)."),
    encoder_runtime: str = typer.Option(
        "auto", "--encoder-runtime", help="Image encoder on the CPU: auto (onnxruntime for LiteMedSAM's TinyViT), "
        "torch or onnx."),
) -> None:
    """Segment volumes into NIfTI label volumes on the input's grid, from 3D boxes / clicks or automatically.

    A folder of cases shows a progress bar and resumes: finished cases with the same inputs are skipped.
    """
    from tqdm import tqdm

    from samadapt.config import parse_overrides
    from samadapt.errors import ConfigError
    from samadapt.inference.prompt_file import PromptFile
    from samadapt.inference.segment_cases import segment_cases, segment_settings
    from samadapt.inference.segmenter import Segmenter
    from samadapt.models.registry import DEFAULT_MODEL

    if (boxes is None) == (not auto):
        raise ConfigError("give either --boxes PROMPTS.json or --auto (with --adapter RUN)")
    if auto and adapter is None:
        raise ConfigError("--auto needs --adapter RUN: the ProMISe adapter that predicts the prompts")
    settings = segment_settings(window, modality, parse_overrides(set_), config)
    prompts = PromptFile.read(boxes) if boxes is not None else None
    segmenter = Segmenter.from_model(model if model is not None or adapter is not None else DEFAULT_MODEL,
                                     device=device, adapter=adapter, encoder_runtime=encoder_runtime)

    def bars(desc: str, total: int | None):
        return tqdm(desc=desc, total=total, unit="case" if total is not None else "slice",
                    leave=total is not None, dynamic_ncols=True)

    summary = segment_cases(source, out, segmenter, prompts, settings, model_label=model or "",
                            adapter_label=str(adapter) if adapter is not None else None, bars=bars)
    typer.echo(f"wrote {len(summary.written)} label volume(s) to {out}"
               + (f", {len(summary.skipped)} already done" if summary.skipped else "")
               + (f" ({summary.seconds_per_slice:.3f} s per slice)" if summary.written else ""))


@app.command("serve")
@user_errors_exit_2
def serve_command(
    data: Path | None = typer.Option(None, "--data", help="Folder the page may open volumes from (else uploads only)."),
    model: str | None = typer.Option(
        None, "--model",
        help="Registry name, .pth or run folder (default medsam_lite; with --adapter its base model)."),
    adapter: Path | None = typer.Option(None, "--adapter", help="ProMISe adapter: enables the page's automatic mode."),
    host: str | None = typer.Option(
        None, "--host", help="Interface to bind; the default, 127.0.0.1, serves this machine only."),
    port: int | None = typer.Option(None, "--port", help="TCP port (default 8000)."),
    device: str | None = typer.Option(None, "--device", help="Torch device: cpu (default), cuda, cuda:1 ..."),
    max_upload_mb: int | None = typer.Option(
        None, "--max-upload-mb", help="Largest accepted upload, MiB (default 512)."),
    decoder: str | None = typer.Option(
        None, "--decoder", help="Run each click's decoder in torch (default), or in onnxruntime ('onnx': CPU only, "
        "2-3x faster per click; needs pip install 'samadapt\\[export]')."),
    encoder_runtime: str | None = typer.Option(
        None, "--encoder-runtime", help="Image encoder on the CPU: auto (default; onnxruntime for LiteMedSAM's "
        "TinyViT), torch or onnx."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Interactive segmentation in the browser: open or upload a volume, box / click, assign, download NIfTI.

    Needs the web extra: pip install 'samadapt\\[serve]' (FastAPI and uvicorn).
    """
    from samadapt.config import ServeConfig
    from samadapt.inference.segmenter import Segmenter
    from samadapt.models.registry import DEFAULT_MODEL
    from samadapt.serve.app import create_app, default_allowed_hosts, run_server
    from samadapt.serve.sessions import ServeSettings

    options = {"data": data, "model": model, "adapter": adapter, "host": host, "port": port, "device": device,
               "max_upload_mb": max_upload_mb, "decoder": decoder, "encoder_runtime": encoder_runtime}
    chosen = _command_settings(ServeConfig, config, {k: str(v) if isinstance(v, Path) else v
                                                     for k, v in options.items()}, set_)
    adapter = Path(chosen.adapter) if chosen.adapter is not None else None
    model = chosen.model if chosen.model is not None or adapter is not None else DEFAULT_MODEL
    segmenter = Segmenter.from_model(model, device=chosen.device, adapter=adapter,
                                     encoder_runtime=chosen.encoder_runtime)
    settings = ServeSettings(data_dir=Path(chosen.data) if chosen.data is not None else None,
                             max_upload_bytes=chosen.max_upload_mb * 1024 * 1024, device=chosen.device,
                             decoder=chosen.decoder)
    host = chosen.host
    loopback = host in ("127.0.0.1", "localhost", "::1")
    allowed = default_allowed_hosts(host) if loopback else ["*"]
    web = create_app(segmenter.loaded, settings, segmenter.adapter, chosen.model or segmenter.loaded.spec.name, allowed)
    if not loopback:
        typer.echo(f"warning: serving on {host}: anyone who reaches this machine can open the data folder's volumes",
                   err=True)
    typer.echo(f"samadapt serve: http://{'127.0.0.1' if host == '0.0.0.0' else host}:{chosen.port}  (Ctrl+C stops)")
    run_server(web, host=host, port=chosen.port)
