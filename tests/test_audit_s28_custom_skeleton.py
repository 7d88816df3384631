"""Audit: a user with their own model and their own skeleton (an 8-keypoint mouse, a 1-keypoint set, unicode
and spaced names), a random ONNX heatmap model with a card naming those joints.

Regressions (each failed before the fix):

* ``posecal extract`` refused every keypoint set posecal does not know ("24 keypoint values (8 keypoints) match no
  keypoint set"), so ``fit``/``apply``/``export``/``study`` could not be reached with one, although ``evaluate``
  and ``rescore`` take ``--sigmas`` and a card may list its own joint names: ``extract --sigmas`` (and ``study
  occlusion --sigmas``) now take the data's own names with those OKS sigmas, and the store and head carry them
  (``keypoint_set: custom``, ``keypoint_names``, ``keypoint_sigmas``);
* ``rescore --store`` of such a store did not read the sigmas the store carries;
* a head fitted on one custom skeleton was applied to a store of another with the same keypoint count;
* ``--flip`` (``posecal.models.adapters.joints.flip_index``) paired ``left_ear``/``right_ear`` but not a card's
  ``"Left Ear"``/``"Right Ear"``, so the flip test averaged a left joint with the mirrored crop's left joint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_hostile_inputs import _one_error, _run

NAMES = ["nose", "Left Ear", "right-ear", "尾巴 tip"]
SIGMAS = [0.03, 0.05, 0.05, 0.1]


def test_flip_index_pairs_names_case_space_and_dash_insensitively():
    from posecal.models.adapters.joints import flip_index

    assert flip_index(["Left Ear", "Right Ear", "nose", "left-hip", "right hip"]).tolist() == [1, 0, 2, 4, 3]
    assert flip_index(["left_ear", "right_ear"]).tolist() == [1, 0]  # as before


def test_custom_keypoint_set_from_meta():
    from posecal.keypoints import custom_keypoint_set, keypoint_set_from_meta

    ks = keypoint_set_from_meta({"keypoint_set": "custom", "keypoint_names": NAMES, "keypoint_sigmas": SIGMAS})
    assert ks.names == tuple(NAMES) and ks.sigmas.tolist() == SIGMAS and ks.flip_index().tolist() == [0, 2, 1, 3]
    assert keypoint_set_from_meta({"keypoint_set": "coco17"}).num_keypoints == 17
    with pytest.raises(KeyError):
        keypoint_set_from_meta({"keypoint_set": "custom", "keypoint_names": NAMES, "keypoint_sigmas": SIGMAS[:2]})
    with pytest.raises(ValueError):
        custom_keypoint_set(NAMES, SIGMAS[:3])


def _dataset(base: Path, names: list[str], n_images: int = 4, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (base / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(1, n_images + 1):
        Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8)).save(base / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 128, "height": 96})
        for _ in range(2):
            x0, y0, w, h = rng.uniform(5, 60), rng.uniform(5, 40), rng.uniform(25, 50), rng.uniform(25, 50)
            kps: list[float] = []
            for k in range(len(names)):
                v = 2 if k == 0 else int(rng.choice([0, 1, 2]))
                kps += [float(x0 + rng.uniform(0, w)), float(y0 + rng.uniform(0, h)), v] if v else [0, 0, 0]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": [x0, y0, w, h],
                         "area": w * h * 0.8, "iscrowd": 0, "num_keypoints": sum(1 for t in kps[2::3] if t),
                         "keypoints": kps})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "mouse", "keypoints": names,
                          "skeleton": [[k + 1, k + 2] for k in range(len(names) - 1)]}]}
    (base / "gt.json").write_text(json.dumps(gt, ensure_ascii=False), encoding="utf-8")
    return base / "gt.json"


def _model(base: Path, names: list[str]) -> tuple[Path, Path]:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 12, 3, 2, 1), torch.nn.ReLU())
            self.head = torch.nn.Conv2d(12, len(names), 1)

        def forward(self, x):
            return self.head(self.body(x))

    torch.manual_seed(0)
    path = base / "model.onnx"
    torch.onnx.export(Net().eval(), torch.randn(1, 3, 64, 48), str(path), input_names=["image"],
                      output_names=["heatmaps"], dynamic_axes={"image": {0: "B"}, "heatmaps": {0: "B"}},
                      opset_version=17, dynamo=False)
    m = onnx.load(str(path))
    feat = m.graph.node[-1].input[0]
    for n in m.graph.node:  # the penultimate tensor gets a name of the user's
        n.input[:] = ["penultimate" if t == feat else t for t in n.input]
        n.output[:] = ["penultimate" if t == feat else t for t in n.output]
    onnx.save(m, str(path))
    card = {"format": "posecal-model-card/1", "task": "pose", "name": "mouse-net", "sha256": None,
            "input": {"name": "image", "layout": "NCHW", "dtype": "float32", "size": [48, 64], "batch": None,
                      "color": "RGB", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "crop": {"padding": 1.25, "aspect": "input"}, "keypoints": names,
            "output": {"type": "heatmaps", "name": "heatmaps", "layout": "NCHW", "subpixel": True},
            "heatmaps": None, "features": {"name": "penultimate", "layout": "NCHW"}, "target_sigma": 2.0,
            "ccnet": {"pooling": "heatmap", "evidence": True}}
    (base / "card.json").write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")
    return path, base / "card.json"


def _mouse_store(base: Path, *sigma_args: str) -> dict:
    """The mouse dataset, model and card under ``base`` and ``base/STORE`` extracted with ``--sigmas
    *sigma_args``."""
    data = _dataset(base, NAMES)
    model, card = _model(base, NAMES)
    store = base / "STORE"
    rc, _, err = _run(["extract", "--model", model, "--model-card", card, "--data", data, "--images",
                       base / "images", "--out", store, "--sigmas", *sigma_args])
    assert rc == 0, err
    return {"base": base, "data": data, "model": model, "card": card, "store": store}


@pytest.fixture(scope="module")
def mouse(tmp_path_factory):
    m = _mouse_store(tmp_path_factory.mktemp("s28_custom"), ",".join(map(str, SIGMAS)))
    base, data, model, card, store = m["base"], m["data"], m["model"], m["card"], m["store"]
    head = base / "HEAD"
    rc, _, err = _run(["fit", "--store", store, "--out", head, "--steps", "20"])
    assert rc == 0, err
    return {"base": base, "data": data, "model": model, "card": card, "store": store, "head": head}


def test_extract_without_sigmas_names_the_flag(tmp_path):
    data = _dataset(tmp_path, NAMES, n_images=1)
    model, card = _model(tmp_path, NAMES)
    rc, _, err = _run(["extract", "--model", model, "--model-card", card, "--data", data, "--images",
                       tmp_path / "images", "--out", tmp_path / "S"])
    _one_error(rc, err, "gt.json", "--sigmas")
    rc, _, err = _run(["extract", "--model", model, "--model-card", card, "--data", data, "--images",
                       tmp_path / "images", "--out", tmp_path / "S", "--sigmas", "0.1", "0.1"])
    _one_error(rc, err, "gt.json", "--sigmas", "2 OKS sigmas for 4 keypoint names")
    rc, _, err = _run(["extract", "--model", model, "--model-card", card, "--data", data, "--images",
                       tmp_path / "images", "--out", tmp_path / "S", "--sigmas", "0.1", "0.1", "-1", "0.1"])
    _one_error(rc, err, "--sigmas")
    assert not (tmp_path / "S").exists()


def test_store_and_head_carry_the_skeleton(mouse):
    meta = json.loads((mouse["store"] / "meta.json").read_text(encoding="utf-8"))
    assert (meta["keypoint_set"], meta["keypoint_names"], meta["keypoint_sigmas"]) == ("custom", NAMES, SIGMAS)
    head = json.loads((mouse["head"] / "head.json").read_text(encoding="utf-8"))
    assert (head["keypoint_set"], head["keypoint_names"], head["keypoint_sigmas"]) == ("custom", NAMES, SIGMAS)


def test_apply_export_and_studies_on_a_custom_skeleton(mouse):
    ort = pytest.importorskip("onnxruntime")
    b = mouse["base"]
    rc, _, err = _run(["apply", "--store", mouse["store"], "--head", mouse["head"], "--out", b / "CAL.json"])
    assert rc == 0, err
    cal = json.loads((b / "CAL.json").read_text())
    assert len(cal) == 8 and all(len(r["keypoints"]) == 3 * len(NAMES) for r in cal)
    rc, _, err = _run(["export", "--model", mouse["model"], "--model-card", mouse["card"], "--head", mouse["head"],
                       "--out", b / "cal.onnx"])
    assert rc == 0, err
    x = np.random.default_rng(1).normal(size=(2, 3, 64, 48)).astype(np.float32)
    own = ort.InferenceSession(str(mouse["model"])).run(None, {"image": x})[0]
    sess = ort.InferenceSession(str(b / "cal.onnx"))
    feeds = {"image": x, **({"box_score": np.ones(2, np.float32)}
                            if any(i.name == "box_score" for i in sess.get_inputs()) else {})}
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    assert np.array_equal(out["heatmaps"], own) and out["keypoint_confidence"].shape == (2, len(NAMES))
    rc, _, err = _run(["study", "visibility", "--store", mouse["store"], "--head", mouse["head"], "--out", b / "VIS"])
    assert rc == 0, err
    assert (b / "VIS" / "visibility.json").exists()
    rc, _, err = _run(["study", "occlusion", "--model", mouse["model"], "--model-card", mouse["card"], "--data",
                       mouse["data"], "--images", b / "images", "--joint", "nose", "--head", mouse["head"],
                       "--out", b / "OCC", "--radii", "0", "8", "--limit", "2", "--sigmas", *map(str, SIGMAS)])
    assert rc == 0, err
    rc, _, err = _run(["study", "occlusion", "--model", mouse["model"], "--model-card", mouse["card"], "--data",
                       mouse["data"], "--images", b / "images", "--joint", "nose", "--head", mouse["head"],
                       "--out", b / "OCC2", "--radii", "0", "--limit", "2", "--sigmas", "0.03,0.05,0.05,0.2"])
    _one_error(rc, err, "keypoint_sigmas")


def test_rescore_store_reads_the_store_sigmas(mouse):
    b = mouse["base"]
    rc, _, err = _run(["rescore", "--store", mouse["store"], "--method", "closed-form", "--out", b / "r1.json"])
    assert rc == 0, err
    rc, _, err = _run(["rescore", "--store", mouse["store"], "--method", "closed-form", "--sigmas",
                       *map(str, SIGMAS), "--out", b / "r2.json"])
    assert rc == 0, err
    assert json.loads((b / "r1.json").read_text()) == json.loads((b / "r2.json").read_text())


def test_head_of_another_skeleton_is_refused(mouse, tmp_path):
    other = ["a", "b", "c", "d"]
    data = _dataset(tmp_path, other, n_images=2, seed=3)
    model, card = _model(tmp_path, other)
    rc, _, err = _run(["extract", "--model", model, "--model-card", card, "--data", data, "--images",
                       tmp_path / "images", "--out", tmp_path / "S", "--sigmas", *map(str, SIGMAS)])
    assert rc == 0, err
    rc, _, err = _run(["apply", "--store", tmp_path / "S", "--head", mouse["head"], "--out", tmp_path / "x.json"])
    _one_error(rc, err, "keypoint_names")
    assert not (tmp_path / "x.json").exists()


def test_evaluate_custom_sigmas_equal_pycocotools(mouse):
    pytest.importorskip("pycocotools")
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    b = mouse["base"]
    pred = mouse["store"] / "predictions.json"
    rc, out, err = _run(["evaluate", "--gt", mouse["data"], "--pred", pred, "--sigmas", *map(str, SIGMAS),
                         "--json", "-"])
    assert rc == 0, err
    ours = list(json.loads(out)["coco"].values())
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO(str(mouse["data"]))
        e = COCOeval(c, c.loadRes(str(pred)), "keypoints")
        e.params.kpt_oks_sigmas = np.array(SIGMAS)
        e.evaluate()
        e.accumulate()
        e.summarize()
    assert np.allclose(ours, e.stats, atol=1e-12, rtol=0), (ours, e.stats, b)


def test_sigmas_as_a_bracketed_list(mouse, tmp_path):
    """``--sigmas "[0.03, 0.05, ...]"`` (pasted from an MMPose metainfo) reads as the numbers: it was 'not a number'."""
    pred = mouse["store"] / "predictions.json"
    runs = []
    for sig in (list(map(str, SIGMAS)), [json.dumps(SIGMAS)], ["[0.03,", "0.05,", "0.05,", "0.1]"]):
        rc, out, err = _run(["evaluate", "--gt", mouse["data"], "--pred", pred, "--sigmas", *sig, "--json", "-"])
        assert rc == 0, err
        runs.append(json.loads(out)["sigma_values"])
        rc, out, err = _run(["compare", "--gt", mouse["data"], pred, pred, "--sigmas", *sig, "--resamples", "5",
                             "--json"])
        assert rc == 0, err
    assert runs == [SIGMAS] * 3
