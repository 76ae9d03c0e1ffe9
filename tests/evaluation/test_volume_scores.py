"""3D scores: stacking per-slice masks at their source positions, spacing in (z, y, x) order, perfect = 1."""

from __future__ import annotations

import numpy as np
import pytest

from samadapt.data.prepared import SliceObject
from samadapt.evaluation.box_protocol import SlicePrediction, box_fill_predictions
from samadapt.evaluation.volume_scores import score_volumes, stack_class_volumes, volume_spacing

S = 32


class FakeMeta:
    """Stands in for a prepared dataset: only ``meta(case_id)`` is read."""

    def __init__(self, **meta) -> None:
        self._meta = {"axis": "axial", "slice_indices": list(range(6)), "valid_hw": [S, S],
                      "pixel_spacing_mm": [1.0, 2.0], "slice_spacing_mm": 5.0, **meta}

    def meta(self, case_id: str) -> dict:
        return dict(self._meta)


def _square(top: int = 8, left: int = 8, side: int = 10) -> np.ndarray:
    mask = np.zeros((S, S), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def _obj(index: int, name: str = "liver", instance: int = 0) -> SliceObject:
    return SliceObject("c0", index, name, 1, instance, (1,), 100, (8, 8, 18, 18))


def _item(index: int, predicted: list[np.ndarray], truth: list[np.ndarray], names: list[str]) -> SlicePrediction:
    objects = [_obj(index, name, instance=i) for i, name in enumerate(names)]
    return SlicePrediction("c0", index, objects, np.stack(predicted), np.stack(truth))


def _cube(slices=(1, 2, 3), shift=(0, 0)) -> list[SlicePrediction]:
    """A 10x10 square on ``slices``, predicted shifted by ``shift`` (rows, columns)."""
    truth = _square()
    pred = np.roll(truth, shift, axis=(0, 1))
    return [_item(i, [pred], [truth], ["liver"]) for i in slices]


def test_perfect_prediction_scores_one() -> None:
    [row] = score_volumes(FakeMeta(), _cube())
    assert row["case_id"] == "c0" and row["class"] == "liver"
    assert row["n_slices"] == 3 and row["voxels"] == 300
    assert row["dice"] == row["iou"] == row["nsd"] == 1.0 and row["hd95"] == 0.0


def test_missing_slice_lowers_dice_by_the_expected_amount() -> None:
    items = _cube(slices=(1, 2, 3, 4))
    items[-1].predicted[:] = False  # the model misses the last of k = 4 slices entirely
    [row] = score_volumes(FakeMeta(), items)
    k = 4
    assert row["dice"] == pytest.approx(2 * (k - 1) / (2 * k - 1))  # 2(k-1)A / ((k-1)A + kA)
    assert row["iou"] == pytest.approx((k - 1) / k)


def test_spacing_is_slice_then_row_then_column() -> None:
    meta = FakeMeta()
    assert volume_spacing(meta.meta("c0")) == (5.0, 1.0, 2.0)
    by_rows = score_volumes(meta, _cube(shift=(1, 0)))[0]["hd95"]
    by_cols = score_volumes(meta, _cube(shift=(0, 1)))[0]["hd95"]
    items = _cube(slices=(1, 2, 3))
    items[-1].predicted[:] = False
    by_slice = score_volumes(meta, items)[0]["hd95"]
    # one step along each axis costs that axis's spacing: rows 1 mm, columns 2 mm, slices 5 mm
    assert (by_rows, by_cols, by_slice) == pytest.approx((1.0, 2.0, 5.0))


def test_gaps_between_source_slices_are_kept_and_padding_cropped() -> None:
    meta = FakeMeta(slice_indices=[0, 2, 4, 6, 8, 10], valid_hw=[24, 20]).meta("c0")
    items = _cube(slices=(0, 1, 3))  # source positions 0, 2, 6
    volumes = stack_class_volumes(meta, items)
    predicted, truth, n_slices = volumes["liver"]
    assert truth.shape == (7, 24, 20) and n_slices == 3
    assert [bool(truth[z].any()) for z in range(7)] == [True, False, True, False, False, False, True]
    assert truth.sum() == 3 * 10 * 10  # the square (rows/cols 8..17) lies inside the valid region


def test_instances_merge_per_class_and_classes_stay_apart() -> None:
    left, right = _square(left=2, side=6), _square(left=20, side=6)
    items = [_item(i, [left, right, _square()], [left, right, _square()], ["kidney", "kidney", "liver"])
             for i in (2, 3)]
    rows = {row["class"]: row for row in score_volumes(FakeMeta(), items)}
    assert set(rows) == {"kidney", "liver"}
    assert rows["kidney"]["voxels"] == 2 * 2 * 36 and rows["kidney"]["dice"] == 1.0


def test_2d_cases_have_no_volumes() -> None:
    assert score_volumes(FakeMeta(axis="2d", slice_indices=[0]), _cube(slices=(0,))) == []


def test_perfect_prediction_on_prepared_phantoms(phantom_prepared) -> None:
    prepared = phantom_prepared
    perfect = [SlicePrediction(p.case_id, p.slice, p.objects, p.truth, p.truth)
               for p in box_fill_predictions(prepared, "test")]
    rows = score_volumes(prepared, perfect)
    [case] = prepared.case_ids("test")
    objects = prepared.objects(case)
    assert {row["class"] for row in rows} == {o.class_name for o in objects}
    for row in rows:
        assert row["dice"] == row["nsd"] == 1.0 and row["hd95"] == 0.0
        of_class = [o for o in objects if o.class_name == row["class"]]
        assert row["voxels"] == sum(o.area for o in of_class)
        assert row["n_slices"] == len({o.slice for o in of_class})
    # the box-fill baseline is imperfect in 3D as well
    fill = score_volumes(prepared, box_fill_predictions(prepared, "test"))
    assert all(0.0 < row["dice"] <= 1.0 for row in fill) and any(row["dice"] < 1.0 for row in fill)
