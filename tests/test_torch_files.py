"""``extract --model`` with PyTorch files: TorchScript (.pt, torch.jit.save) and torch.export programs (.pt2)
give the same store as the ONNX export of the same net; pickled checkpoints are refused in one line."""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from _tinynet import tiny_heatmap_net  # noqa: E402
from posecal.cli import main  # noqa: E402
from posecal.keypoints import COCO17  # noqa: E402
from posecal.models.store import FeatureStore  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("torchfiles")
    net = tiny_heatmap_net()
    x = torch.zeros(1, 3, 64, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(d / "m.onnx"), dynamo=False, input_names=["input"],
                          output_names=["heatmaps"], dynamic_axes={"input": {0: "b"}, "heatmaps": {0: "b"}})
        torch.jit.script(net).save(str(d / "m.pt"))
        torch.export.save(torch.export.export(net, (x,)), str(d / "m.pt2"))
    torch.save(net.state_dict(), d / "pickle.pt")
    rng = np.random.default_rng(1)
    (d / "img").mkdir()
    images, anns = [], []
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(d / "img" / f"{i}.png")
        kp = np.column_stack([rng.uniform(10, 60, 17), rng.uniform(10, 50, 17), np.full(17, 2)])
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 80, "height": 60})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": 1500.0,
                     "bbox": [8.0, 8.0, 55.0, 45.0], "keypoints": kp.ravel().tolist(), "num_keypoints": 17})
    (d / "data.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "person", "keypoints": list(COCO17.names)}]}))
    return d


def _run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue()


def _extract(d, model, out, *extra):
    return _run(["extract", "--model", d / model, "--data", d / "data.json", "--images", d / "img", "--out",
                 d / out, "--batch-size", "3", "--pooling", "gap", *extra])


def test_torchscript_and_export_match_onnx(files):
    assert _extract(files, "m.onnx", "s_onnx")[0] == 0
    rc, err = _extract(files, "m.pt", "s_pt", "--input-size", "48", "64")
    assert rc == 0, err
    rc, err = _extract(files, "m.pt2", "s_pt2")  # batch-1 example input: run crop by crop
    assert rc == 0, err
    ref = FeatureStore.open(files / "s_onnx")
    for name in ("s_pt", "s_pt2"):
        st = FeatureStore.open(files / name)
        assert st.meta["model_file"] == ("m.pt" if name == "s_pt" else "m.pt2")
        for arr in ("keypoints", "scores", "features_gap"):
            np.testing.assert_allclose(st.read(arr), ref.read(arr), rtol=1e-5, atol=1e-5)


def test_torch_files_refused_in_one_line(files):
    rc, err = _extract(files, "m.pt", "s_x")
    assert rc == 2 and "--input-size" in err and len(err.splitlines()) == 1
    rc, err = _extract(files, "pickle.pt", "s_y")
    assert rc == 2 and "pickled" in err and len(err.splitlines()) == 1
    assert not (files / "s_x").exists() and not (files / "s_y").exists()
