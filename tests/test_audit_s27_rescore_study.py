"""Audit (session 27) of ``posecal rescore``, ``posecal study`` and ``posecal demo`` on hostile flags: empty
values that were read as "not given" (``--save-calibrator ''`` saved nothing, ``--keypoint-set ''`` took the
default sigmas, ``--calibrator ''`` asked for --fit-gt, ``demo --lsp ''`` used the current folder, ``study
--model-card ''`` named '.'), a learned calibrator fitted here on another keypoint set (warned only when it
was loaded with --calibrator), and occlusion-study radii / blur sigmas so large that matplotlib / PIL crashed
with a traceback after the model had run."""

from __future__ import annotations

import json

import pytest

from posecal.keypoints import LSP14
from test_hostile_inputs import _one_error, _run, _write
from test_rescore_audit_s24 import _refused as _refused_s24
from test_rescore_audit_s24 import _skeleton_world, world  # noqa: F401  (module fixture)


def _refused(argv: list, *needles: str) -> str:
    """Exit 2, one error line naming ``needles``, and no --out / --save-calibrator written (empty paths skipped)."""
    return _refused_s24(argv, None, *needles)


def test_rescore_empty_flag_values_are_refused_not_read_as_absent(world):  # noqa: F811
    d = world
    base = ["rescore", "--pred", d / "pred.json", "--gt", d / "gt.json", "--out", d / "x.json"]
    # --save-calibrator '': the run succeeded and saved nothing
    _refused(base + ["--method", "closed-form", "--save-calibrator", ""], "'--save-calibrator'", "empty path")
    # --keypoint-set '': the gt's sigmas were used silently
    _refused(base + ["--method", "closed-form", "--keypoint-set", ""], "'--keypoint-set'", "empty")
    # --calibrator '': "isotonic needs --fit-gt/--fit-pred or --calibrator"
    _refused(base + ["--method", "isotonic", "--calibrator", ""], "'--calibrator'", "empty path")
    _refused(base + ["--method", "isotonic", "--fit-gt", "", "--fit-pred", ""], "'--fit-gt'", "empty path")


def test_a_calibrator_fitted_here_on_another_keypoint_set_is_warned_as_a_loaded_one_is(world):  # noqa: F811
    """--fit-gt/--fit-pred of COCO-17 applied to LSP-14 predictions: the same warning as --calibrator gives."""
    d = world
    lg, lp = _skeleton_world(d, LSP14.names, "lsp")
    for method in ("isotonic", "loglog"):
        rc, _, err = _run(["rescore", "--pred", lp, "--gt", lg, "--method", method, "--fit-gt", d / "fgt.json",
                           "--fit-pred", d / "fpred.json", "--out", d / "x.json"])
        assert rc == 0, err
        assert "fpred.json" in err and "fitted on 17 keypoints (coco17), applied to 14 (lsp14)" in err, err
        # the same skeleton: silent
        rc, _, err = _run(["rescore", "--pred", lp, "--gt", lg, "--method", method, "--fit-gt", lg, "--fit-pred",
                           lp, "--out", d / "x.json"])
        assert rc == 0 and "learned on other joints" not in err, err


def test_demo_and_study_empty_paths_are_refused(tmp_path):
    out = tmp_path / "D"
    _refused(["demo", "--lsp", "", "--model", tmp_path / "m.tflite", "--out", out], "'--lsp'", "empty path")
    assert not out.exists() and not list(tmp_path.iterdir())
    _refused(["study", "occlusion", "--model", tmp_path / "m.tflite", "--data", tmp_path / "d.json", "--images",
              tmp_path, "--joint", "right_wrist", "--model-card", "", "--out", tmp_path / "o"],
             "'--model-card'", "empty path")
    assert not (tmp_path / "o").exists()


