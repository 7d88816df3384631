"""Audit (session 30) of the models other than EfficientPose-I and SimplePose, through extract on real LSP crops.

- A model card given with ``--model-card`` for a TFLite file: docs/model-cards.md (and extract's own warning) say its
  ``crop``, ``target_sigma`` and ``ccnet`` are followed; before, the TFLite adapter never carried the card, so the
  store was cropped with padding 1.25 and σ̂ used the kind's default width whatever the card said.
- EfficientPose RT and II: their built-in cards gave the target width 1.0 heatmap px inferred for EfficientPose-I's
  32×32 maps. RT's 28×28 maps are narrower (fitted widths: 5th percentile 0.91 px), so about half of RT's σ̂ came
  out exactly 0; II's 46×46 maps are wider (1.54 px), so its σ̂ was inflated (closed form −2.4 AP against raw on
  300 LSP test people, −0.4 with the scaled width). The width now scales with the map: 0.875 / 1.0 / 1.4375.
- The EfficientPose cards named the input ``input``; the graphs' input is ``input_res1``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from posecal.cli import main


@pytest.fixture(scope="module")
def lsp12(tmp_path_factory):
    """LSP test images 1001–1012 as COCO JSON (via posecal convert)."""
    from conftest import shared_path

    joints, images = shared_path("data", "lsp", "joints.mat"), shared_path("data", "lsp", "images")
    d = tmp_path_factory.mktemp("lsp12")
    full = d / "lsp_test.json"
    assert main(["convert", "lsp", str(joints), "--images", str(images), "--split", "test", "--out", str(full)]) == 0
    g = json.loads(full.read_text())
    g["images"], g["annotations"] = g["images"][:12], g["annotations"][:12]
    out = d / "lsp12.json"
    out.write_text(json.dumps(g))
    return out, images


def _extract(model, data, images, out, *extra):
    return main(["extract", "--model", str(model), "--data", str(data), "--images", str(images), "--out", str(out),
                 "--threads", "1", *extra])


def test_a_tflite_models_card_crop_and_target_sigma_are_followed(shared, lsp12, tmp_path):
    from posecal.models.cards import BUILTIN_CARDS
    from posecal.models.store import FeatureStore

    data, images = lsp12
    model = shared("models", "efficientpose", "EfficientPoseRT.tflite")
    card = dict(BUILTIN_CARDS["EfficientPoseRT"], name="my-rt", target_sigma=0.5,
                crop={"padding": 1.5, "aspect": "input"})
    (tmp_path / "card.json").write_text(json.dumps(card))
    assert _extract(model, data, images, tmp_path / "S", "--model-card", str(tmp_path / "card.json")) == 0
    meta = json.loads((tmp_path / "S" / "meta.json").read_text())
    assert meta["sigma_hat"]["target_sigma_heatmap_px"] == 0.5
    assert meta["crop"]["padding"] == 1.5 and meta["model_card"] == "my-rt"
    # the crop really is the padded one: image px per input px grows by 1.5 / 1.25 against the default crop
    assert _extract(model, data, images, tmp_path / "D") == 0
    a, b = FeatureStore.open(tmp_path / "S"), FeatureStore.open(tmp_path / "D")
    det = [np.abs(np.linalg.det(s.read("crop_transform")[:, :, :2])) for s in (a, b)]
    np.testing.assert_allclose(np.sqrt(det[1] / det[0]), 1.5 / 1.25, rtol=1e-9)


def test_efficientpose_target_width_scales_with_the_heatmap(shared, lsp12, tmp_path):
    from posecal.models.cards import BUILTIN_CARDS
    from posecal.models.store import FeatureStore

    assert [BUILTIN_CARDS[n]["target_sigma"] for n in ("EfficientPoseRT", "EfficientPoseI", "EfficientPoseII")] \
        == [0.875, 1.0, 1.4375]
    data, images = lsp12
    assert _extract(shared("models", "efficientpose", "EfficientPoseRT.tflite"), data, images, tmp_path / "S") == 0
    meta = json.loads((tmp_path / "S" / "meta.json").read_text())
    assert meta["sigma_hat"]["target_sigma_heatmap_px"] == 0.875
    sig = FeatureStore.open(tmp_path / "S").read("sigma_hat")
    assert np.isfinite(sig).all()
    # before (width 1.0 on RT's 28×28 maps): about 40 % of σ̂ exactly 0, i.e. no ambiguity information
    assert (sig == 0).mean() < 0.1, (sig == 0).mean()


def test_efficientpose_cards_name_the_real_input(shared):
    from posecal.models.adapters.tflite import TFLiteAdapter
    from posecal.models.cards import BUILTIN_CARDS

    for n in ("EfficientPoseRT", "EfficientPoseI", "EfficientPoseII"):
        ad = TFLiteAdapter(shared("models", "efficientpose", f"{n}.tflite"), num_threads=1)
        inp = ad.graph.g.inputs[0]
        assert BUILTIN_CARDS[n]["input"]["name"] == ad.graph.names[inp]
        assert tuple(BUILTIN_CARDS[n]["input"]["size"]) == ad.input_size
        # the card's heatmap output and the grid σ̂ is measured on
        hm = ad.graph.shape(ad.graph.index[BUILTIN_CARDS[n]["output"]["name"]])
        assert BUILTIN_CARDS[n]["target_sigma"] == hm[1] / 32


def test_movenet_graft_equals_apply_within_1e5_on_real_crops(shared, tmp_path):
    """MoveNet's channels-last features were pooled in float32 over its 64×64 grid: with a head fitted on 60 LSP
    people (folded weights up to ~200), one ŝ of the 86 coco-mini gt crops was 1.24e-5 from ``posecal apply``
    (the contract: ≤ 1e-5). Pooled in float64 as the store pools, the largest difference is 2e-6."""
    import onnxruntime as ort

    from posecal.models.adapters.base import load_adapter
    from posecal.models.adapters.card import prepare_input
    from posecal.models.crop import load_image, warp
    from posecal.models.store import FeatureStore

    mv = shared("models", "movenet", "movenet-thunder.onnx")
    lsp_img, mini = shared("data", "lsp", "images"), shared("data", "coco-mini", "person_keypoints_train2017.json")
    full = tmp_path / "lsp17.json"
    assert main(["convert", "lsp", str(shared("data", "lsp", "joints.mat")), "--images", str(lsp_img), "--split",
                 "train", "--keypoint-set", "coco17", "--out", str(full)]) == 0
    g = json.loads(full.read_text())
    g["images"], g["annotations"] = g["images"][:60], g["annotations"][:60]
    (tmp_path / "train.json").write_text(json.dumps(g))
    assert _extract(mv, tmp_path / "train.json", lsp_img, tmp_path / "TR") == 0
    assert _extract(mv, mini, mini.parent / "train2017", tmp_path / "TE") == 0
    assert main(["fit", "--store", str(tmp_path / "TR"), "--out", str(tmp_path / "H"), "--threads", "1"]) == 0
    assert main(["apply", "--store", str(tmp_path / "TE"), "--head", str(tmp_path / "H"), "--reorder",
                 "--out", str(tmp_path / "cal.json")]) == 0
    assert main(["export", "--model", str(mv), "--head", str(tmp_path / "H"), "--out", str(tmp_path / "g.onnx")]) == 0
    ad = load_adapter(mv, num_threads=1)
    fs = FeatureStore.open(tmp_path / "TE")
    files = {im["id"]: im["file_name"] for im in json.loads(mini.read_text())["images"]}
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"))
    s, c = [], []
    for iid, M, bs in zip(fs.read("image_id"), fs.read("crop_transform"), fs.read("box_score"), strict=True):
        crop = warp(load_image(mini.parent / "train2017" / files[int(iid)]), M, ad.input_size)[None]
        out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {
            "input:0": prepare_input(crop, ad.card["input"]), "box_score": np.array([bs], np.float32)}), strict=True))
        s.append(out["keypoint_confidence"][0])
        c.append(out["instance_confidence"][0])
    cal = json.loads((tmp_path / "cal.json").read_text())
    s_ref = np.array([np.reshape(r["keypoints"], (-1, 3))[:, 2] for r in cal])
    assert np.abs(np.array(s) - s_ref).max() <= 1e-5, np.abs(np.array(s) - s_ref).max()
    assert np.abs(np.array(c) - [r["score"] for r in cal]).max() <= 1e-5
    assert s_ref.std() > 0.05  # the scores vary: the comparison is not between constants
