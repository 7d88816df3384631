"""Cross-product audit (session 24): the extract → fit → apply → evaluate chain on the less-travelled
combinations of ../shared models and MMPose fixtures (CrowdPose, AI Challenger, Human-Art, COCO-WholeBody)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import orjson
import pytest

from posecal.cli import main
from posecal.errors import PosecalWarning

FIX = ("data", "mmpose-fixtures")
MOVENET = ("models", "movenet", "movenet-thunder.onnx")


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_missing_joint_error_names_the_data_file_and_field(shared, tmp_path, capsys):
    """MoveNet (COCO-17) on CrowdPose without --allow-missing-joints: before, the error named the field
    'keypoints' but no file; it now names the data file and categories[0].keypoints (exit 2, no store)."""
    data = shared(*FIX, "crowdpose", "test_crowdpose.json")
    out = tmp_path / "S"
    rc = main(["extract", "--model", str(shared(*MOVENET)), "--data", str(data), "--images", str(data.parent),
               "--out", str(out)])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and not out.exists()
    assert str(data) in line and "'categories[0].keypoints'" in line and "head, neck" in line
    assert "--allow-missing-joints" in line


def test_named_but_unknown_keypoints_are_not_told_to_be_named(shared, tmp_path, capsys):
    """AI Challenger's JSON names its 14 keypoints ('Right Shoulder', ..., 'Head top', 'Neck'): LSP's joints
    in another order. Before: "14 keypoints fit lsp14, crowdpose14; name them in categories[0].keypoints",
    which they are. Now the error says the names match no known set and which set has the same joints."""
    data = shared(*FIX, "aic", "test_aic.json")
    out = tmp_path / "S"
    rc = main(["extract", "--model", str(shared(*MOVENET)), "--data", str(data), "--images", str(data.parent),
               "--out", str(out), "--allow-missing-joints"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and not out.exists()
    assert str(data) in line and "'categories[0].keypoints'" in line
    assert "match no known keypoint set" in line and "lsp14 has the same joints in another order" in line
    assert "name them in" not in line


def test_keypoint_set_warning_for_a_partition_file_is_accurate(shared):
    """Human-Art names 21 keypoints, its `keypoints` carry COCO's 17: the warning says so instead of "names
    match no known keypoint set" (its first 17 names are COCO-17's)."""
    from posecal.datasets.coco import keypoint_set

    d = json.loads(shared(*FIX, "humanart", "test_humanart.json").read_text())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ks = keypoint_set(d, file="ha.json")
    msgs = [str(x.message) for x in w if issubclass(x.category, PosecalWarning)]
    assert ks.name == "coco17" and len(msgs) == 1
    assert "names 21 keypoints, the annotations carry 17" in msgs[0] and "no known" not in msgs[0]


def test_corner_boxes_in_a_detection_file_are_warned_about(shared):
    """MMPose's Human-Art detection fixture holds [x1, y1, x2, y2] boxes (its 0.84 box of the acrobat is the
    gt box's corners exactly): read as COCO's [x, y, w, h] they run past the image, every crop is wrong and
    fit later says only "nothing but zeros to learn". Now extract warns, naming the file; COCO-style files
    (MMPose's COCO fixture, NanoDet's output) do not warn."""
    from posecal.datasets.coco import _detection_instances

    ha = json.loads(shared(*FIX, "humanart", "test_humanart.json").read_text())
    det = json.loads(shared(*FIX, "humanart", "test_humanart_det_AP_H_56.json").read_text())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        insts = _detection_instances(det, {im["id"]: im for im in ha["images"]}, "hadet.json", None)
    msgs = [str(x.message) for x in w if issubclass(x.category, PosecalWarning)]
    assert len(insts) == len(det)
    assert len(msgs) == 1 and msgs[0].startswith("hadet.json: ") and "[x1, y1, x2, y2]" in msgs[0]
    coco = json.loads(shared(*FIX, "coco", "test_coco.json").read_text())
    cdet = json.loads(shared(*FIX, "coco", "test_coco_det_AP_H_56.json").read_text())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _detection_instances(cdet, {im["id"]: im for im in coco["images"]}, "cdet.json", None)
    assert not [x for x in w if "x1, y1" in str(x.message)]


def test_vis_acc_leaves_out_joints_the_model_lacks():
    """fit's vis_acc counted the keypoints a model lacks (extract --allow-missing-joints: v̂ = 0 there by
    construction, left out of the losses) as errors: BlazePose on LSP, MoveNet on CrowdPose reported exactly
    12/14 = 0.857 however good the head. With the loss masks it is measured where the losses look."""
    from posecal.ccnet.train import quick_metrics

    rng = np.random.default_rng(0)
    N, K = 20, 14
    vis = np.ones((N, K), bool)
    oks = rng.uniform(0.2, 1.0, (N, K))
    s = oks + rng.normal(0, 0.05, (N, K))
    v = np.full((N, K), 0.9)
    s[:, 12:], v[:, 12:] = 0.0, 0.0  # joints the model lacks (head, neck): apply's ŝ = v̂ = 0
    have = np.ones((N, K), bool)
    have[:, 12:] = False
    old = quick_metrics(s, v, oks, vis)
    assert old["vis_acc"] == pytest.approx(12 / 14)
    new = quick_metrics(s, v, oks, vis, vis & have, have)
    assert new["vis_acc"] == 1.0
    assert new["pearson_kpt"] == pytest.approx(np.corrcoef(s[:, :12].ravel(), oks[:, :12].ravel())[0, 1])


@pytest.mark.filterwarnings("ignore::posecal.errors.PosecalWarning")
def test_fit_and_apply_on_coco_wholebody_gt(shared, tmp_path, capsys):
    """MoveNet on the COCO-WholeBody fixture: extract crops it as COCO-17 (categories[0] names the 17 body
    keypoints) but fit read the store's gt with all 133 keypoints and died with a numpy broadcast
    traceback. Now fit and apply use its body part, and apply's AP (as fit reports it) is what `posecal
    evaluate` gives for apply's output against the WholeBody file (body AP)."""
    from posecal.io.coco import load_gt, load_results
    from posecal.metrics.cocoeval import evaluate_dataset

    data = shared(*FIX, "coco", "test_coco_wholebody.json")
    st, h, cal = tmp_path / "S", tmp_path / "H", tmp_path / "cal.json"
    assert main(["extract", "--model", str(shared(*MOVENET)), "--data", str(data), "--images",
                 str(data.parent), "--out", str(st), "--threads", "1"]) == 0
    rc = main(["fit", "--store", str(st), "--out", str(h), "--threads", "1", "--steps", "30"])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err
    assert main(["apply", "--store", str(st), "--head", str(h), "--out", str(cal)]) == 0
    meta = json.loads((h / "head.json").read_text())
    applied = next(iter(meta["metrics"]["applied"].values()))
    recs = orjson.loads(cal.read_bytes())
    assert len(recs) == 12 and all(len(r["keypoints"]) == 51 for r in recs)
    gt = load_gt(data)
    before = evaluate_dataset(gt, load_results(orjson.loads((st / "predictions.json").read_bytes()), gt))
    for r in recs:  # (the results loader wants 133 visibilities beside 17 body keypoints: reported)
        r.pop("visibility")
    after = evaluate_dataset(gt, load_results(recs, gt))
    assert after.result.stats["AP"] == pytest.approx(applied["AP"], abs=1e-12)
    assert after.result.stats["AR"] == pytest.approx(before.result.stats["AR"], abs=1e-12)
