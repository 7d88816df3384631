"""``posecal evaluate --report DIR``: table, JSON block, report files; bad input exits 2 with one line."""

from __future__ import annotations

import json

from calib_helpers import COCO_MINI, check_report, perturb_gt
from conftest import shared_path
from posecal.calibration.audit import PRIMARY_KEYS
from posecal.cli import main


def _write(tmp_path, dets, name="pred.json"):
    p = tmp_path / name
    p.write_text(json.dumps(dets))
    return p


def test_evaluate_report(tmp_path, capsys):
    gt = shared_path(*COCO_MINI)
    pred = _write(tmp_path, perturb_gt(json.loads(gt.read_text()), seed=7))
    rep, js = tmp_path / "rep", tmp_path / "out.json"
    rc = main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--report", str(rep), "--json", str(js),
               "--random-seeds", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "calibration audit" in out and "gap mAR − mAP" in out
    metrics = check_report(rep)
    doc = json.loads(js.read_text())
    assert doc["calibration"] == metrics["calibration"]
    assert doc["coco"] == metrics["coco"]
    assert metrics["calibration"]["mAP"] == doc["coco"]["AP"]
    assert set(PRIMARY_KEYS) <= set(doc["calibration"])


def test_evaluate_report_identical_scores(tmp_path, capsys):
    gt = shared_path(*COCO_MINI)
    dets = perturb_gt(json.loads(gt.read_text()), seed=8)
    for d in dets:
        d["score"] = 0.9
    rc = main(["evaluate", "--gt", str(gt), "--pred", str(_write(tmp_path, dets)), "--report",
               str(tmp_path / "rep"), "--random-seeds", "1"])  # fmt: skip
    assert rc == 0
    assert "constant confidence" in capsys.readouterr().out
    cal = check_report(tmp_path / "rep")["calibration"]
    assert cal["pearson_instance"] is None and cal["pearson_instance_reason"] == "constant confidence"


def test_evaluate_report_bad_input_writes_nothing(tmp_path, capsys):
    gt = shared_path(*COCO_MINI)
    dets = perturb_gt(json.loads(gt.read_text()), seed=9)
    dets[3]["image_id"] = 123456789  # not in the ground truth
    rep = tmp_path / "rep"
    rc = main(["evaluate", "--gt", str(gt), "--pred", str(_write(tmp_path, dets)), "--report", str(rep)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "image_id" in err[0] and "Traceback" not in err[0]
    assert not rep.exists()
    # --report naming a file: refused before any work
    rc = main(["evaluate", "--gt", str(gt), "--pred", str(tmp_path / "pred.json"), "--report", str(gt)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--report" in err[0]
