"""The README's code blocks run as written (the two-stage TFLite example once imported a name that did not
exist)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return next(b for b in blocks if marker in b)


def test_two_stage_crop_example_runs_and_finds_the_person(shared):
    pytest.importorskip("ai_edge_litert")
    from posecal.datasets.lsp import read_lsp

    lsp = shared("data", "lsp")
    model = shared("models", "efficientpose", "EfficientPoseI.tflite")
    d = read_lsp(lsp / "joints.mat", lsp / "images", split="test")
    ann = d["annotations"][0]
    code = _block("topdown_crop_box")
    code = code[:code.index("head = ort.InferenceSession")]  # the head part needs a fitted head
    code = code.replace('"EfficientPoseI.tflite"', repr(str(model))).replace(
        '"im1001.jpg"', repr(str(lsp / "images" / d["images"][0]["file_name"])))
    x, y, w, h = ann["bbox"]
    env: dict = {"x": x, "y": y, "w": w, "h": h}
    exec(compile(code, "README.md", "exec"), env)  # noqa: S102 - the README's own example
    from posecal.keypoints import LSP14
    from posecal.models.adapters.joints import joint_map
    from posecal.models.crop import apply_affine, invert_affine

    jm = joint_map(env["model"].joint_names, LSP14.names)  # model joints -> LSP-14 order
    xy = apply_affine(invert_affine(env["M"]), env["out"].coords[0][jm])  # input px -> image px
    gt = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
    err = np.linalg.norm(xy - gt[:, :2], axis=1)
    assert env["crops"].shape == (1, env["H"], env["W"], 3)
    assert np.median(err) < 0.1 * max(w, h), err  # the crop holds the person: the model finds the joints


def test_simulation_example_runs_and_the_closed_form_raises_ap(capsys):
    """The first Python block (simulation → closed form → evaluate) runs as written and prints what it says."""
    import warnings

    from posecal.errors import PosecalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PosecalWarning)  # heatmap maxima above 1: warned, legal
        env: dict = {}
        exec(compile(_block("simulate(2000"), "README.md", "exec"), env)  # noqa: S102 - the README's own example
    words = capsys.readouterr().out.split()
    assert words[0] == "AP" and words[1] == "before" and words[3] == "after", words
    assert float(words[4]) > float(words[2])
