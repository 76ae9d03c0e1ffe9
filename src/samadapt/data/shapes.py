"""A synthetic "segment anything" corpus: many textured objects per image on cluttered backgrounds.

This is the pretraining data of samadapt's small foundation model. It is deliberately *not* medical:
random shapes (ellipses, rotated rectangles, star polygons, smooth blobs, thin curved tubes, rings) with
random colour, texture and contrast, occluding each other, on smooth multi-scale noise with unlabelled
clutter. A model pretrained on it segments "things" generically and meets CT with a real domain gap, as SAM
does.

Frames: images are ``SxSx3`` uint8; instance maps are ``SxS`` uint8 where value ``k >= 1`` is the visible
part of object ``k`` (later objects occlude earlier ones) and 0 is background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

SHAPE_KINDS = ("ellipse", "rectangle", "polygon", "blob", "tube", "ring")


@dataclass
class ShapeImage:
    """One corpus image: ``image`` SxSx3 uint8, ``instances`` SxS uint8 (0 background, k = object k)."""

    image: np.ndarray
    instances: np.ndarray


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise ``SxS`` float32 with correlation length ~``scale`` pixels."""
    small = max(2, int(size / scale))
    coarse = rng.standard_normal((small, small)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
    return (field - field.mean()) / (field.std() + 1e-6)


def _shape_mask(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """A boolean ``SxS`` mask of one random shape of ``kind``, placed at random."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = size * rng.uniform(0.04, 0.22)
    cx, cy = rng.uniform(0.1, 0.9, size=2) * size
    angle = rng.uniform(0, np.pi)
    ca, sa = np.cos(angle), np.sin(angle)
    u = (xx - cx) * ca + (yy - cy) * sa
    v = -(xx - cx) * sa + (yy - cy) * ca
    aspect = rng.uniform(0.4, 1.0)
    if kind == "ellipse":
        return (u / radius) ** 2 + (v / (radius * aspect)) ** 2 <= 1.0
    if kind == "rectangle":
        return (np.abs(u) <= radius) & (np.abs(v) <= radius * aspect)
    if kind == "ring":
        r = np.sqrt((u / radius) ** 2 + (v / (radius * aspect)) ** 2)
        return (r <= 1.0) & (r >= rng.uniform(0.45, 0.75))
    if kind == "polygon":
        n = int(rng.integers(3, 10))
        theta = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = radius * rng.uniform(0.5, 1.0, n)
        pts = [(float(cx + r * np.cos(t)), float(cy + r * aspect * np.sin(t))) for r, t in zip(rad, theta, strict=True)]
        canvas = Image.new("L", (size, size), 0)
        ImageDraw.Draw(canvas).polygon(pts, fill=1)
        return np.asarray(canvas, dtype=bool)
    if kind == "tube":
        canvas = Image.new("L", (size, size), 0)
        n = int(rng.integers(3, 6))
        step = radius * 0.8
        heading = rng.uniform(0, 2 * np.pi)
        pts = [(float(cx), float(cy))]
        for _ in range(n):
            heading += rng.uniform(-0.8, 0.8)
            pts.append((pts[-1][0] + step * np.cos(heading), pts[-1][1] + step * np.sin(heading)))
        ImageDraw.Draw(canvas).line(pts, fill=1, width=int(rng.integers(4, max(5, int(size * 0.05)))), joint="curve")
        return np.asarray(canvas, dtype=bool)
    # blob: thresholded smooth noise inside a soft disc, largest component
    field = _smooth_noise(rng, size, scale=radius * 0.6)
    disc = np.exp(-((u / radius) ** 2 + (v / (radius * aspect)) ** 2))
    blob = field * 0.5 + disc * 2.0 > 1.0
    labels, count = ndimage.label(blob)
    if count == 0:
        return blob
    sizes = ndimage.sum(blob, labels, index=np.arange(1, count + 1))
    return labels == (1 + int(np.argmax(sizes)))


def _texture(rng: np.random.Generator, size: int, base: np.ndarray, grey: bool) -> np.ndarray:
    """``SxSx3`` float32 texture around colour ``base`` (RGB, 0-255)."""
    tex = np.broadcast_to(base.astype(np.float32), (size, size, 3)).copy()
    style = rng.choice(["flat", "noise", "gradient", "stripes", "mottled"], p=[0.25, 0.25, 0.2, 0.1, 0.2])
    if style == "noise":
        tex += rng.normal(0, rng.uniform(4, 20), size=(size, size, 1)).astype(np.float32)
    elif style == "gradient":
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        a = rng.uniform(-1, 1, 2)
        tex += (rng.uniform(20, 60) * (a[0] * xx + a[1] * yy))[..., None]
    elif style == "stripes":
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        freq, ang = rng.uniform(0.15, 0.6), rng.uniform(0, np.pi)
        tex += (rng.uniform(10, 40) * np.sin(freq * (xx * np.cos(ang) + yy * np.sin(ang))))[..., None]
    elif style == "mottled":
        tex += (rng.uniform(8, 30) * _smooth_noise(rng, size, rng.uniform(3, 12)))[..., None]
    if not grey and rng.random() < 0.3:
        tex += rng.normal(0, 6, size=(1, 1, 3)).astype(np.float32) * _smooth_noise(rng, size, 20)[..., None]
    return tex


def generate_shape_image(
    rng: np.random.Generator,
    size: int = 256,
    n_objects: tuple[int, int] = (5, 14),
    min_area: int = 80,
    grey_fraction: float = 0.35,
    min_visible_fraction: float = 0.5,
) -> ShapeImage:
    """Draw one corpus image.

    Args:
        rng: the only source of randomness.
        size: side ``S`` of the square image.
        n_objects: inclusive range of objects drawn; objects whose visible area ends below ``min_area``
            pixels, or below ``min_visible_fraction`` of their drawn area (mostly hidden behind later
            objects), are dropped and their pixels returned to the background label: they stay in the
            image as unlabelled clutter. Labelled objects are thus whole-ish things, as in SA-1B, not
            slivers whose box says little about them (a measured choice: see docs/model_card_tiny.md).
        grey_fraction: share of images drawn in grey levels (replicated to 3 channels), like CT.

    Returns:
        :class:`ShapeImage` with instances renumbered ``1..K`` in drawing order.
    """
    grey = rng.random() < grey_fraction

    def colour() -> np.ndarray:
        return np.repeat(rng.uniform(0, 255), 3) if grey else rng.uniform(0, 255, 3)

    background = np.zeros((size, size, 3), dtype=np.float32)
    for scale in (64, 16, 4):
        amp = rng.uniform(5, 35) * (1.0 if scale > 4 else 0.4)
        field = _smooth_noise(rng, size, scale)
        if grey:
            background += amp * field[..., None]
        else:
            background += amp * field[..., None] * rng.uniform(0.3, 1.0, 3)
    background += colour()
    image = background
    for _ in range(int(rng.integers(4, 15))):  # unlabelled clutter
        mask = _shape_mask(rng, size, str(rng.choice(SHAPE_KINDS)))
        shrink = ndimage.binary_erosion(mask, iterations=int(rng.integers(0, 6)))
        image[shrink] = image[shrink] * 0.6 + 0.4 * colour()
    instances = np.zeros((size, size), dtype=np.uint8)
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    drawn = np.zeros(256, dtype=np.int64)
    for k in range(1, n + 1):
        kind = str(rng.choice(SHAPE_KINDS, p=[0.22, 0.16, 0.22, 0.24, 0.06, 0.1]))
        mask = _shape_mask(rng, size, kind)
        drawn[k] = int(mask.sum())
        if drawn[k] < min_area:
            continue
        local = image[mask].mean(axis=0)
        delta = rng.uniform(18, 110) * rng.choice([-1.0, 1.0])
        base = np.clip(local + delta, 0, 255) if rng.random() < 0.5 else colour()
        if np.abs(base - local).mean() < 15:  # keep every object visible against its surroundings
            base = np.clip(local + 40 * np.sign(delta), 0, 255)
        tex = _texture(rng, size, base, grey)
        image[mask] = tex[mask]
        instances[mask] = k
    image = ndimage.gaussian_filter(image, sigma=(rng.uniform(0.3, 1.0),) * 2 + (0,))
    sigma = rng.uniform(1, 8)  # sensor noise, shared by the channels of grey images so they stay grey
    image += rng.normal(0, sigma, size=(size, size, 1) if grey else image.shape).astype(np.float32)
    # renumber visible instances 1..K, dropping small and mostly hidden ones
    counts = np.bincount(instances.ravel(), minlength=256)
    remap = np.zeros(256, dtype=np.uint8)
    kept = [k for k in range(1, 256) if counts[k] >= max(min_area, min_visible_fraction * drawn[k])]
    for new, old in enumerate(kept, start=1):
        remap[old] = new
    return ShapeImage(np.clip(image, 0, 255).astype(np.uint8), remap[instances])


def generate_corpus(
    n_images: int, seed: int, size: int = 256, progress=None
) -> tuple[np.ndarray, np.ndarray]:
    """``n_images`` corpus images: (``NxSxSx3`` uint8 images, ``NxSxS`` uint8 instance maps).

    Image ``i`` depends only on ``(seed, i)``, so corpora of different lengths share their prefix.
    """
    images = np.empty((n_images, size, size, 3), dtype=np.uint8)
    instances = np.empty((n_images, size, size), dtype=np.uint8)
    for i in range(n_images):
        sample = generate_shape_image(np.random.default_rng([seed, i]), size=size)
        images[i], instances[i] = sample.image, sample.instances
        if progress is not None:
            progress(1)
    return images, instances
