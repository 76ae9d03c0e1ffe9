"""Synthetic shape corpus: determinism, prefix property, instance numbering, grey images, visible objects."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from samadapt.data.shapes import generate_corpus, generate_shape_image

SIZE = 64


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray]:
    return generate_corpus(20, seed=3, size=SIZE)


def _is_grey(image: np.ndarray) -> bool:
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())


def test_corpus_dtypes_and_shapes(corpus):
    images, instances = corpus
    assert images.shape == (20, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert instances.shape == (20, SIZE, SIZE) and instances.dtype == np.uint8
    single = generate_shape_image(np.random.default_rng(0), size=96)
    assert single.image.shape == (96, 96, 3) and single.image.dtype == np.uint8
    assert single.instances.shape == (96, 96) and single.instances.dtype == np.uint8


def test_image_depends_only_on_seed_and_index(corpus):
    images, instances = corpus
    for i in (0, 7, 19):
        again = generate_shape_image(np.random.default_rng([3, i]), size=SIZE)
        np.testing.assert_array_equal(again.image, images[i])
        np.testing.assert_array_equal(again.instances, instances[i])
    other_images, _ = generate_corpus(2, seed=4, size=SIZE)
    assert not np.array_equal(other_images[0], images[0])
    assert not np.array_equal(images[0], images[1])


def test_shorter_corpus_is_a_prefix_of_a_longer_one():
    short_images, short_instances = generate_corpus(3, seed=11, size=SIZE)
    long_images, long_instances = generate_corpus(5, seed=11, size=SIZE)
    np.testing.assert_array_equal(short_images, long_images[:3])
    np.testing.assert_array_equal(short_instances, long_instances[:3])


def test_progress_is_called_once_per_image():
    calls = []
    generate_corpus(3, seed=0, size=SIZE, progress=calls.append)
    assert calls == [1, 1, 1]


def test_instances_are_numbered_without_gaps_and_above_min_area(corpus):
    _, instances = corpus
    for inst in instances:
        labels = set(np.unique(inst).tolist()) - {0}
        k = int(inst.max())
        assert k >= 1
        assert labels == set(range(1, k + 1))
        assert np.bincount(inst.ravel())[1:].min() >= 80  # default min_area


def test_min_area_and_object_count_are_honoured():
    for seed in range(4):
        sample = generate_shape_image(np.random.default_rng(seed), size=96, n_objects=(2, 3), min_area=150)
        k = int(sample.instances.max())
        assert k <= 3
        assert set(np.unique(sample.instances).tolist()) - {0} == set(range(1, k + 1))
        if k:
            assert np.bincount(sample.instances.ravel())[1:].min() >= 150


def test_some_images_are_grey_with_the_default_fraction(corpus):
    images, _ = corpus
    grey = [_is_grey(image) for image in images]
    assert 1 <= sum(grey) <= 15  # 35% of 20 on average; this seed gives 8
    assert not all(grey)


def test_grey_fraction_extremes():
    for i in range(4):
        all_grey = generate_shape_image(np.random.default_rng([5, i]), size=SIZE, grey_fraction=1.0)
        assert _is_grey(all_grey.image)
        colour = generate_shape_image(np.random.default_rng([5, i]), size=SIZE, grey_fraction=0.0)
        assert not _is_grey(colour.image)


def test_objects_differ_from_their_surroundings(corpus):
    images, instances = corpus
    contrasts = []
    for image, inst in zip(images, instances, strict=True):
        pixels = image.astype(np.float64)
        for k in range(1, int(inst.max()) + 1):
            mask = inst == k
            ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
            if ring.any():
                contrasts.append(np.abs(pixels[mask].mean(0) - pixels[ring].mean(0)).mean())
    assert len(contrasts) > 50
    assert np.mean(contrasts) > 25  # measured ~54 grey levels
    assert np.median(contrasts) > 20


def test_mostly_hidden_objects_lose_their_label():
    """Requiring objects to be fully visible keeps a subset of the objects kept when any visibility will do."""
    dropped = 0
    for i in range(6):
        lenient = generate_shape_image(np.random.default_rng([7, i]), size=SIZE, min_visible_fraction=0.0)
        strict = generate_shape_image(np.random.default_rng([7, i]), size=SIZE, min_visible_fraction=1.0)
        np.testing.assert_array_equal(lenient.image, strict.image)  # same picture, fewer labels
        assert ((strict.instances > 0) <= (lenient.instances > 0)).all()
        assert strict.instances.max() <= lenient.instances.max()
        dropped += int(lenient.instances.max()) - int(strict.instances.max())
    assert dropped > 0
