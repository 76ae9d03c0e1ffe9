import numpy as np
import pytest
from segment_anything.utils.transforms import ResizeLongestSide

from samadapt.data.frame import (
    frame_shape,
    from_model_frame_labels,
    model_frame_spacing,
    to_model_frame_image,
    to_model_frame_labels,
)


def blocky(shape, block, n_values=6, seed=0):
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, n_values, size=(shape[0] // block, shape[1] // block))
    return np.kron(grid, np.ones((block, block), dtype=np.int64)).astype(np.uint16)


def test_frame_shape_matches_sam():
    assert frame_shape(512, 512, 256) == (256, 256)
    assert frame_shape(300, 200, 256) == (256, 171)
    assert frame_shape(101, 122, 1024) == ResizeLongestSide.get_preprocess_shape(101, 122, 1024)


@pytest.mark.parametrize("shape, size", [((512, 384), 256), ((128, 96), 256), ((64, 128), 256),
                                         ((256, 256), 256)])
def test_label_round_trip_exact_for_blocky_maps(shape, size):
    labels = blocky(shape, 16)
    framed = to_model_frame_labels(labels, size)
    assert framed.shape == (size, size) and framed.dtype == np.uint16
    new_h, new_w = frame_shape(*shape, size)
    assert not framed[new_h:].any() and not framed[:, new_w:].any()
    assert set(np.unique(framed)) <= set(np.unique(labels)) | {0}
    back = from_model_frame_labels(framed, shape)
    assert back.dtype == labels.dtype
    np.testing.assert_array_equal(back, labels)


def test_label_round_trip_non_integer_scale_only_moves_edges():
    labels = blocky((300, 200), 50)
    back = from_model_frame_labels(to_model_frame_labels(labels, 256), labels.shape)
    assert np.mean(back == labels) > 0.99


def test_label_stack_and_bool_masks():
    stack = np.stack([blocky((128, 96), 16, seed=s) for s in range(3)])
    framed = to_model_frame_labels(stack, 256)
    assert framed.shape == (3, 256, 256)
    np.testing.assert_array_equal(from_model_frame_labels(framed, (128, 96)), stack)
    mask = framed[0] > 2
    back = from_model_frame_labels(mask, (128, 96))
    assert back.dtype == bool and np.array_equal(back, stack[0] > 2)


def test_image_resize_is_sams_and_stays_uint8():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(300, 200, 3), dtype=np.uint8)
    framed = to_model_frame_image(image, 256)
    assert framed.shape == (256, 256, 3) and framed.dtype == np.uint8
    expected = ResizeLongestSide(256).apply_image(image)
    np.testing.assert_array_equal(framed[:256, :171], expected)
    assert not framed[:, 171:].any()
    grey = to_model_frame_image(image[..., 0], 256)
    assert grey.shape == (256, 256) and grey.dtype == np.uint8
    assert grey.nbytes == 256 * 256
    np.testing.assert_array_equal(grey, framed[..., 0])


def test_image_rejects_non_uint8():
    with pytest.raises(ValueError):
        to_model_frame_image(np.zeros((10, 10), dtype=np.float32), 256)


def test_model_frame_spacing_anisotropic():
    sy, sx = model_frame_spacing((0.5, 1.0), (400, 200), 256)
    assert frame_shape(400, 200, 256) == (256, 128)
    assert sy == pytest.approx(0.5 * 400 / 256) and sx == pytest.approx(1.0 * 200 / 128)
