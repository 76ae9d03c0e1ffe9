"""Configuration: one dataclass per command, with the settings groups of its components.

Every run directory gets the resolved configuration as ``config.yaml``; ``load_config`` reads it back, so
a run can be repeated exactly. Files are YAML, a group as a nested mapping; overrides are ``--set
key=value`` (``group.key=value`` for a group's field), values parsed as YAML (``engine.lr=1e-4``,
``classes=[liver,spleen]``). The machinery is :mod:`samadapt.settings`; the groups are the components' own
settings classes:

- ``engine`` (``train``, ``adapt``): :class:`~samadapt.training.engine.EngineSettings`;
- ``box_noise``, ``pruning``, ``phpg`` (``train``): :class:`~samadapt.prompts.box_noise.BoxNoise`,
  :class:`~samadapt.training.pruning.PruningSettings`, :class:`~samadapt.training.phpg.PHPGSettings`;
- ``propagation``, ``auto`` (``segment``): see :mod:`samadapt.inference.segment_cases`.

Runs saved before the groups existed hold flat keys (``lr``, ``prune_ratio``, ``phpg_rounds`` ...): each
command's ``renamed`` table maps them to the groups, so their ``config.yaml`` still loads and resumes.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from samadapt.data.prepare_config import PrepareConfig  # noqa: F401  (re-exported: every command's settings are here)
from samadapt.errors import ConfigError
from samadapt.evaluation.interactive_protocol import InteractiveSettings
from samadapt.prompts.box_noise import BoxNoise
from samadapt.settings import (  # noqa: F401  (the settings machinery, imported from here by the commands)
    check_choices,
    check_flags,
    check_groups,
    check_integers,
    check_numbers,
    config_to_dict,
    dotted_settings,
    expand_dotted,
    load_config,
    make_config,
    merge_settings,
    migrate_renamed,
    names_list,
    parse_overrides,
    save_config,
    setting_error,
)
from samadapt.training.engine import EngineSettings
from samadapt.training.phpg import PHPGSettings
from samadapt.training.pruning import PruningSettings

ENGINE_KEYS = ("steps", "batch_size", "grad_accum", "lr", "weight_decay", "warmup_steps", "min_lr_fraction",
               "grad_clip", "amp", "seed", "checkpoint_every", "checkpoint_seconds", "eval_every", "patience",
               "min_delta")


@dataclasses.dataclass
class PretrainConfig:
    """``samadapt pretrain``: the small foundation model from scratch (docs/model_card_tiny.md).

    The defaults are the settings of the shipped ``tiny`` checkpoint. Rounds: ``correction_rounds`` clicks +
    ``mask_only_rounds`` mask-only rounds per step, except the last ``full_recipe_fraction`` of steps,
    which use SAM's full 8 + 2 (a CPU budget: the decoder rounds, not the encoder, dominate a step).

    It runs on the training engine (:mod:`samadapt.training.engine`) with the ``engine`` group
    (:class:`EngineSettings`, ``--set engine.steps=3000``) at pretraining's defaults: 3000 steps, AdamW at
    lr 5e-4 with weight decay 0.05, 100 warm-up steps then cosine, ``grad_accum`` micro-batches of
    ``batch_size`` (10) images, ``amp`` on CUDA (the default device is the CPU, where it never applies),
    checkpoints by steps and by time, validation on the held-out corpus every ``eval_every`` (200) steps
    (score: mean of box and 1-click IoU), ``patience`` / ``min_delta`` early stopping. ``select_model``:
    ``last`` (the shipped model's rule) or ``best`` validation step for ``model.pth``. Run folders and
    sidecars written before the group (flat ``steps``, ``lr``, ...) load through ``renamed``.
    """

    renamed: ClassVar[dict[str, str]] = {key: f"engine.{key}" for key in ENGINE_KEYS}

    model: str = "tiny"
    engine: EngineSettings = dataclasses.field(default_factory=lambda: EngineSettings(
        steps=3000, batch_size=10, lr=5e-4, weight_decay=0.05, warmup_steps=100, eval_every=200))
    objects_per_image: int = 6
    corpus_images: int = 5000
    corpus_seed: int = 0
    eval_images: int = 100
    eval_seed: int = 1000003
    correction_rounds: int = 1
    mask_only_rounds: int = 1
    point_first_probability: float = 0.5  # first prompt a click (else a noisy box); SAM's full recipe: 0.5
    # The first steps prompt with noisy boxes only, one round, no corrections: ~3x cheaper per step, and the
    # fastest way out of the empty-mask plateau every from-scratch run starts on (docs/model_card_tiny.md).
    box_warmup_fraction: float = 0.7
    full_recipe_fraction: float = 0.04
    threads: int = 1
    init_from: str | None = None  # a SAM checkpoint to continue from (a second phase), instead of random weights
    select_model: str = "last"
    device: str = "cpu"

    def __post_init__(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"pretrain setting {what}")

        check_groups(self, bad)
        check_integers(self, ("objects_per_image", "corpus_images", "eval_images", "threads"), 1, bad)
        check_integers(self, ("corpus_seed", "eval_seed", "correction_rounds", "mask_only_rounds"), 0, bad)
        check_choices(self, {"select_model": ("last", "best")}, bad)
        if not isinstance(self.device, str):
            raise bad(f"device={self.device!r}: use cpu, cuda or cuda:<index>")
        check_numbers(self, ("box_warmup_fraction", "full_recipe_fraction", "point_first_probability"), bad,
                      fraction=True)
        if self.box_warmup_fraction + self.full_recipe_fraction > 1:
            raise ConfigError("pretrain settings box_warmup_fraction + full_recipe_fraction exceed 1; lower one")


@dataclasses.dataclass
class RunConfig:
    """What the training commands share (``samadapt train``, ``samadapt adapt``): the prepared dataset, the
    base model, the device, the validation split and the ``engine`` group (:class:`EngineSettings`: steps,
    batch, optimiser, schedule, checkpoints, validation and early stopping; ``--set engine.lr=1e-4``).
    """

    data: str = ""  # the prepared dataset folder (set by `samadapt train|adapt PREPARED`)
    model: str = "medsam_lite"  # the real foundation (models.registry.DEFAULT_MODEL); `tiny` for quick runs
    device: str = "cpu"
    val_split: str = "val"
    engine: EngineSettings = dataclasses.field(default_factory=EngineSettings)
    # flat keys of runs saved before the groups (a run's config.yaml from then still loads)
    renamed: ClassVar[dict[str, str]] = {key: f"engine.{key}" for key in ENGINE_KEYS}

    def check_run_settings(self, bad) -> None:
        """Validate the fields above (``bad(message)`` builds the command's :class:`ConfigError`)."""
        check_groups(self, bad)
        if not self.engine.lr > 0:  # the engine accepts 0 (an evaluation-only phase); a fine-tuning run does not
            raise setting_error("engine")(f"lr={self.engine.lr!r}: use a positive number, e.g. 1e-4")
        check_choices(self, {"val_split": ("train", "val", "test")}, bad)
        self.data = str(self.data)


LESION_KEYWORDS = ("lesion", "tumor", "tumour", "cancer", "metast", "nodule", "cyst", "mass")


FINETUNE_RENAMED = {
    **RunConfig.renamed,
    "box_noise": "box_noise.style", "organ_box_shift_px": "box_noise.organ_shift_px",
    "lesion_box_shift_px": "box_noise.lesion_shift_px", "box_shift_max_fraction": "box_noise.max_fraction",
    "sam_noise_std": "box_noise.sam_std",
    "pruning": "pruning.policy", "prune_ratio": "pruning.ratio", "prune_anneal_fraction": "pruning.anneal_fraction",
    "prune_min_class_share": "pruning.min_class_share", "prune_protected_classes": "pruning.protected_classes",
    "prune_rare_class_share": "pruning.rare_class_share",
    **{f"phpg_{key}": f"phpg.{key}" for key in (
        "correction_rounds", "mask_only_rounds", "first_weights", "correction_weights", "error_head",
        "guidance_mix", "error_weight", "recompute_passes")},
}


@dataclasses.dataclass
class FinetuneConfig(RunConfig):
    """``samadapt train``: fine-tune SAM's mask decoder on a prepared dataset, from its embedding cache.

    Prompting (``prompting``): ``multi`` prompts every object of a slice at once, a batch of N boxes on one
    image embedding decoded in one pass (at most ``max_prompts_per_slice``, a random subset beyond that);
    ``single`` is the baseline that prompts one random object per slice per step.

    Box prompts come from the ground truth, perturbed by the ``box_noise`` group (:class:`BoxNoise`: style
    ``mixed``, ``medsam``, ``sam`` or ``none``, shifts in model-frame pixels for organs and lesions, capped
    at a fraction of the box side). Lesion classes are ``lesion_classes``, or by default every class whose
    name contains one of :data:`LESION_KEYWORDS`.

    Loss per prompt: Dice + BCE (``loss: dice+focal`` swaps BCE for focal) on the logits upsampled to
    ``loss_size`` px against area-downsampled targets (None: at the model-input resolution), plus
    ``iou_weight`` x MSE of the IoU head; reduced over the prompts of a slice by ``prompt_reduction``:
    ``mean``, or ``max`` (back-propagate the largest per-prompt loss, the multi-prompt paper's choice).

    What trains: the mask decoder; ``train_prompt_encoder`` adds the prompt encoder; ``lora_rank`` > 0 adds
    LoRA adapters (scale ``lora_alpha / lora_rank``) on the ``qkv`` projections of the image encoder's
    attention. LoRA runs the encoder on the slices at every step (no embedding cache: slower) and merges
    the adapters into the saved weights.

    Data pruning: the ``pruning`` group (:class:`PruningSettings`; ``pruning.policy``: ``class`` is CBDP,
    ``global`` InfoBatch's single threshold, ``random`` the same count at random, ``none`` all data). With
    pruning, ``engine.steps`` sets the length in full-data epochs and the run ends when those epochs are
    done, in fewer steps.

    Objective (``objective``): ``multi-prompt`` (the boxes above) or ``phpg``: parallel heuristic prompt
    generation (:mod:`samadapt.training.phpg`, docs/phpg.md), set by the ``phpg`` group
    (:class:`PHPGSettings`: rounds, simulated users, the optional error head). The mask loss is the one
    above, at ``loss_size``; the box noise does not apply to PHPG.

    Engine (the ``engine`` group, :class:`EngineSettings`, with its defaults): validation Dice with tight
    boxes, the best step kept as ``best.pth``, the last as ``last.pth``. ``select_model`` says which of the
    two becomes ``model.pth``, the run's model that ``eval``, ``segment`` and a run folder resolve to:
    ``best`` (validation Dice; the last step when there is no validation split) or ``last``.
    """

    select_model: str = "best"
    prompting: str = "multi"
    max_prompts_per_slice: int = 32
    train_prompt_encoder: bool = False
    lora_rank: int = 0  # > 0: also train LoRA adapters (this rank) on the image encoder's attention
    lora_alpha: float = 8.0
    lesion_classes: list[str] | None = None
    loss: str = "dice+bce"
    iou_weight: float = 1.0
    prompt_reduction: str = "mean"
    loss_size: int | None = None  # side of the mask-loss frame in px (None: the model-input size)
    objective: str = "multi-prompt"
    box_noise: BoxNoise = dataclasses.field(default_factory=BoxNoise)
    pruning: PruningSettings = dataclasses.field(default_factory=PruningSettings)
    phpg: PHPGSettings = dataclasses.field(default_factory=PHPGSettings)
    renamed: ClassVar[dict[str, str]] = FINETUNE_RENAMED

    def __post_init__(self) -> None:
        bad = setting_error("train")
        self.check_run_settings(bad)
        check_choices(self, {"select_model": ("best", "last"), "prompting": ("multi", "single"),
                             "loss": ("dice+bce", "dice+focal"), "prompt_reduction": ("mean", "max"),
                             "objective": ("multi-prompt", "phpg")}, bad)
        check_integers(self, ("max_prompts_per_slice",), 1, bad)
        check_integers(self, ("lora_rank",), 0, bad)
        check_numbers(self, ("lora_alpha", "iou_weight"), bad)
        if self.loss_size is not None and (
            isinstance(self.loss_size, bool) or not isinstance(self.loss_size, int) or self.loss_size < 8
        ):
            raise bad(f"loss_size={self.loss_size!r}: use an integer >= 8 (pixels; capped at the model frame) or null")
        self.lesion_classes = names_list(self.lesion_classes)
        if self.lesion_classes is not None and not (
                isinstance(self.lesion_classes, list) and all(isinstance(c, str) for c in self.lesion_classes)):
            raise bad(f"lesion_classes={self.lesion_classes!r}: give a list of class names, e.g. [tumour]")

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

    Engine (the ``engine`` group, :class:`EngineSettings`): its defaults but batch 8 slices, lr 1e-3,
    ``weight_decay`` 0 (the paper's Adam); validation by the automatic Dice (with an APM) or the prompted
    Dice (``ips``).
    """

    engine: EngineSettings = dataclasses.field(default_factory=lambda: EngineSettings(
        batch_size=8, lr=1e-3, weight_decay=0.0))  # the paper's Adam, lr 1e-3
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

    def __post_init__(self) -> None:
        bad = setting_error("adapt")
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
        self.classes = names_list(self.classes)
        if self.classes is not None and (not self.classes or not all(isinstance(c, str) for c in self.classes)):
            raise bad(f"classes={self.classes!r}: give a list of class names, e.g. [liver,spleen]")

    @property
    def has_apm(self) -> bool:
        return self.mode in ("apm", "apm+ips")

    @property
    def has_ips(self) -> bool:
        return self.mode in ("ips", "apm+ips")


def _comma_text(value: object) -> object:
    """A YAML list (``[0, 5, 10]``) as the comma list an option takes (``"0,5,10"``); anything else as it is."""
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclasses.dataclass
class EvalConfig:
    """``samadapt eval``: its options as settings (``--config``, ``--set``; an option given on the command line
    wins over the file). ``model`` and ``adapter`` are lists (None: ``medsam_lite``; no adapter), ``jitter``
    and ``protocol`` comma lists or YAML lists, ``max_slices`` None for every slice. The ``interactive`` group
    sets the interactive protocol (``--set interactive.max_clicks=10``; :class:`InteractiveSettings`)."""

    model: list[str] | None = None
    split: str = "test"
    jitter: str = "0,5,10,20"
    out: str = "samadapt-eval"
    device: str = "cpu"
    seed: int = 0
    protocol: str = "box"
    prompts: str = "box"
    adapter: list[str] | None = None
    max_slices: int | str | None = None
    workers: int = 1
    interactive: InteractiveSettings = dataclasses.field(default_factory=InteractiveSettings)

    def __post_init__(self) -> None:
        bad = setting_error("eval")
        self.jitter, self.protocol = str(_comma_text(self.jitter)), str(_comma_text(self.protocol))
        for key in ("model", "adapter"):
            value = names_list(getattr(self, key))
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise bad(f"{key}={value!r}: give a list of names or paths")
            setattr(self, key, value)
        check_choices(self, {"split": ("train", "val", "test")}, bad)
        if self.prompts not in ("box", "auto"):
            raise bad(f"prompts={self.prompts!r} (--prompts {self.prompts!r}): use box or auto")
        check_integers(self, ("seed",), 0, bad)  # workers and max_slices: checked as the options are, by eval
        self.out, self.device = str(self.out), str(self.device)


@dataclasses.dataclass
class ServeConfig:
    """``samadapt serve``: its options as settings (``--config``, ``--set``; an option given on the command
    line wins over the file). ``data``: the folder volumes may be opened from (None: uploads only); ``model``
    None: ``medsam_lite`` (with ``adapter``: its base model)."""

    data: str | None = None
    model: str | None = None
    adapter: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    max_upload_mb: int = 512
    decoder: str = "torch"
    encoder_runtime: str = "auto"

    def __post_init__(self) -> None:
        bad = setting_error("serve")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise bad(f"port={self.port!r}: use a TCP port in 1..65535")
        check_integers(self, ("max_upload_mb",), 1, bad)
        if self.decoder not in ("torch", "onnx") or (self.decoder == "onnx" and self.device != "cpu"):
            raise bad(f"decoder={self.decoder!r} (--decoder) with device={self.device!r}: use torch (any device) "
                      "or onnx (cpu)")
        for key in ("data", "model", "adapter"):
            if getattr(self, key) is not None:
                setattr(self, key, str(getattr(self, key)))
        self.host, self.device = str(self.host), str(self.device)


@dataclasses.dataclass
class EmbedConfig:
    """``samadapt embed``: its options as settings (``--config``, ``--set``; an option given on the command
    line wins over the file). ``out`` None: ``PREPARED/embeddings/<signature[:16]>``."""

    model: str = "medsam_lite"
    batch_size: int = 8
    features: bool = False
    device: str = "cpu"
    out: str | None = None
    encoder_runtime: str = "auto"

    def __post_init__(self) -> None:
        bad = setting_error("embed")
        check_integers(self, ("batch_size",), 1, bad)
        check_flags(self, ("features",), bad)
        self.model, self.device = str(self.model), str(self.device)
        if self.out is not None:
            self.out = str(self.out)
