"""Configuration: one dataclass per command, YAML round trip, CLI overrides.

Every run directory gets the resolved configuration as ``config.yaml``; ``load_config`` reads it back, so
a run can be repeated exactly. Overrides are ``key=value`` strings parsed as YAML scalars
(``lr=1e-4``, ``classes=[liver,spleen]``); nested keys are not used.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from samadapt.errors import ConfigError
from samadapt.io.atomic import atomic_path

T = TypeVar("T")


def config_to_dict(config: Any) -> dict:
    """A dataclass as a plain dict (tuples -> lists, paths -> strings) fit for YAML."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, os.PathLike):
            return str(value)
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def parse_overrides(pairs: list[str] | None) -> dict:
    """``["lr=1e-4", "steps=200"]`` -> ``{"lr": 0.0001, "steps": 200}``."""
    result = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{pair}': write it as key=value")
        result[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return result


def make_config(cls: type[T], values: dict, source: str = "configuration") -> T:
    """Build dataclass ``cls`` from ``values``, rejecting unknown keys with the list of known ones."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    converted = {}
    for key, value in values.items():
        default = known[key].default
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:  # YAML 1.1 reads "1e-4" as a string
                value = float(value)
            except ValueError:
                raise ConfigError(f"{source}: {key} must be a number, got '{value}'") from None
        converted[key] = value
    try:
        return cls(**converted)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from None


def load_config(cls: type[T], path: str | os.PathLike[str] | None = None, overrides: dict | None = None) -> T:
    """Defaults of ``cls``, updated from a YAML file (if given), then from ``overrides``. A bad setting that
    the file itself holds is reported with the file's name (``<path>: ...``)."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read YAML config ({type(err).__name__}); check the file") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of setting: value")
        values.update(loaded)
    source = str(path) if path else "options"
    try:
        return make_config(cls, {**values, **(overrides or {})}, source=source)
    except ConfigError as err:
        if path is None or str(err).startswith(f"{path}:"):
            raise
        try:  # the file's settings alone: when they fail, the file is at fault, not the overrides
            make_config(cls, values, source=source)
        except ConfigError:
            raise ConfigError(f"{path}: {err}") from None
        raise


def save_config(config: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` as YAML atomically."""
    with atomic_path(path, suffix=".yaml") as tmp:
        tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return Path(path)


def check_choices(config: Any, choices: dict[str, tuple[str, ...]], bad) -> None:
    """Raise ``bad(message)`` when a setting of ``config`` is not one of its allowed strings."""
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            raise bad(f"{key}={getattr(config, key)!r}: use one of {', '.join(allowed)}")


def check_integers(config: Any, keys: tuple[str, ...], minimum: int, bad) -> None:
    """Raise ``bad(message)`` unless each setting is an integer (not a bool) >= ``minimum``."""
    for key in keys:
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise bad(f"{key}={value!r}: use an integer >= {minimum}")


def check_numbers(config: Any, keys: tuple[str, ...], bad, fraction: bool = False) -> None:
    """Raise ``bad(message)`` unless each setting is a number >= 0 (``fraction``: between 0 and 1)."""
    for key in keys:
        value = getattr(config, key)
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if not number or not value >= 0 or (fraction and value > 1):
            raise bad(f"{key}={value!r}: " + ("use a fraction between 0 and 1" if fraction else "use a number >= 0"))


def check_flags(config: Any, keys: tuple[str, ...], bad) -> None:
    """Raise ``bad(message)`` unless each setting is a bool."""
    for key in keys:
        if not isinstance(getattr(config, key), bool):
            raise bad(f"{key}={getattr(config, key)!r}: use true or false")


@dataclasses.dataclass
class PrepareConfig:
    """Settings of ``samadapt prepare`` (raw dataset -> prepared model-frame slices).

    - ``image_size``: side ``S`` of the square model frame (longest side resized to it, then padded).
    - ``axis``: slicing axis of ``(Z, Y, X)`` volumes: ``axial`` (Z), ``coronal`` (Y) or ``sagittal`` (X).
    - ``window``: CT preset name, ``"W,L"`` in HU, ``percentiles``, ``none`` or ``auto`` (CT -> abdomen,
      other modalities -> percentiles; 8-bit 2D images pass through).
    - ``min_area``: objects smaller than this many model-frame pixels are dropped.
    - ``keep_empty_ratio``: fraction of slices without objects that are kept (chosen from ``seed``).
    - ``split``: train/val/test fractions of cases; ``seed`` drives the split and empty-slice choice.
    - ``split_group``: a regular expression whose first group (or whole match) names the subject of a case
      id, e.g. ``'^(patient\\d+)'``: all cases of a subject share one split, and the fractions count
      subjects. Without it, case names that look like ``<subject>_<number>`` cut by the split give a warning.
    - ``split_file``: a JSON file ``{"train": [...], "val": [...], "test": [...]}`` of case ids (of subjects
      with ``split_group``), or nnU-Net's ``splits_final.json`` (fold 0); it replaces ``split``.
    - ``classes``: class names to keep (``None``: all); other label values become background.
    - ``percentiles``: lower/upper foreground percentiles for percentile normalisation.
    """

    image_size: int = 256
    axis: str = "axial"
    window: str = "auto"
    min_area: int = 16
    keep_empty_ratio: float = 0.1
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_group: str | None = None
    split_file: str | None = None
    seed: int = 0
    classes: list[str] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"prepare setting {what}")

        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 4096:
            raise bad(f"image_size={self.image_size!r}: use an integer between 16 and 4096 (SAM uses 1024)")
        if self.axis not in ("axial", "coronal", "sagittal"):
            raise bad(f"axis={self.axis!r}: use axial, coronal or sagittal")
        self.window = str(self.window)
        if isinstance(self.min_area, bool) or not isinstance(self.min_area, int) or self.min_area < 1:
            raise bad(f"min_area={self.min_area!r}: use an integer >= 1 (model-frame pixels)")
        if not isinstance(self.keep_empty_ratio, (int, float)) or not 0.0 <= self.keep_empty_ratio <= 1.0:
            raise bad(f"keep_empty_ratio={self.keep_empty_ratio!r}: use a fraction between 0 and 1")
        try:
            split = tuple(float(f) for f in self.split)
        except (TypeError, ValueError):
            split = ()
        if len(split) != 3 or min(split) < 0 or split[0] <= 0 or abs(sum(split) - 1.0) > 1e-6:
            raise bad(f"split={self.split!r}: give three fractions train,val,test summing to 1 (train > 0)")
        self.split = split
        for key in ("split_group", "split_file"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise bad(f"{key}={value!r}: give a non-empty string")
        if self.split_file is not None:
            self.split_file = str(Path(self.split_file).expanduser().resolve())
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise bad(f"seed={self.seed!r}: use a non-negative integer")
        if self.classes is not None:
            if isinstance(self.classes, str):
                self.classes = [c.strip() for c in self.classes.split(",") if c.strip()]
            if not self.classes or not all(isinstance(c, str) for c in self.classes):
                raise bad(f"classes={self.classes!r}: give a list of class names, e.g. [liver,spleen]")
            self.classes = list(self.classes)
        try:
            percentiles = tuple(float(p) for p in self.percentiles)
        except (TypeError, ValueError):
            percentiles = ()
        if len(percentiles) != 2 or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
            raise bad(f"percentiles={self.percentiles!r}: give lower,upper with 0 <= lower < upper <= 100")
        self.percentiles = percentiles


@dataclasses.dataclass
class PretrainConfig:
    """``samadapt pretrain``: the small foundation model from scratch (docs/model_card_tiny.md).

    The defaults are the settings of the shipped ``tiny`` checkpoint. Rounds: ``correction_rounds`` clicks +
    ``mask_only_rounds`` mask-only rounds per step, except the last ``full_recipe_fraction`` of steps,
    which use SAM's full 8 + 2 (a CPU budget: the decoder rounds, not the encoder, dominate a step).

    It runs on the training engine (:mod:`samadapt.training.engine`), whose settings these fields supply
    (:func:`samadapt.pretraining.pretrain.engine_settings`): AdamW, warm-up then cosine, ``grad_accum``
    micro-batches of ``batch_size`` images, ``amp`` on CUDA, checkpoints by steps and by time, validation on
    the held-out corpus every ``eval_every`` steps (score: mean of box and 1-click IoU), ``patience`` /
    ``min_delta`` early stopping. ``select_model``: ``last`` (the shipped model's rule) or ``best``
    validation step for ``model.pth``.
    """

    model: str = "tiny"
    steps: int = 3000
    batch_size: int = 10
    objects_per_image: int = 6
    lr: float = 5e-4
    min_lr_fraction: float = 0.05
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    corpus_images: int = 5000
    corpus_seed: int = 0
    eval_images: int = 100
    eval_seed: int = 1000003
    seed: int = 0
    correction_rounds: int = 1
    mask_only_rounds: int = 1
    point_first_probability: float = 0.5  # first prompt a click (else a noisy box); SAM's full recipe: 0.5
    # The first steps prompt with noisy boxes only, one round, no corrections: ~3x cheaper per step, and the
    # fastest way out of the empty-mask plateau every from-scratch run starts on (docs/model_card_tiny.md).
    box_warmup_fraction: float = 0.7
    full_recipe_fraction: float = 0.04
    eval_every: int = 200
    checkpoint_every: int = 50
    threads: int = 1
    init_from: str | None = None  # a SAM checkpoint to continue from (a second phase), instead of random weights
    grad_accum: int = 1
    amp: bool = True  # autocast on CUDA only (the default device is the CPU, where it never applies)
    checkpoint_seconds: float = 60.0
    patience: int = 0
    min_delta: float = 0.0
    select_model: str = "last"
    device: str = "cpu"

    def __post_init__(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"pretrain setting {what}")

        check_integers(self, ("steps", "batch_size", "objects_per_image", "corpus_images", "eval_images",
                              "eval_every", "checkpoint_every", "threads", "grad_accum"), 1, bad)
        check_integers(self, ("warmup_steps", "corpus_seed", "eval_seed", "seed", "correction_rounds",
                              "mask_only_rounds", "patience"), 0, bad)
        check_numbers(self, ("lr", "weight_decay", "grad_clip"), bad)  # lr 0: a phase that only evaluates
        check_numbers(self, ("checkpoint_seconds", "min_delta"), bad)
        check_flags(self, ("amp",), bad)
        check_choices(self, {"select_model": ("last", "best")}, bad)
        if not isinstance(self.device, str):
            raise bad(f"device={self.device!r}: use cpu, cuda or cuda:<index>")
        check_numbers(self, ("box_warmup_fraction", "full_recipe_fraction", "point_first_probability",
                             "min_lr_fraction"), bad, fraction=True)
        if self.box_warmup_fraction + self.full_recipe_fraction > 1:
            raise ConfigError("pretrain settings box_warmup_fraction + full_recipe_fraction exceed 1; lower one")


@dataclasses.dataclass
class RunConfig:
    """What the training commands share (``samadapt train``, ``samadapt adapt``): the prepared dataset, the
    base model and the settings of the training engine (:mod:`samadapt.training.engine`).

    Engine: AdamW, linear warm-up over ``warmup_steps`` then cosine to ``min_lr_fraction`` x ``lr``,
    ``grad_accum`` micro-batches of ``batch_size`` slices per step, gradient clipping at ``grad_clip``,
    bf16/fp16 autocast on CUDA when ``amp`` (never on CPU), checkpoints every ``checkpoint_every`` steps
    and also once ``checkpoint_seconds`` have passed since the last one (0: by steps only), so a stopped
    run on a slow machine loses at most about that much work; validation on ``val_split`` every
    ``eval_every`` steps (the best step is kept); with ``patience`` > 0 the run stops early once that many
    validations in a row after the warm-up brought no gain of more than ``min_delta`` over the last gain
    (0: runs all ``steps``). A command's config redeclares
    the fields whose defaults differ.
    """

    data: str = ""  # the prepared dataset folder (set by `samadapt train|adapt PREPARED`)
    model: str = "medsam_lite"  # the real foundation (models.registry.DEFAULT_MODEL); `tiny` for quick runs
    steps: int = 300
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_fraction: float = 0.05
    grad_clip: float = 1.0
    amp: bool = True
    seed: int = 0
    checkpoint_every: int = 50
    checkpoint_seconds: float = 60.0
    eval_every: int = 50
    patience: int = 0
    min_delta: float = 0.0
    val_split: str = "val"
    device: str = "cpu"
    lr_example: ClassVar[str] = "1e-4"  # the lr an error message suggests

    def check_run_settings(self, bad) -> None:
        """Validate the fields above (``bad(message)`` builds the command's :class:`ConfigError`)."""
        check_choices(self, {"val_split": ("train", "val", "test")}, bad)
        check_integers(self, ("steps", "batch_size", "grad_accum", "checkpoint_every", "eval_every"), 1, bad)
        check_integers(self, ("warmup_steps", "seed", "patience"), 0, bad)
        check_numbers(self, ("weight_decay", "grad_clip", "checkpoint_seconds", "min_delta"), bad)
        check_numbers(self, ("min_lr_fraction",), bad, fraction=True)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise bad(f"lr={self.lr!r}: use a positive number, e.g. {self.lr_example}")
        check_flags(self, ("amp",), bad)
        self.data = str(self.data)


LESION_KEYWORDS = ("lesion", "tumor", "tumour", "cancer", "metast", "nodule", "cyst", "mass")


@dataclasses.dataclass
class FinetuneConfig(RunConfig):
    """``samadapt train``: fine-tune SAM's mask decoder on a prepared dataset, from its embedding cache.

    Prompting (``prompting``): ``multi`` prompts every object of a slice at once, a batch of N boxes on one
    image embedding decoded in one pass (at most ``max_prompts_per_slice``, a random subset beyond that);
    ``single`` is the baseline that prompts one random object per slice per step.

    Box prompts come from the ground truth, perturbed (``box_noise``): ``medsam`` moves each side outward
    by U(0, shift) pixels, MedSAM's 0-20 px at 1024 scaled to the model frame; ``sam`` adds N(0,
    ``sam_noise_std`` x side) to each coordinate, capped at the shift (boxes grow and shrink); ``mixed``
    (default) draws one of the two per box, as users draw loose boxes and boxes that cut the object;
    ``none`` keeps tight boxes. The
    shift is ``organ_box_shift_px`` or ``lesion_box_shift_px`` (model-frame pixels) by object type, and
    never more than ``box_shift_max_fraction`` of the box side, so small lesions keep informative boxes.
    Lesion classes are ``lesion_classes``, or by default every class whose name contains one of
    :data:`LESION_KEYWORDS`.

    Loss per prompt: Dice + BCE (``loss: dice+focal`` swaps BCE for focal) on the logits upsampled to
    ``loss_size`` px against area-downsampled targets (None: at the model-input resolution), plus
    ``iou_weight`` x MSE of the IoU head; reduced over the prompts of a slice by ``prompt_reduction``:
    ``mean``, or ``max`` (back-propagate the largest per-prompt loss, the multi-prompt paper's choice).

    What trains: the mask decoder; ``train_prompt_encoder`` adds the prompt encoder; ``lora_rank`` > 0 adds
    LoRA adapters (scale ``lora_alpha / lora_rank``) on the ``qkv`` projections of the image encoder's
    attention. LoRA runs the encoder on the slices at every step (no embedding cache: slower) and merges
    the adapters into the saved weights.

    Data pruning (``pruning``): ``class`` is CBDP, ``global`` InfoBatch's single threshold, ``random`` the
    same count at random, ``none`` all data (see :mod:`samadapt.training.pruning` for the rule and the
    ``prune_*`` settings). With pruning, ``steps`` sets the length in full-data epochs
    (``steps x batch_size x grad_accum / training slices``) and the run ends when those epochs are done,
    in fewer steps.

    Objective (``objective``): ``multi-prompt`` (the boxes above) or ``phpg``: parallel heuristic prompt
    generation (:mod:`samadapt.training.phpg`, docs/phpg.md): every region draws a simulated user's first
    prompt (``phpg_first_weights``, behaviour name -> weight, None: every behaviour 1, names left out: 0),
    then ``phpg_correction_rounds`` correction clicks (``phpg_correction_weights``: ``largest_error`` /
    ``random_error``) and ``phpg_mask_only_rounds`` mask-only rounds, all regions of a slice in one decoder
    pass per round; SAM's recipe is 8 + 2, the default 2 + 1 keeps CPU runs affordable. ``phpg_error_head``
    trains an error-prediction head (``phpg_error_weight`` x BCE) that places a fraction
    ``phpg_guidance_mix`` of the correction clicks; ``phpg_recompute_passes`` recomputes each round's
    activations in the backward pass instead of keeping them (same gradients, memory of one round instead of
    all, one more decoder forward per round). The mask loss is the one above, at ``loss_size``; the
    box settings above do not apply to PHPG.

    Engine (:class:`RunConfig`, whose defaults this command keeps): validation Dice with tight boxes, the
    best step kept as ``best.pth``, the last as ``last.pth``. ``select_model`` says which of the two becomes
    ``model.pth``, the run's model that ``eval``, ``segment`` and a run folder resolve to: ``best``
    (validation Dice; the last step when there is no validation split) or ``last``.
    """

    select_model: str = "best"
    prompting: str = "multi"
    max_prompts_per_slice: int = 32
    train_prompt_encoder: bool = False
    lora_rank: int = 0  # > 0: also train LoRA adapters (this rank) on the image encoder's attention
    lora_alpha: float = 8.0
    box_noise: str = "mixed"
    organ_box_shift_px: float = 5.0
    lesion_box_shift_px: float = 2.0
    box_shift_max_fraction: float = 0.25
    sam_noise_std: float = 0.1
    lesion_classes: list[str] | None = None
    loss: str = "dice+bce"
    iou_weight: float = 1.0
    prompt_reduction: str = "mean"
    loss_size: int | None = None  # side of the mask-loss frame in px (None: the model-input size)
    pruning: str = "none"
    prune_ratio: float = 0.5
    prune_anneal_fraction: float = 0.125
    prune_min_class_share: float = 0.5
    prune_protected_classes: list[str] | None = None
    prune_rare_class_share: float = 0.1
    objective: str = "multi-prompt"
    phpg_correction_rounds: int = 2  # SAM's recipe and the PHPG issue: 8 (a CPU budget by default)
    phpg_mask_only_rounds: int = 1  # SAM: 2
    phpg_first_weights: dict[str, float] | None = None
    phpg_correction_weights: dict[str, float] | None = None
    phpg_error_head: bool = True
    phpg_guidance_mix: float = 0.5
    phpg_error_weight: float = 1.0
    phpg_recompute_passes: bool = False  # recompute each round's activations in backward: far less memory, ~+35% time

    def __post_init__(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"train setting {what}")

        self._check_phpg(bad)
        self.check_run_settings(bad)
        check_choices(self, {"select_model": ("best", "last"), "prompting": ("multi", "single"),
                             "box_noise": ("mixed", "medsam", "sam", "none"),
                             "loss": ("dice+bce", "dice+focal"), "prompt_reduction": ("mean", "max"),
                             "pruning": ("none", "class", "global", "random")}, bad)
        check_integers(self, ("max_prompts_per_slice",), 1, bad)
        check_integers(self, ("lora_rank",), 0, bad)
        check_numbers(self, ("lora_alpha", "organ_box_shift_px", "lesion_box_shift_px", "box_shift_max_fraction",
                             "sam_noise_std", "iou_weight"), bad)
        if self.loss_size is not None and (
            isinstance(self.loss_size, bool) or not isinstance(self.loss_size, int) or self.loss_size < 8
        ):
            raise bad(f"loss_size={self.loss_size!r}: use an integer >= 8 (pixels; capped at the model frame) or null")
        check_numbers(self, ("prune_ratio", "prune_anneal_fraction", "prune_min_class_share",
                             "prune_rare_class_share"), bad, fraction=True)
        if isinstance(self.prune_protected_classes, str):
            self.prune_protected_classes = [c.strip() for c in self.prune_protected_classes.split(",") if c.strip()]
        if isinstance(self.lesion_classes, str):
            self.lesion_classes = [c.strip() for c in self.lesion_classes.split(",") if c.strip()]

    def _check_phpg(self, bad) -> None:
        """The ``objective`` and ``phpg_*`` settings (behaviour names against the simulators' registry)."""
        from samadapt.prompts.behaviour_mixture import CORRECTION_BEHAVIOURS, FIRST_BEHAVIOURS, check_weights

        if self.objective not in ("multi-prompt", "phpg"):
            raise bad(f"objective={self.objective!r}: use one of multi-prompt, phpg")
        check_integers(self, ("phpg_correction_rounds", "phpg_mask_only_rounds"), 0, bad)
        check_flags(self, ("phpg_error_head", "phpg_recompute_passes"), bad)
        check_numbers(self, ("phpg_error_weight",), bad)
        check_numbers(self, ("phpg_guidance_mix",), bad, fraction=True)
        registries = (("phpg_first_weights", FIRST_BEHAVIOURS), ("phpg_correction_weights", CORRECTION_BEHAVIOURS))
        for key, known in registries:
            value = getattr(self, key)
            if value is not None:
                try:
                    setattr(self, key, check_weights(value, known, key))
                except ValueError as err:
                    raise bad(str(err)) from None

    def is_lesion(self, class_name: str) -> bool:
        """Whether ``class_name`` gets the lesion box range (see the class docstring)."""
        if self.lesion_classes is not None:
            return class_name in self.lesion_classes
        return any(key in class_name.lower() for key in LESION_KEYWORDS)


@dataclasses.dataclass
class PromiseConfig(RunConfig):
    """``samadapt adapt``: ProMISe with SAM frozen: an auto-prompting module (APM) and/or incremental pattern
    shifting (IPS) trained on a prepared dataset from its embedding cache (docs/promise.md).

    Modes (``mode``): ``apm`` trains the APM alone (its points through the frozen decoder); ``ips`` trains
    IPS alone with ground-truth prompts (``ips_prompts``: ``points`` = ``num_positive`` clicks in each
    object and the rest near it, ``box`` = its tight box, ``mixed`` = one of the two per object at random);
    ``apm+ips`` trains both together, fully automatic. Every SAM parameter stays frozen. In ``apm+ips``,
    ``promptable_weight`` > 0 adds that weight x the ``ips`` loss (ground-truth prompts, same shift) to each
    slice's loss, so the shift stays useful with user prompts (docs/promise.md: trained on APM points alone,
    IPS spoils box prompts); 0 is the paper's recipe.

    APM (:mod:`samadapt.promise.apm`): ``apm_kind`` ``resnet`` or ``cross_attention``; ``apm_size``
    ``auto`` | ``small`` | ``paper``; ``num_points`` points per class, the first ``num_positive`` positive;
    one head per class of ``classes`` (default: every class of the prepared dataset); ``apm_init``
    ``prior`` starts each class's points around its mean box on the training slices, ``centre`` at the
    image centre; ``presence_head`` adds a per-class "on this slice?" logit (BCE, ``presence_weight``), used
    to leave absent classes empty. IPS (:mod:`samadapt.promise.ips`): MLP width ``ips_hidden`` (0: 4x the
    decoder width).

    Loss: BCE + (1 - soft Dice) on the decoder's low-res masks against area-downsampled ground truth, per
    prompted mask, averaged. ``multimask_output`` picks the decoder output the shift trains for: true,
    SAM's multimask output and its first mask (ProMISe's choice), or false, the single-mask output. Left
    unset it follows the mode: true with an APM (on the phantoms, automatic Dice 46.4 vs 40.1 single-mask),
    false for ``ips`` (box-prompt Dice 68.9 vs 61.3 multimask, frozen SAM 69.4; docs/promise.md). Automatic
    modes prompt every class present on a slice (the union of its instances); ``ips`` prompts every object.

    Engine (:class:`RunConfig`): batch 8 slices, lr 1e-3, ``weight_decay`` 0 (the paper's Adam); validation
    by the automatic Dice (with an APM) or the prompted Dice (``ips``).
    """

    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    mode: str = "apm+ips"
    classes: list[str] | None = None
    apm_kind: str = "resnet"
    apm_size: str = "auto"
    apm_init: str = "prior"
    num_points: int = 16
    num_positive: int = 8
    presence_head: bool = True
    presence_weight: float = 1.0
    ips_hidden: int = 0
    ips_prompts: str = "mixed"
    negative_margin: float = 0.5
    promptable_weight: float = 1.0  # apm+ips: weight of the ground-truth-prompt loss that keeps IPS promptable
    multimask_output: bool | None = None  # None: true with an APM, false for mode ips (see the docstring)
    lr_example: ClassVar[str] = "1e-3"

    def __post_init__(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"adapt setting {what}")

        self.check_run_settings(bad)
        check_choices(self, {"mode": ("apm", "ips", "apm+ips"), "apm_kind": ("resnet", "cross_attention"),
                             "apm_size": ("auto", "small", "paper"), "apm_init": ("prior", "centre"),
                             "ips_prompts": ("points", "box", "mixed")}, bad)
        check_integers(self, ("num_points",), 1, bad)
        check_integers(self, ("num_positive", "ips_hidden"), 0, bad)
        if self.num_positive > self.num_points:
            raise bad(f"num_positive={self.num_positive}: at most num_points ({self.num_points})")
        check_numbers(self, ("presence_weight", "negative_margin", "promptable_weight"), bad)
        if self.multimask_output is None:
            self.multimask_output = self.has_apm
        check_flags(self, ("presence_head", "multimask_output"), bad)
        if isinstance(self.classes, str):
            self.classes = [c.strip() for c in self.classes.split(",") if c.strip()]
        if self.classes is not None and (not self.classes or not all(isinstance(c, str) for c in self.classes)):
            raise bad(f"classes={self.classes!r}: give a list of class names, e.g. [liver,spleen]")

    @property
    def has_apm(self) -> bool:
        return self.mode in ("apm", "apm+ips")

    @property
    def has_ips(self) -> bool:
        return self.mode in ("ips", "apm+ips")
