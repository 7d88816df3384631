"""Audit s29 (mmpose fixtures): the model-to-dataset joint map compared names exactly, while keypoint-set
recognition and flip pairs compare them case, space and dash insensitively. AI Challenger's own file names its
joints ``"Right Shoulder"``, ``"Head top"``: ``extract --sigmas <AIC sigmas>`` (what the error for an unknown
skeleton advises) then refused a COCO-17 model with "has no joint for any of its 14 keypoints"."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_audit_s28_custom_skeleton import NAMES, SIGMAS, _dataset, _model
from test_hostile_inputs import _run


def test_joint_map_is_case_space_and_dash_insensitive():
    from posecal.models.adapters.joints import joint_map

    model = ["nose", "left_shoulder", "right_shoulder", "left_hip"]
    data = ["Right Shoulder", "Left-Shoulder", "NOSE", "Head top", "Left Hip"]
    assert joint_map(model, data, allow_missing=True).tolist() == [2, 1, 0, -1, 3]
    # LSP's neck is MPII's upper_neck, whatever the spelling
    assert joint_map(["Upper Neck", "head_top"], ["Neck", "Head-Top"]).tolist() == [0, 1]


def test_extract_maps_differently_spelled_names(tmp_path):
    """Data names ``NOSE``, ``left_ear``, ``Right Ear`` and the model card's ``nose``, ``Left Ear``, ``right-ear``
    are the same joints: every keypoint gets the model's score (none is left at 0 as missing)."""
    data_names = ["NOSE", "left_ear", "Right Ear", "尾巴-TIP"]
    data = _dataset(tmp_path, data_names, n_images=2)
    model, card = _model(tmp_path, NAMES)
    store = tmp_path / "S"
    rc, _, err = _run(["extract", "--model", model, "--model-card", card, "--data", data, "--images",
                       tmp_path / "images", "--out", store, "--sigmas", *map(str, SIGMAS)])
    assert rc == 0, err
    preds = json.loads((store / "predictions.json").read_text(encoding="utf-8"))
    scores = np.array([p["keypoints"][2::3] for p in preds])
    assert scores.shape == (len(preds), 4) and (scores != 0).all(), scores  # a missing joint scores 0
    meta = json.loads((store / "meta.json").read_text(encoding="utf-8"))
    assert meta["keypoint_names"] == data_names


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))
