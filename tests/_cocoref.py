"""Reference runners (pycocotools, xtcocotools) for the evaluator tests. Test helper, not a test module."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def run_pycocotools(gt: dict, res: list) -> dict:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with _quiet():
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        cd = cg.loadRes(copy.deepcopy(res)) if res else None
        if cd is None:  # pycocotools cannot load an empty result list
            cd = COCO()
            cd.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            cd.createIndex()
        ev = COCOeval(cg, cd, "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"stats": np.asarray(ev.stats), "precision": ev.eval["precision"], "recall": ev.eval["recall"],
            "scores": ev.eval["scores"], "evalImgs": ev.evalImgs}


def run_xtcocotools(gt: dict, res: list, *, sigmas=None, use_area=True, iou_type="keypoints") -> dict:
    from xtcocotools.coco import COCO
    from xtcocotools.cocoeval import COCOeval

    with _quiet():
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        cd = cg.loadRes(copy.deepcopy(res))
        sig = None if sigmas is None else np.asarray(sigmas)
        ev = COCOeval(cg, cd, iou_type, sigmas=sig, use_area=use_area)
        ev.params.useSegm = None
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"stats": np.asarray(ev.stats), "precision": ev.eval["precision"], "recall": ev.eval["recall"],
            "scores": ev.eval["scores"], "evalImgs": ev.evalImgs}


def reference_stats_from_files(module: str, gt_path, res_path) -> np.ndarray:
    """The 10 stats of ``module`` (pycocotools / xtcocotools) loading the FILES, as their users call them."""
    coco = __import__(f"{module}.coco", fromlist=["COCO"])
    cocoeval = __import__(f"{module}.cocoeval", fromlist=["COCOeval"])
    with _quiet():
        cg = coco.COCO(str(gt_path))
        cd = cg.loadRes(str(res_path))
        ev = cocoeval.COCOeval(cg, cd, "keypoints")
        if module == "xtcocotools":
            ev.params.useSegm = None
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def posecal_evaluate_json(gt_path, res_path, *extra: str) -> tuple[int, dict | None, str]:
    """``posecal evaluate --json -`` in-process: (exit code, the JSON or None, stderr)."""
    import json

    from posecal.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["evaluate", "--gt", str(gt_path), "--pred", str(res_path), "--json", "-", *extra])
    return rc, (json.loads(out.getvalue()) if rc == 0 else None), err.getvalue()
