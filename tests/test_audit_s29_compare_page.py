"""Audit s29: the keypoint-threshold table of ``posecal compare --report`` when a file reaches no target.

A file whose keypoint confidence reaches none of the 90/95/98 % targets keeps 0 with no threshold; the page
showed ``0.0000 (≥ n/a)`` (and ``n/a (≥ n/a)`` for a file without keypoints)."""

from __future__ import annotations

import numpy as np
import pytest

from posecal.calibration.compare import compare
from posecal.calibration.compare_report import _threshold_table

pytestmark = pytest.mark.filterwarnings("ignore::posecal.errors.PosecalWarning")

K = 17


def _person(x0: float) -> list[float]:
    return [v for k in range(K) for v in (x0 + 3.0 * k, 50.0 + 2.0 * k, 2.0)]


def _gt() -> dict:
    return {"images": [{"id": i, "width": 640, "height": 480} for i in (1, 2)],
            "categories": [{"id": 1, "name": "person", "keypoints": [f"k{k}" for k in range(K)], "skeleton": []}],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "area": 4000.0,
                             "bbox": [100.0, 50.0, 60.0, 40.0], "num_keypoints": K, "keypoints": _person(100.0)}
                            for i in (1, 2)]}


def _det(img: int, dx: float, scores: list[float]) -> dict:
    kp = _person(100.0 + dx)
    for k in range(K):
        kp[3 * k + 2] = scores[k]
    return {"image_id": img, "category_id": 1, "keypoints": kp, "score": 0.9}


def test_no_threshold_reads_as_such_not_ge_na():
    good = [_det(1, 0.0, [0.9] * K), _det(2, 0.0, [0.8] * K)]
    # B: one person right, one 30 px off, every keypoint at the same confidence: half correct at any threshold
    flat = [_det(1, 0.0, [0.5] * K), _det(2, 30.0, [0.5] * K)]
    r = compare(_gt(), good, flat, resamples=5, sigmas=np.full(K, 0.05))
    rows = r.keypoint_thresholds["targets"]
    assert all(row["b"]["kept"] == 0.0 and row["b"]["threshold"] is None for row in rows)
    page = _threshold_table(r.keypoint_thresholds, "95")
    assert "&ge; n/a" not in page
    assert page.count("0.0000 (no threshold reaches it)") == len(rows)
    assert page.count("1.0000 (&ge; 0.8000)") == len(rows)  # A: both people right


def test_file_without_keypoints_reads_na():
    good = [_det(1, 0.0, [0.9] * K)]
    r = compare(_gt(), good, [], resamples=5, sigmas=np.full(K, 0.05))
    page = _threshold_table(r.keypoint_thresholds, "95")
    assert "&ge; n/a" not in page
    assert "<td>n/a</td>" in page
