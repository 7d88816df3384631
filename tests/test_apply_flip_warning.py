"""``apply`` warns when the store's flip test (``extract --flip``) differs from the head's training stores:
the mirrored-crop average changes keypoint scores and features, so the head's calibration may not carry over.
Heads record their stores' flip settings (``head.json`` ``train.flip_test``). Real coco-mini crops, SimplePose."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from posecal.cli import main  # noqa: E402


def _run(*argv) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main([str(a) for a in argv]) == 0, err.getvalue()
    return err.getvalue()


def test_apply_warns_about_a_flip_test_mismatch(tmp_path):
    from conftest import shared_path

    mini = shared_path("data", "coco-mini", "person_keypoints_train2017.json")
    d = json.loads(mini.read_text())
    iid = 790
    d = {**d, "images": [im for im in d["images"] if im["id"] == iid],
         "annotations": [a for a in d["annotations"] if a["image_id"] == iid]}
    img = tmp_path / "img"
    img.mkdir()
    shutil.copy(mini.parent / "train2017" / d["images"][0]["file_name"], img)
    data = tmp_path / "d.json"
    data.write_text(json.dumps(d))
    model = shared_path("models", "simplepose", "ultralight-nano-simplepose.onnx")
    for name, extra in (("plain", ()), ("flip", ("--flip",))):
        _run("extract", "--model", model, "--data", data, "--images", img, "--out", tmp_path / name, *extra)
    _run("fit", "--store", tmp_path / "plain", "--steps", "20", "--out", tmp_path / "H")
    assert json.loads((tmp_path / "H" / "head.json").read_text())["train"]["flip_test"] == [False]
    assert "--flip" not in _run("apply", "--store", tmp_path / "plain", "--head", tmp_path / "H", "--out",
                                tmp_path / "a.json")
    err = _run("apply", "--store", tmp_path / "flip", "--head", tmp_path / "H", "--out", tmp_path / "b.json")
    assert "extracted with --flip, the head's training stores without it" in err, err
    assert (tmp_path / "b.json").is_file()  # a warning, not a refusal
