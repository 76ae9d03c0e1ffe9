"""Named SAM architectures and where their official checkpoints come from.

Every architecture is built from ``segment_anything`` classes (see :mod:`samadapt.models.sam`). The official
checkpoints carry their published sha256; ``tiny`` is samadapt's own small foundation model, shipped inside
the package (see ``docs/model_card_tiny.md``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a SAM model plus where its weights come from.

    Sizes follow ``segment_anything.build_sam``: a ViT image encoder of ``encoder_depth`` blocks with
    ``encoder_embed_dim`` channels over ``image_size / patch_size`` patches per side, a neck to
    ``prompt_embed_dim`` channels, and a two-way mask decoder of that width.
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
    filename: str | None = None
    url: str | None = None
    sha256: str | None = None
    packaged: bool = False
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
        """Encoder blocks whose outputs serve as multi-level features (about 1/2, 3/4 and the end).

        For ViT-B (12 blocks) these are blocks 6, 9 and 12 (1-based), the levels ProMISe's APM reads.
        Returned 0-based.
        """
        depth = self.encoder_depth
        return (depth // 2 - 1, (3 * depth) // 4 - 1, depth - 1)

    def architecture(self) -> dict:
        """The fields that define the network (not where its weights come from), for sidecars."""
        keep = {
            "encoder_embed_dim", "encoder_depth", "encoder_num_heads", "encoder_global_attn_indexes",
            "image_size", "patch_size", "window_size", "prompt_embed_dim", "decoder_mlp_dim",
            "decoder_num_heads", "iou_head_hidden_dim", "pixel_mean", "pixel_std",
        }
        return {k: v for k, v in dataclasses.asdict(self).items() if k in keep}

    @classmethod
    def from_architecture(cls, name: str, arch: dict) -> ModelSpec:
        """Inverse of :meth:`architecture` (lists from JSON become tuples)."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}
        return cls(name=name, **values)


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
    # An untrained micro configuration for fast tests of code paths (never for measuring quality).
    "test_micro": ModelSpec(
        name="test_micro", encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
        encoder_global_attn_indexes=(1,), image_size=64, patch_size=16, window_size=2,
        prompt_embed_dim=32, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32,
    ),
}

DEFAULT_MODEL = "tiny"


def model_names() -> list[str]:
    """Registered model names, for help texts."""
    return sorted(REGISTRY)
