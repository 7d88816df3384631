"""Feature store → CCNet training data: inputs, per-keypoint OKS targets (Eq. 7) and visibility targets.

Targets are the per-keypoint OKS of the store's predictions against its gt (``gt_keypoints`` of an
augmented store, else ``gt.json`` by ``ann_id``) with the keypoint set's sigmas and the gt area; the
visibility target is "labelled" (gt v > 0). Rows without a gt or without any labelled keypoint carry no
target. Used by ``posecal fit`` / ``posecal apply``, the demo and the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError
from posecal.rescore.aggregate import instance_score


@dataclass
class StoreData:
    """What CCNet needs from one feature store (row i = record i of predictions.json)."""

    path: str
    meta: dict[str, Any]
    head_meta: dict[str, Any]  # the keys compared by posecal.ccnet.checkpoint.check_compatible
    features: np.ndarray  # (N, ...) the store's feature tensor
    records: list[dict[str, Any]]  # predictions.json
    box_score: np.ndarray  # (N,)
    gt: Any  # CocoGroundTruth | None
    oks: np.ndarray | None  # (N, K) per-keypoint OKS target, NaN where unlabelled / no gt
    vis: np.ndarray | None  # (N, K) bool labelled (gt v > 0)
    has_target: np.ndarray | None  # (N,) bool: the row has a gt with at least one labelled keypoint
    sigmas: np.ndarray
    _results: Any = None

    def results(self) -> Any:
        """``records`` parsed as :class:`posecal.io.coco.CocoResults` against ``gt`` (cached)."""
        if self._results is None:
            from posecal.io.coco import load_results

            self._results = load_results(self.records, self.gt)
        return self._results


def store_head_meta(meta: dict[str, Any], feature_name: str | None) -> dict[str, Any]:
    """The store's side of the head/store compatibility check."""
    arrays = meta.get("arrays", {})
    return {
        "keypoint_set": meta.get("keypoint_set"),
        "feature_tensor": feature_name,
        "feature_shape": list(arrays.get(feature_name, {}).get("shape", [])) if feature_name else None,
        "pooling": meta.get("pooling"),
        "model_tensor": meta.get("tensor"),
        "model_sha256": meta.get("model_sha256"),
    }


def load_store(path: str, *, need_gt: bool = True, features: bool = True) -> StoreData:
    """Open a store and compute the CCNet targets (see module docstring)."""
    from posecal.io.coco import load_gt
    from posecal.keypoints import get_keypoint_set
    from posecal.metrics.oks import keypoint_oks
    from posecal.models.store import FeatureStore

    fs = FeatureStore.open(path)
    fs.verify()  # a missing, damaged or reshaped chunk is named here, whichever arrays are used below
    meta = fs.meta
    if fs.feature_name is None:
        raise PosecalInputError("store has no feature tensor (extract with --pooling)", file=str(path))
    try:
        ks = get_keypoint_set(str(meta.get("keypoint_set")))
    except KeyError as e:
        raise PosecalInputError(str(e), file=str(path), field="keypoint_set") from None
    feats = fs.features() if features else np.zeros((fs.num_instances, 0))
    records = fs.predictions
    if len(records) != fs.num_instances:
        raise PosecalInputError(f"{len(records)} predictions for {fs.num_instances} rows", file=str(path))
    box_score = fs.read("box_score") if "box_score" in fs.arrays else np.ones(fs.num_instances)
    gt = oks = vis = has = None
    if fs.gt_path is not None:
        gt = load_gt(fs.gt_path)
        row_of = {int(a): i for i, a in enumerate(gt.ann_id)}
        ann = fs.read("ann_id")
        g = np.array([row_of.get(int(a), -1) for a in ann], dtype=np.int64)
        K = ks.num_keypoints
        gtk = np.zeros((fs.num_instances, K, 3))
        ok = g >= 0
        gtk[ok] = gt.keypoints[g[ok]]
        if "gt_keypoints" in fs.arrays:  # augmented copies: gt with occluder-updated flags
            gtk[ok] = fs.read("gt_keypoints")[ok]
        area = np.where(ok, gt.area[np.maximum(g, 0)], 1.0)
        vis = (gtk[..., 2] > 0) & ok[:, None]
        oks = keypoint_oks(fs.read("keypoints"), gtk, area, ks.sigmas)
        oks = np.where(vis, oks, np.nan)
        has = vis.any(axis=1)
    elif need_gt:
        raise PosecalInputError("store has no gt.json: fit needs ground truth", file=str(path))
    return StoreData(
        path=str(path), meta=meta, head_meta=store_head_meta(meta, fs.feature_name), features=feats,
        records=records, box_score=box_score, gt=gt, oks=oks, vis=vis, has_target=has, sigmas=ks.sigmas,
    )


def scores_and_ap(head: Any, data: StoreData, *, use_box_score: bool = False) -> dict[str, float]:
    """AP/AR of ``data``'s predictions rescored by ``head`` (coordinates unchanged) and Pearson checks."""
    from posecal.ccnet.train import predict, quick_metrics
    from posecal.metrics.cocoeval import evaluate

    s, v = predict(head, data.features)
    c = instance_score(s, "visibility", data.box_score if use_box_score else None, visibility=v)
    out: dict[str, float] = {}
    if data.gt is not None:
        res = data.results()
        ev = evaluate(data.gt, res, scores=c, sigmas=data.sigmas, warn=False)
        out["AP"], out["AR"] = float(ev.stats["AP"]), float(ev.stats["AR"])
        sel = data.has_target
        out.update(quick_metrics(s[sel], v[sel], data.oks[sel], data.vis[sel]))
    return out
