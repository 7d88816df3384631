"""Calibrated ONNX export: the grafted graph equals ``posecal apply`` on the same crops (≤ 1e-5), keeps the
original outputs bit for bit and passes ``onnx.checker``. The pose model is a small torch net exported to
ONNX here; its heads are fitted briefly on features extracted from it by ``posecal extract``."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from _tinynet import tiny_heatmap_net  # noqa: E402
from posecal.cli import main  # noqa: E402
from posecal.keypoints import COCO17  # noqa: E402

N_IMG = 24


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """tiny.onnx (48×64 input, COCO-17 heatmaps), N_IMG images with one annotated person each."""
    from PIL import Image

    d = tmp_path_factory.mktemp("export")
    model = d / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_heatmap_net(), (torch.zeros(1, 3, 64, 48),), str(model), dynamo=False,
                          input_names=["input"], output_names=["heatmaps"],
                          dynamic_axes={"input": {0: "b"}, "heatmaps": {0: "b"}})
    rng = np.random.default_rng(0)
    images, anns = [], []
    (d / "img").mkdir()
    for i in range(N_IMG):
        img = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
        Image.fromarray(img).save(d / "img" / f"{i}.png")
        x0, y0 = rng.uniform(5, 40), rng.uniform(5, 20)
        w, h = rng.uniform(40, 70), rng.uniform(50, 65)
        kp = np.zeros((17, 3))
        kp[:, 0] = rng.uniform(x0, x0 + w, 17)
        kp[:, 1] = rng.uniform(y0, y0 + h, 17)
        kp[:, 2] = np.where(rng.random(17) < 0.2, 1, 2)
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 120, "height": 90})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": w * h * 0.6,
                     "bbox": [x0, y0, w, h], "keypoints": kp.ravel().tolist(), "num_keypoints": 17})
    data = d / "data.json"
    data.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "person", "keypoints": list(COCO17.names), "skeleton": []}]}))
    return {"dir": d, "model": model, "data": data, "images": d / "img"}


def _first_relu_output(model: Path) -> str:
    g = onnx.load_model(str(model)).graph
    return next(n.output[0] for n in g.node if n.op_type == "Relu")


def _fit_apply(world, name: str, pooling: str, head_kind: str, tensor: str | None):
    d = world["dir"] / name
    store, head, res = d / "store", d / "head", d / "res.json"
    extra = ["--tensor", tensor] if tensor else []
    assert main(["extract", "--model", str(world["model"]), "--data", str(world["data"]), "--images",
                 str(world["images"]), "--out", str(store), "--pooling", pooling, *extra]) == 0
    assert main(["fit", "--store", str(store), "--out", str(head), "--head", head_kind, "--steps", "60",
                 "--batch-size", "16"]) == 0
    assert main(["apply", "--store", str(store), "--head", str(head), "--out", str(res)]) == 0
    return store, head, json.loads(res.read_text())


def _crops(store: Path, images: Path) -> np.ndarray:
    """The exact crops posecal extract fed the model (from the stored crop transforms)."""
    from posecal.models.adapters.generic import IMAGENET_MEAN, IMAGENET_STD, preprocess_nchw
    from posecal.models.crop import load_image, warp
    from posecal.models.store import FeatureStore

    fs = FeatureStore.open(store)
    gt = json.loads(fs.gt_path.read_text())
    name = {im["id"]: im["file_name"] for im in gt["images"]}
    Ms, ids = fs.read("crop_transform"), fs.read("image_id")
    crops = np.stack([warp(load_image(images / name[int(i)]), M, (48, 64))
                      for M, i in zip(Ms, ids, strict=True)])
    return crops, preprocess_nchw(crops, IMAGENET_MEAN, IMAGENET_STD)


def _expected(records):
    s = np.array([r["keypoints"][2::3] for r in records])
    v = np.array([r["visibility"] for r in records])
    c = np.array([r["score"] for r in records])
    return s, v, c


CASES = [("gap", "fc", None), ("heatmap", "kpt", None), ("spatial", "conv_sigmoid_gap", None),
         ("spatial", "conv_gap", None), ("heatmap", "kpt", "first_relu")]


@pytest.mark.parametrize("pooling,head_kind,tensor", CASES,
                         ids=[f"{p}-{h}-{t or 'default'}" for p, h, t in CASES])
def test_grafted_model_equals_posecal_apply(world, pooling, head_kind, tensor):
    from posecal.ccnet.export import OUTPUTS

    if tensor == "first_relu":  # a 32×24 feature grid under 16×12 heatmaps: the resampling path
        tensor = _first_relu_output(world["model"])
    name = f"{pooling}-{head_kind}-{bool(tensor)}"
    store, head, records = _fit_apply(world, name, pooling, head_kind, tensor)
    out = world["dir"] / name / "calibrated.onnx"
    assert main(["export", "--model", str(world["model"]), "--head", str(head), "--out", str(out)]) == 0
    m = onnx.load_model(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert [o.name for o in m.graph.output] == ["heatmaps", *OUTPUTS]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temporary file's 0600
    crops, x = _crops(store, world["images"])
    orig = ort.InferenceSession(str(world["model"]), providers=["CPUExecutionProvider"])
    cal = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    hm0 = orig.run(None, {"input": x})[0]
    hm1, s, v, c = cal.run(None, {"input": x})
    np.testing.assert_array_equal(hm1, hm0)  # original output bit for bit
    assert s.shape == v.shape == (N_IMG, 17) and c.shape == (N_IMG,)
    es, ev, ec = _expected(records)
    assert np.abs(s - es).max() <= 1e-5 and np.abs(v - ev).max() <= 1e-5 and np.abs(c - ec).max() <= 1e-5
    assert np.std(ec) > 0  # the head is not constant: the comparison can fail
    # head-only export of the same head, run in two stages after the model, agrees too
    from posecal.ccnet.export import run_two_stage
    from posecal.models.adapters.onnx import OnnxAdapter

    ho = world["dir"] / name / "head_only.onnx"
    assert main(["export", "--model", str(world["model"]), "--head", str(head), "--out", str(ho),
                 "--head-only"]) == 0
    onnx.checker.check_model(onnx.load_model(str(ho)), full_check=True)
    two = run_two_stage(OnnxAdapter(world["model"], tensor=tensor),
                        ort.InferenceSession(str(ho), providers=["CPUExecutionProvider"]), crops)
    for k, ref in zip(OUTPUTS, (es, ev, ec), strict=True):
        assert np.abs(two[k] - ref).max() <= 1e-5


def test_export_refuses_a_head_of_another_model(world, tmp_path, capsys):
    _, head, _ = _fit_apply(world, "other", "gap", "fc", None)
    net = tiny_heatmap_net()
    with torch.no_grad():
        net.final.bias.add_(1.0)  # a different model file
    other = tmp_path / "other.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 64, 48),), str(other), dynamo=False,
                          input_names=["input"], output_names=["heatmaps"])
    out = tmp_path / "x.onnx"
    capsys.readouterr()  # the fit/apply above print their warnings on success; only export's output counts
    assert main(["export", "--model", str(other), "--head", str(head), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_sha256" in err[0] and not out.exists()
    assert main(["export", "--model", str(other), "--head", str(tmp_path / "nohead"), "--out", str(out)]) == 2
    assert not out.exists()
