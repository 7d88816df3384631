"""A model card's crop settings reach every crop: ``crop.aspect`` ``"square"`` (documented in docs/model-cards.md)
and ``crop.padding`` in ``posecal extract`` (gt boxes and detections, and the OKS-NMS crop-box area) and in
``posecal study occlusion``'s crops."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest

from test_hostile_inputs import _run, _write

SP_MODEL = ("models", "simplepose", "ultralight-nano-simplepose.onnx")


@pytest.fixture(scope="module")
def sq(tmp_path_factory):
    """A SimplePose copy (256x192 input) with a user card asking for square crops padded 1.5x, and 2 coco-mini
    images with people."""
    from conftest import shared_path
    from posecal.models.cards import BUILTIN_CARDS

    d = tmp_path_factory.mktemp("sqcard")
    m = onnx.load_model(str(shared_path(*SP_MODEL)))
    m.doc_string = (m.doc_string or "") + "posecal square-crop test copy"
    model = d / "sp_sq.onnx"
    onnx.save_model(m, str(model))
    card = copy.deepcopy(BUILTIN_CARDS["ultralight-nano-simplepose"])
    card["sha256"] = None
    card["crop"] = {"padding": 1.5, "aspect": "square"}
    src = shared_path("data", "coco-mini", "person_keypoints_train2017.json")
    data = json.loads(src.read_text())
    keep = [im for im in data["images"] if any(a["image_id"] == im["id"] and a["num_keypoints"] > 0
                                               and not a["iscrowd"] for a in data["annotations"])][:2]
    ids = {im["id"] for im in keep}
    data = {**data, "images": keep, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    det = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
           for a in data["annotations"] if not a["iscrowd"]]
    return {"dir": d, "model": model, "card": _write(d / "card.json", card), "data": _write(d / "data.json", data),
            "det": _write(d / "det.json", det), "images": src.parent / "train2017", "obj": data}


def _crop_extent(M: np.ndarray, W: int = 192, H: int = 256) -> np.ndarray:
    """(N, 2) width and height in image px of the region each (N, 2, 3) affine maps onto the W x H input."""
    return np.stack([W / M[:, 0, 0], H / M[:, 1, 1]], 1)


@pytest.mark.parametrize("boxes", [False, True])
def test_square_aspect_and_padding_of_a_card_shape_the_crops(sq, boxes):
    from posecal.models.store import FeatureStore
    from posecal.theory.heatmap import topdown_crop_box

    out = sq["dir"] / f"S{int(boxes)}"
    rc, _, err = _run(["extract", "--model", sq["model"], "--model-card", sq["card"], "--data", sq["data"],
                       "--images", sq["images"], "--out", out, *(["--boxes", sq["det"]] if boxes else [])])
    assert rc == 0, err
    fs = FeatureStore.open(out)
    ext = _crop_extent(fs.read("crop_transform"))
    box = fs.read("bbox")
    want = topdown_crop_box(box, (1, 1), 1.5)[:, 2:]  # square, padded 1.5x
    np.testing.assert_allclose(ext, want, rtol=1e-9)
    assert np.allclose(ext[:, 0], ext[:, 1])  # a square region of the image, resized to 192 x 256
    assert fs.meta["crop"]["aspect"] == 1.0 and fs.meta["crop"]["padding"] == 1.5


def test_study_occlusion_crops_follow_the_card(sq):
    """study occlusion's crops are extract's (the card's square aspect and padding)."""
    from posecal.datasets.coco import instances
    from posecal.models.adapters.base import load_adapter
    from posecal.studies._common import crop_instances
    from posecal.theory.heatmap import topdown_crop_box

    ad = load_adapter(sq["model"], model_card=str(sq["card"]))
    insts = instances(sq["obj"])[:2]
    _, Ms = crop_instances(insts, sq["images"], ad.input_size, ad.card)
    want = topdown_crop_box(np.stack([i.bbox for i in insts]), (1, 1), 1.5)[:, 2:]
    np.testing.assert_allclose(_crop_extent(Ms), want, rtol=1e-9)
