"""``posecal convert lspet``: LSP Extended joints.mat (14, 3, N) -> COCO keypoints that evaluate accepts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from posecal.cli import main
from posecal.datasets.lsp import read_lsp, read_lspet
from posecal.errors import PosecalInputError
from posecal.io.coco import load_gt
from posecal.metrics.cocoeval import evaluate


def test_lspet_reader_matches_joints_mat(shared):
    mat = shared("data", "lspet", "joints.mat")
    j = loadmat(mat)["joints"]  # (14, 3, N): x, y, flag (1 = annotated)
    d = read_lspet(mat, image_sizes=False)
    assert len(d["images"]) == len(d["annotations"]) == j.shape[2] == 10000
    assert d["images"][0]["file_name"] == "im00001.jpg" and d["images"][-1]["file_name"] == "im10000.jpg"
    kp = np.array([a["keypoints"] for a in d["annotations"]]).reshape(-1, 14, 3)
    lab = j[:, 2, :].T == 1
    assert np.array_equal(kp[..., 2], np.where(lab, 2, 0))
    np.testing.assert_array_equal(kp[..., 0][lab], j[:, 0, :].T[lab])  # annotated coordinates as stored
    np.testing.assert_array_equal(kp[..., 1][lab], j[:, 1, :].T[lab])
    assert (kp[..., :2][~lab] == 0).all()
    a = d["annotations"][7]
    x, y = j[:, 0, 7][lab[7]], j[:, 1, 7][lab[7]]
    assert a["bbox"] == [x.min(), y.min(), x.max() - x.min(), y.max() - y.min()]
    assert a["area"] == (x.max() - x.min()) * (y.max() - y.min())
    assert a["num_keypoints"] == lab[7].sum()
    assert 0.10 < 1 - lab.mean() < 0.14  # about 12 % unannotated (the data README)


def test_convert_lspet_cli_and_evaluate(shared, tmp_path):
    mat, imgs = shared("data", "lspet", "joints.mat"), shared("data", "lspet", "images")
    out = tmp_path / "lspet.json"
    assert main(["convert", "lspet", str(mat), "--images", str(imgs), "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    im = d["images"][41]
    from PIL import Image

    with Image.open(imgs / im["file_name"]) as pil:
        assert (im["width"], im["height"]) == pil.size
    g = load_gt(out)
    assert g.keypoint_set.name == "lsp14" and g.keypoints.shape == (10000, 14, 3)
    # evaluate accepts it: the gt itself as predictions scores AP 1
    res = [{"image_id": a["image_id"], "category_id": 1, "score": 1.0,
            "keypoints": [1.0 if i % 3 == 2 else t for i, t in enumerate(a["keypoints"])]}
           for a in d["annotations"][:200]]
    sub = {**d, "images": d["images"][:200], "annotations": d["annotations"][:200]}
    assert evaluate(sub, res).stats["AP"] == pytest.approx(1.0)


def test_lspet_refuses_bad_input(tmp_path):
    j = np.zeros((14, 3, 3))
    j[:, 0, :], j[:, 1, :], j[:, 2, :] = 10.0, 20.0, 1
    j[0, 0, 0] = 30.0
    ok = tmp_path / "ok.mat"
    savemat(ok, {"joints": j})
    assert len(read_lspet(ok)["annotations"]) == 3
    cases = {"flag": (lambda a: a.__setitem__((2, 2, 1), 2.0), "unknown flag 2 at joint 3; expected one of \\[0, 1\\]"),
             "nan": (lambda a: a.__setitem__((3, 0, 2), np.nan), "non-finite"),
             "empty": (lambda a: a.__setitem__((slice(None), 2, 0), 0.0), "no annotated joint")}
    for name, (edit, msg) in cases.items():
        b = j.copy()
        edit(b)
        p = tmp_path / f"{name}.mat"
        savemat(p, {"joints": b})
        with pytest.raises(PosecalInputError, match=msg):
            read_lspet(p)
    savemat(tmp_path / "lsp.mat", {"joints": np.zeros((3, 14, 3))})
    with pytest.raises(PosecalInputError, match="convert lsp"):
        read_lspet(tmp_path / "lsp.mat")
    with pytest.raises(PosecalInputError, match="convert lspet"):
        read_lsp(ok)
    with pytest.raises(PosecalInputError, match="empty"):
        read_lsp(tmp_path / "lsp.mat", split="test")
    out = tmp_path / "x.json"
    assert main(["convert", "lspet", str(tmp_path / "nan.mat"), "--out", str(out)]) == 2
    assert not out.exists()
    # --split is LSP's (images 1-1000 / 1001-2000): refused for lspet rather than silently ignored
    assert main(["convert", "lspet", str(ok), "--split", "train", "--out", str(out)]) == 2
    assert not out.exists()
    assert main(["convert", "lspet", str(ok), "--split", "all", "--out", str(out)]) == 0
