"""``rescore --store S --oks-nms``: the crop boxes are the store's own (found by the s30 docs audit).

The OKS-NMS areas are MMPose's ``prod(bbox_scales)``: the detection box widened to the model's input aspect and
padded. ``rescore`` took that aspect from ``--input-size``, default 192 x 256 (SimplePose), even when ``--store``
says the model's crop was square (MoveNet Thunder 256 x 256, EfficientPose), so its OKS-NMS could keep another
set than ``extract``'s did. Now, when ``--input-size`` / ``--padding`` are not given, the store's crop is used.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_hostile_inputs import _run

pytest.importorskip("onnxruntime")

MN = ("models", "movenet", "movenet-thunder.onnx")


def test_oks_nms_areas_are_the_stores_crop_boxes(shared, mini, tmp_path, monkeypatch):
    import posecal.models.nms as nms
    from posecal.models.store import FeatureStore

    data, img, det = mini
    rc, _, err = _run(["extract", "--model", shared(*MN), "--data", data, "--images", img, "--boxes", det,
                       "--out", tmp_path / "S", "--threads", "1"])
    assert rc == 0, err
    store = FeatureStore.open(tmp_path / "S")
    assert store.meta["input_size"] == [256, 256]
    seen = []
    real = nms.oks_nms_per_image

    def spy(*a, **kw):
        seen.append(np.asarray(a[6] if len(a) > 6 else kw["areas"]))
        return real(*a, **kw)

    monkeypatch.setattr(nms, "oks_nms_per_image", spy)
    base = ["rescore", "--store", tmp_path / "S", "--method", "mmpose-bbox_keypoint", "--oks-nms", "0.9"]
    rc, _, err = _run(base + ["--out", tmp_path / "r.json"])
    assert rc == 0, err
    square = nms.crop_box_area(store.read("bbox"), (256, 256), 1.25)
    np.testing.assert_array_equal(seen[-1], square)  # was: the 192 x 256 boxes
    rc, _, err = _run(base + ["--input-size", "192", "256", "--out", tmp_path / "r2.json"])  # given: used
    assert rc == 0, err
    np.testing.assert_array_equal(seen[-1], nms.crop_box_area(store.read("bbox"), (192, 256), 1.25))
    assert not np.array_equal(seen[-1], square)
