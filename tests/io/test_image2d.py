"""2D images and masks: every real PNG slice and mask, Pillow modes, bad files, atomic mask writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samadapt.errors import InputFileError
from samadapt.io.image2d import read_image_2d, read_mask_2d, write_mask_2d

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
PNG = REAL / "ct_slices_png"
# image stem -> (H, W), measured; the README's "AMOS abdomen 512x512" holds for two of the three AMOS slices.
IMAGE_SHAPES = {
    "amos_0004_75": (512, 512),
    "amos_0006_90": (512, 512),
    "amos_0507_31": (290, 320),
    "s0114_111": (181, 258),
    "s0619_32": (155, 225),
}


@pytest.fixture(scope="module")
def png() -> Path:
    if not PNG.is_dir():
        pytest.skip(f"real data not found at {PNG}")
    return PNG


def test_every_real_slice_reads_as_grey_uint8(png: Path) -> None:
    images = sorted((png / "images").glob("*.png"))
    assert {p.stem for p in images} == set(IMAGE_SHAPES)
    for path in images:
        array = read_image_2d(path)
        assert array.shape == IMAGE_SHAPES[path.stem], path.name  # saved as RGB with equal channels
        assert array.dtype == np.uint8
        raw = np.asarray(Image.open(path))
        assert raw.shape == (*IMAGE_SHAPES[path.stem], 3)
        np.testing.assert_array_equal(array, raw[..., 0])
        assert array.min() == 0 and array.max() >= 200 and array.std() > 20  # windowed CT, not blank


def test_every_real_mask_reads_as_bool_on_its_image_grid(png: Path) -> None:
    masks = sorted((png / "masks").glob("*.png"))
    assert len(masks) == 30
    for path in masks:
        stem = next(s for s in sorted(IMAGE_SHAPES, key=len, reverse=True) if path.name.startswith(s + "_"))
        mask = read_mask_2d(path)
        assert mask.dtype == np.bool_
        assert mask.shape == IMAGE_SHAPES[stem], path.name
        assert 0 < mask.sum() < mask.size, path.name
        np.testing.assert_array_equal(mask, np.asarray(Image.open(path)) == 255)


def test_real_masks_fall_on_anatomy(png: Path) -> None:
    image = read_image_2d(png / "images/amos_0006_90.png")
    liver = read_mask_2d(png / "masks/amos_0006_90_liver_000.png")
    aorta = read_mask_2d(png / "masks/amos_0006_90_aorta_000.png")
    assert not np.any(liver & aorta)
    assert liver.sum() > aorta.sum()
    assert image[liver].mean() > image[~liver].mean()  # soft tissue is brighter than the air around the body


# ---------------------------------------------------------------------------------------- Pillow modes


def _save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    image.save(path, **kwargs)
    return path


def test_grey_and_colour_modes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    colour = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)

    out = read_image_2d(_save(Image.fromarray(grey), tmp_path / "grey.png"))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, grey)

    out = read_image_2d(_save(Image.fromarray(colour), tmp_path / "colour.png"))
    assert out.shape == (7, 9, 3)
    np.testing.assert_array_equal(out, colour)

    rgba = np.concatenate([colour, np.zeros((7, 9, 1), np.uint8)], axis=-1)  # fully transparent
    out = read_image_2d(_save(Image.fromarray(rgba), tmp_path / "rgba.png"))
    np.testing.assert_array_equal(out, colour)  # alpha dropped, colours kept

    grey_alpha = Image.fromarray(grey).convert("LA")
    np.testing.assert_array_equal(read_image_2d(_save(grey_alpha, tmp_path / "la.png")), grey)

    rgb_grey = np.repeat(grey[..., None], 3, axis=-1)
    out = read_image_2d(_save(Image.fromarray(rgb_grey), tmp_path / "rgb_grey.png"))
    assert out.shape == (7, 9)
    np.testing.assert_array_equal(out, grey)

    np.testing.assert_array_equal(read_image_2d(_save(Image.fromarray(grey), tmp_path / "grey.bmp")), grey)


def test_palette_becomes_rgb(tmp_path: Path) -> None:
    palette_image = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    palette_image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    out = read_image_2d(_save(palette_image, tmp_path / "palette.png"))
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 1], [255, 0, 0])
    np.testing.assert_array_equal(out[1, 0], [0, 0, 255])
    np.testing.assert_array_equal(read_mask_2d(tmp_path / "palette.png"), [[False, True], [True, True]])


def test_sixteen_bit_grey_stays_uint16(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256], [1000, 40000, 65535]], np.uint16)
    for name in ("ct16.png", "ct16.tif"):
        out = read_image_2d(_save(Image.fromarray(values), tmp_path / name))
        assert out.dtype == np.uint16, name
        np.testing.assert_array_equal(out, values)


def test_one_bit_float_and_jpeg(tmp_path: Path) -> None:
    bits = np.array([[True, False], [False, True]])
    out = read_image_2d(_save(Image.fromarray(bits), tmp_path / "bits.png"))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, bits * 255)

    field = np.array([[-1.5, 0.25], [3.0, 1e4]], np.float32)
    out = read_image_2d(_save(Image.fromarray(field), tmp_path / "field.tif"))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, field)

    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    out = read_image_2d(_save(Image.fromarray(ramp).convert("RGB"), tmp_path / "ramp.jpg", quality=95))
    assert out.shape == ramp.shape and out.dtype == np.uint8  # a grey JPEG saved as RGB comes back grey
    assert np.abs(out.astype(int) - ramp).max() <= 8  # lossy


def test_rgb_mask_counts_any_channel(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[1, 2, 0] = 200
    rgb[3, 4, 2] = 1
    mask = read_mask_2d(_save(Image.fromarray(rgb), tmp_path / "mask_rgb.png"))
    assert mask.dtype == np.bool_ and mask.shape == (4, 5)
    assert set(zip(*np.nonzero(mask), strict=True)) == {(1, 2), (3, 4)}


# ------------------------------------------------------------------------------------------ bad files


def test_unreadable_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="absent.png: no such image file"):
        read_image_2d(tmp_path / "absent.png")

    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    with pytest.raises(InputFileError, match="notes.png: cannot be read as an image"):
        read_image_2d(text)

    noise = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    full = _save(Image.fromarray(noise), tmp_path / "full.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputFileError, match="cut.png: cannot be read as an image") as info:
        read_mask_2d(cut)
    assert "\n" not in str(info.value)

    frames = [Image.fromarray(noise), Image.fromarray(255 - noise)]
    stack = tmp_path / "stack.tif"
    frames[0].save(stack, save_all=True, append_images=frames[1:])
    with pytest.raises(InputFileError, match="stack.tif: holds 2 frames"):
        read_image_2d(stack)


# -------------------------------------------------------------------------------------------- writing


def test_write_mask_round_trip(tmp_path: Path) -> None:
    mask = np.zeros((6, 8), bool)
    mask[1:4, 2:7] = True
    path = write_mask_2d(mask, tmp_path / "sub" / "mask.png")
    raw = Image.open(path)
    assert raw.mode == "L"
    assert set(np.unique(np.asarray(raw)).tolist()) == {0, 255}
    np.testing.assert_array_equal(read_mask_2d(path), mask)
    write_mask_2d(mask.astype(np.uint8) * 7, path)  # nonzero = foreground; overwrites
    np.testing.assert_array_equal(read_mask_2d(path), mask)
    assert [p.name for p in path.parent.iterdir()] == ["mask.png"]


def test_write_mask_rejects_bad_input_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HxW"):
        write_mask_2d(np.zeros((2, 3, 3), bool), tmp_path / "m.png")
    with pytest.raises(ValueError, match="PNG"):
        write_mask_2d(np.zeros((2, 3), bool), tmp_path / "m.jpg")
    blocked = tmp_path / "blocked.png"
    blocked.mkdir()  # the final rename onto a folder fails after the PNG was written
    with pytest.raises(InputFileError, match="blocked.png: cannot be written"):
        write_mask_2d(np.ones((2, 3), bool), blocked)
    assert [p.name for p in tmp_path.iterdir()] == ["blocked.png"]
    assert list(blocked.iterdir()) == []
