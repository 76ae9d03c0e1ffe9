from pathlib import Path

import numpy as np
import pytest

from samadapt.data.windowing import (
    CT_PRESETS,
    Window,
    foreground_percentiles,
    normalize_percentiles,
    parse_window,
    window_ct,
)
from samadapt.errors import ConfigError

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


def test_window_ct_maps_window_edges_and_clips():
    hu = np.array([-1000, -160, 40, 240, 3000], dtype=np.int16)
    out = window_ct(hu, 400, 40)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 128, 255, 255]


def test_window_ct_is_monotonic_and_keeps_shape():
    hu = np.linspace(-200, 300, 2 * 3 * 50).reshape(2, 3, 50)
    out = window_ct(hu, *CT_PRESETS["liver"])
    assert out.shape == hu.shape
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)


def test_normalize_percentiles_ignores_zero_background():
    rng = np.random.default_rng(0)
    volume = np.zeros((4, 32, 32), dtype=np.float32)
    volume[:, 8:24, 8:24] = rng.uniform(100, 200, size=(4, 16, 16))
    low, high = foreground_percentiles(volume, 0.5, 99.5)
    assert 100 <= low < 102 and 198 < high <= 200
    out = normalize_percentiles(volume)
    assert out.dtype == np.uint8
    assert np.all(out[:, :8] == 0)
    assert out[:, 8:24, 8:24].min() == 0 and out[:, 8:24, 8:24].max() == 255
    assert np.mean(out[:, 8:24, 8:24] > 0) > 0.99


def test_normalize_percentiles_all_zero_gives_zero():
    assert not normalize_percentiles(np.zeros((3, 3))).any()


@pytest.mark.parametrize("spec, expected", [
    ("abdomen", ("ct", 400.0, 40.0)), ("LUNG", ("ct", 1500.0, -600.0)), ("bone", ("ct", 1800.0, 400.0)),
    ("brain", ("ct", 80.0, 40.0)), ("soft_tissue", ("ct", 350.0, 50.0)), ("350,-20", ("ct", 350.0, -20.0)),
    (" 1500 , -600 ", ("ct", 1500.0, -600.0)),
])
def test_parse_window_presets_and_custom(spec, expected):
    window = parse_window(spec)
    assert (window.kind, window.width, window.level) == expected


def test_parse_window_auto_by_modality():
    assert parse_window("auto").kind == "auto"
    ct = parse_window("auto", modality="CT")
    assert (ct.kind, ct.width, ct.level) == ("ct", 400.0, 40.0)
    mr = parse_window("auto", modality="MR", percentiles=(1, 99))
    assert (mr.kind, mr.lower, mr.upper) == ("percentiles", 1.0, 99.0)
    assert parse_window("auto").resolve("mri").kind == "percentiles"


@pytest.mark.parametrize("spec", ["", "abdomenn", "0,40", "-5,40", "a,b", "1,2,3", "nan,3"])
def test_parse_window_rejects_bad_specs(spec):
    with pytest.raises(ConfigError):
        parse_window(spec)


def test_bad_percentiles_rejected():
    with pytest.raises(ConfigError):
        parse_window("auto", percentiles=(99, 1))


def test_window_none_passes_uint8_and_rejects_other():
    x = np.arange(10, dtype=np.uint8)
    assert Window("none").apply(x) is not None and np.array_equal(Window("none").apply(x), x)
    with pytest.raises(ConfigError):
        Window("none").apply(x.astype(np.int16))
    with pytest.raises(ConfigError):
        Window("auto").apply(x)


def test_real_ct_abdomen_window():
    path = REAL / "ct_abdomen_nifti" / "example_ct_sm.nii.gz"
    if not path.exists():
        pytest.skip("real data absent")
    from samadapt.io.volume import read_volume

    hu = read_volume(path).array
    out = parse_window("auto", modality="CT").apply(hu)
    assert out.shape == hu.shape and out.dtype == np.uint8
    # air saturates at 0, cortical bone at 255, soft tissue in between
    assert out[hu < -500].max() == 0
    assert out[hu > 500].min() == 255
    soft = out[(hu > 0) & (hu < 80)]
    assert soft.size > 0 and 100 < soft.mean() < 200
