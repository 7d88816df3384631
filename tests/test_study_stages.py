"""The stages of the occlusion study that need no model: instance selection, perturbation, summaries."""

from __future__ import annotations

import numpy as np
import pytest

from posecal.errors import PosecalInputError
from posecal.keypoints import LSP14
from posecal.studies import occlusion as O


def _data(vis_of_head_top):
    anns = []
    for i, v in enumerate(vis_of_head_top):
        kp = np.tile([10.0, 20.0, 2.0], (14, 1))
        kp[LSP14.names.index("head_top"), 2] = v
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": 100.0,
                     "bbox": [0, 0, 40, 40], "num_keypoints": 14, "keypoints": kp.ravel().tolist()})
    return {"images": [{"id": i + 1, "file_name": f"im{i + 1}.jpg", "width": 64, "height": 64}
                       for i in range(len(anns))],
            "categories": [{"id": 1, "name": "person", "keypoints": list(LSP14.names), "skeleton": []}],
            "annotations": anns}  # fmt: skip


def test_select_instances_keeps_visible_joint_in_file_order():
    sel = O.select_instances(_data([2, 1, 2, 0, 2]), "head_top", (0, 8), limit=2)
    assert [i.image_id for i in sel.insts] == [1, 3]
    assert sel.ks.name == "lsp14" and sel.j == LSP14.names.index("head_top") and sel.radii == [0.0, 8.0]
    assert len(O.select_instances(_data([2, 1, 2, 0, 2]), "head_top", [4], limit=None).insts) == 3
    with pytest.raises(PosecalInputError, match="unknown joint 'nose'"):
        O.select_instances(_data([2]), "nose", (0,), None)
    with pytest.raises(PosecalInputError, match="radii must be >= 0"):
        O.select_instances(_data([2]), "head_top", (0, -1), None)
    with pytest.raises(PosecalInputError, match="radii must be >= 0"):
        O.select_instances(_data([2]), "head_top", (), None)
    with pytest.raises(PosecalInputError, match="no instance has head_top visible"):
        O.select_instances(_data([1, 0]), "head_top", (0,), None)


def test_perturb_matches_the_paste_functions():
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (3, 32, 24, 3), dtype=np.uint8)
    centers = np.array([[5.0, 5.0], [12.0, 16.0], [20.0, 30.0]])
    occ = O.perturb(crops, centers, "occluder", 6, (9, 9, 9))
    for c, p, o in zip(crops, centers, occ, strict=True):
        np.testing.assert_array_equal(o, O.paste_occluder(c, p, 6, (9, 9, 9)))
    bl = O.perturb(crops, centers, "blur", 6, blur_sigma=2.0)
    np.testing.assert_array_equal(bl[1], O.paste_blur(crops[1], centers[1], 6, 2.0))
    np.testing.assert_array_equal(O.perturb(crops, centers, "blur", 0), crops)  # radius 0: untouched
    with pytest.raises(ValueError, match="mode must be one of"):
        O.perturb(crops, centers, "noise", 3)


def test_radius_summary_and_pearson():
    oks = np.array([[0.9, np.nan, 0.5], [0.3, 0.7, 0.1]])
    sc = np.array([[0.8, 0.1, 0.2], [0.4, 0.2, 0.3]])
    point, row = O.radius_summary(8.0, 0, oks, sc, None, None)
    assert point == {"joint_oks": pytest.approx(0.6), "instance_oks": pytest.approx((0.7 + 1.1 / 3) / 2),
                     "raw_confidence": pytest.approx(0.6), "ccnet_confidence": None, "ccnet_visibility": None}
    assert row == {"radius": 8.0, "joint_oks": [0.9, 0.3], "raw_confidence": [0.8, 0.4]}
    s, v = np.array([[0.5, 0, 0], [0.1, 0, 0]]), np.array([[1.0, 0, 0], [0.0, 0, 0]])
    point, row = O.radius_summary(8.0, 0, oks, sc, s, v)
    assert point["ccnet_confidence"] == pytest.approx(0.3) and point["ccnet_visibility"] == pytest.approx(0.5)
    assert row["ccnet_confidence"] == [0.5, 0.1]
    per = {"occluder": [row, dict(row, joint_oks=[0.2, 0.1], raw_confidence=[0.3, 0.3])],
           "blur": [{"radius": 0.0, "joint_oks": [0.5, 0.4], "raw_confidence": [0.7, 0.7]}]}
    corr = O.pearson_vs_joint_oks(per)
    want = np.corrcoef([0.8, 0.4, 0.3, 0.3], [0.9, 0.3, 0.2, 0.1])[0, 1]
    assert corr["occluder_raw_confidence_pearson"] == pytest.approx(want)
    assert corr["occluder_ccnet_confidence_pearson"] == pytest.approx(
        np.corrcoef([0.5, 0.1, 0.5, 0.1], [0.9, 0.3, 0.2, 0.1])[0, 1])
    assert corr["blur_raw_confidence_pearson"] is None  # constant confidence
    assert "blur_ccnet_confidence_pearson" not in corr  # no head rows in that mode
