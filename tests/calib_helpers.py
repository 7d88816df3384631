"""Seeded predictions made by perturbing ground truth (calibration tests only)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np

from posecal.calibration.audit import PRIMARY_KEYS

COCO_MINI = ("data", "coco-mini", "person_keypoints_train2017.json")


def perturb_gt(
    gt_dict: dict, seed: int = 0, n_false_pos: int = 10, with_visibility: bool = True, max_level: float = 0.15
) -> list[dict]:
    """COCO results from a gt dict: one detection per gt with labelled keypoints, jittered by a per-instance
    noise level (in units of sqrt(area)), keypoint scores that decrease (noisily) with the error, the
    instance score the mean keypoint score, and ``n_false_pos`` detections moved to a wrong place."""
    rng = np.random.default_rng(seed)
    out = []
    anns = [a for a in gt_dict["annotations"] if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd")]
    for a in anns:
        kp = np.asarray(a["keypoints"], dtype=float).reshape(-1, 3)
        x, y, w, h = a["bbox"]
        s = np.sqrt(max(a["area"], 1.0))
        level = rng.uniform(0.0, max_level)
        xy = kp[:, :2].copy()
        unl = kp[:, 2] == 0
        xy[unl] = [x + w / 2, y + h / 2]
        xy += rng.normal(0.0, level * s, xy.shape)
        err = np.hypot(*(xy - kp[:, :2]).T) / s
        score = np.clip(np.exp(-4 * err) + rng.normal(0, 0.1, err.shape), 0.0, 1.0)
        rec = {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "keypoints": np.c_[xy, score].ravel().round(3).tolist(),
            "score": float(score.mean()),
        }
        if with_visibility:
            vis = np.clip((kp[:, 2] > 0) * 0.3 + rng.uniform(0, 0.7, len(kp)), 0, 1)
            rec["visibility"] = vis.round(3).tolist()
        out.append(rec)
    for i in rng.choice(len(out), size=min(n_false_pos, len(out)), replace=False):
        fp = copy.deepcopy(out[i])
        k = np.asarray(fp["keypoints"], dtype=float).reshape(-1, 3)
        k[:, :2] += rng.uniform(100, 200, 2)
        fp["keypoints"] = k.ravel().tolist()
        fp["score"] = float(rng.uniform(0, 0.8))
        out.append(fp)
    return out


def strict_json(path: Path) -> dict:
    def bad(c):
        raise AssertionError(f"{c} in {path}")

    return json.loads(path.read_text(), parse_constant=bad)


def check_no_nan_and_reasons(cal: dict) -> None:
    for k in PRIMARY_KEYS:
        assert k in cal, k
        if cal[k] is None:
            assert isinstance(cal.get(k + "_reason"), str) and cal[k + "_reason"], k
        else:
            assert np.isfinite(cal[k]), k


def check_report(out: Path) -> dict:
    """Every figure a valid PNG, index.html refs exist, metrics.json strict JSON without NaN."""
    from PIL import Image

    html = (out / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all((out / r).is_file() for r in refs), refs
    pngs = [r for r in refs if r.endswith(".png")]
    assert set(pngs) >= {"pr_curves.png", "reliability.png", "sparsification.png", "visibility_scores.png"}
    for f in pngs:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(out / f) as im:
            im.verify()
        with Image.open(out / f) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    assert not list(out.glob(".*tmp")), "temporary files left behind"
    metrics = strict_json(out / "metrics.json")
    assert set(metrics) >= {"coco", "calibration"}
    check_no_nan_and_reasons(metrics["calibration"])
    return metrics