@pytest.fixture
def one_lsp_person(shared, tmp_path_factory):
    """The first LSP test person as COCO JSON, the LSP images and EfficientPose-I."""
    from posecal.datasets.lsp import read_lsp

    d = read_lsp(shared("data", "lsp", "joints.mat"), None, "test")
    d = {**d, "images": d["images"][:1], "annotations": d["annotations"][:1]}
    data = _write(tmp_path_factory.mktemp("s27occ") / "one.json", d)
    return (shared("models", "efficientpose", "EfficientPoseI.tflite"), data, shared("data", "lsp", "images"))


@pytest.mark.parametrize("extra, needles", [
    (["--radii", "1e308"], ("'--radii'", "too large")),            # matplotlib: ValueError in tight_layout
    (["--radii", "8", "--blur-sigma", "1e308"], ("'--blur-sigma'", "1e+06")),  # PIL: radius must be >= 0
    (["--radii", "8", "--blur-sigma", "1e12"], ("'--blur-sigma'",)),           # PIL: radius too large
])
def test_occlusion_study_refuses_radii_and_blurs_beyond_what_it_can_draw(one_lsp_person, tmp_path, extra,
                                                                          needles):
    model, data, images = one_lsp_person
    out = tmp_path / "o"
    _refused(["study", "occlusion", "--model", model, "--data", data, "--images", images, "--joint", "right_wrist",
              "--limit", "1", "--out", out, *extra], *needles)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_occlusion_study_takes_a_radius_whose_square_is_finite(one_lsp_person, tmp_path):
    """The largest radii still legal run and plot (the whole crop occluded)."""
    model, data, images = one_lsp_person
    out = tmp_path / "o"
    rc, _, err = _run(["study", "occlusion", "--model", model, "--data", data, "--images", images, "--joint",
                       "right_wrist", "--limit", "1", "--radii", "0", "1.3e154", "--blur-sigma", "1e6", "--out", out])
    assert rc == 0 and "Traceback" not in err and "warning" not in err, err
    res = json.loads((out / "occlusion.json").read_text())
    assert res["radii_input_px"] == [0.0, 1.3e154] and (out / "occlusion.png").stat().st_size > 0


def test_a_null_calibrator_parameter_is_named(world):  # noqa: F811
    """``"target_sigma": null`` (or keypoint_score_thr, min_score) was 'bad parameters: float() argument must be
    ... not NoneType' naming only 'params'; null is a value only of params.sigmas (and unfitted state)."""
    d = world
    base = ["rescore", "--pred", d / "pred.json", "--gt", d / "gt.json", "--out", d / "x.json"]
    for method, fit in (("closed-form", []), ("loglog", ["--fit-gt", d / "fgt.json", "--fit-pred", d / "fpred.json"])):
        cal = d / f"{method}.json"
        rc, _, err = _run(base + ["--method", method, *fit, "--save-calibrator", cal])
        assert rc == 0, err
        obj = json.loads(cal.read_text())
        assert obj["params"]["sigmas"] is None  # as saved: still loads
        rc, _, err = _run(base + ["--method", method, "--calibrator", cal])
        assert rc == 0, err
        for k in ("keypoint_score_thr", "target_sigma" if method == "closed-form" else "min_score"):
            bad = _write(d / "bad.json", {**obj, "params": {**obj["params"], k: None}})
            _refused(base + ["--method", method, "--calibrator", bad], "bad.json", f"'params.{k}'")


def test_demo_lsp_with_a_model_lacking_lsp_joints_names_the_model(shared, tmp_path):
    """Before: after converting LSP, extract refused the internal '.D.partial/work/lsp_train.json' and suggested
    --allow-missing-joints, which demo does not have. Now one line names --model and the joints, before anything
    is written."""
    model = shared("models", "movenet", "movenet-thunder.onnx")
    rc, _, err = _run(["demo", "--lsp", shared("data", "lsp"), "--model", model, "--out", tmp_path / "D"])
    _one_error(rc, err, "field '--model'", "movenet-thunder.onnx has no joint for LSP's neck, head_top")
    assert "partial" not in err and not (tmp_path / "D").exists()
