"""Render a montage of synthetic abdominal CT phantoms to ``docs/phantom_example.png``.

Each case gets two rows of axial slices (radiological view: patient right on the left, anterior up),
soft-tissue window W400/L40: the plain CT, then the same slices with the labels overlaid (organs filled,
lesions outlined in white). Also prints the generation time per case.

    python benchmarks/make_phantom_figure.py [--out docs/phantom_example.png] [--seed 0] [--cases 0,3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from samadapt.data.phantoms import generate_phantom

# raw label value -> RGB
COLOURS = {
    1: (190, 90, 60), 2: (150, 70, 200), 3: (240, 200, 40), 4: (250, 150, 30), 5: (60, 190, 90),
    6: (240, 110, 180), 7: (230, 30, 30), 8: (50, 110, 240), 9: (40, 210, 210),
    10: (255, 255, 255), 11: (255, 255, 255), 12: (255, 255, 255), 13: (255, 255, 255),
}
LESIONS = (10, 11, 12, 13)


def window(image: np.ndarray, level: float = 40.0, width: float = 400.0) -> np.ndarray:
    """HU ``(Y, X)`` -> uint8 grey ``(Y, X)``."""
    lo = level - width / 2
    return np.clip((image.astype(np.float32) - lo) / width * 255.0, 0, 255).astype(np.uint8)


def overlay(grey: np.ndarray, label: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Grey ``(Y, X)`` uint8 and raw labels ``(Y, X)`` -> RGB ``(Y, X, 3)`` uint8: organs tinted, lesions outlined."""
    rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=2)
    for value, colour in COLOURS.items():
        mask = label == value
        if not mask.any():
            continue
        if value in LESIONS:
            edge = mask & ~ndimage.binary_erosion(mask)
            rgb[edge] = colour
        else:
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, np.float32)
    return rgb.astype(np.uint8)


def pick_slices(label: np.ndarray, fractions: str | None) -> list[int]:
    """Slice indices: the given fractions of the height, or by default four levels found from the labels
    (lower kidneys, most pancreas, most spleen, just below the liver dome)."""
    Z = label.shape[0]
    if fractions:
        return [min(Z - 1, int(round(float(f) * (Z - 1)))) for f in fractions.split(",")]

    def slices_with(*values: int) -> np.ndarray:
        return np.flatnonzero(np.isin(label, values).any(axis=(1, 2)))

    def most(*values: int) -> int:
        return int(np.argmax(np.isin(label, values).sum(axis=(1, 2))))

    kidneys, liver = slices_with(3, 4, 11, 12), slices_with(1, 10)
    low = int(np.percentile(kidneys, 25)) if kidneys.size else Z // 5
    top = int(liver.max()) - 3 if liver.size else 4 * Z // 5
    return [low, most(6, 13), most(2), max(0, min(Z - 1, top))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parents[1] / "docs" / "phantom_example.png"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", default="0,3", help="comma-separated case indices")
    parser.add_argument("--slices", default=None,
                        help="slice positions as fractions of the height (default: kidneys, pancreas, hilum, dome)")
    parser.add_argument("--zoom", type=int, default=2)
    args = parser.parse_args()

    rows, titles = [], []
    for index in (int(c) for c in args.cases.split(",")):
        start = time.perf_counter()
        case = generate_phantom(np.random.default_rng([args.seed, index]))
        print(f"case {index}: {time.perf_counter() - start:.2f} s, grid {case.image.shape} (Z, Y, X)")
        plain, tinted = [], []
        for z in pick_slices(case.label, args.slices):
            grey = window(case.image[z])
            plain.append(np.repeat(grey[..., None], 3, axis=2))
            tinted.append(overlay(grey, case.label[z]))
            for tile in (plain[-1], tinted[-1]):  # 1-px separator
                tile[:, -1] = 40
        rows += [np.concatenate(plain, axis=1), np.concatenate(tinted, axis=1)]
        titles.append((index, pick_slices(case.label, args.slices)))
    montage = np.concatenate(rows, axis=0)
    picture = Image.fromarray(montage).resize((montage.shape[1] * args.zoom, montage.shape[0] * args.zoom),
                                              Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    for r, (index, slices) in enumerate(titles):
        for c, z in enumerate(slices):
            draw.text((c * case.image.shape[2] * args.zoom + 4, 2 * r * case.image.shape[1] * args.zoom + 4),
                      f"seed {args.seed} case {index} z={z}", fill=(255, 255, 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
