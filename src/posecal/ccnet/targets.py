"""Feature store → CCNet training data: inputs, per-keypoint OKS targets (Eq. 7) and visibility targets.

**gt-box stores** (``boxes: "gt"``): targets are the per-keypoint OKS of the store's predictions against
their own gt (``gt_keypoints`` of an augmented store, else ``gt.json`` by ``ann_id``) with the keypoint set's
sigmas and the gt area; the visibility target is "labelled" (gt v > 0).

**detection stores** (``--boxes DET.json``): each detection is matched to the gt the way COCOeval matches
keypoint detections (:func:`match_detections`: per image, detections by decreasing score, each taking the
unmatched gt of highest OKS ≥ ``MATCH_OKS`` = 0.5, COCOeval's loosest threshold; crowd regions and people
without keypoints are "ignore" gts). A detection matched to a real person gets that person's per-keypoint
OKS; an unmatched one (a duplicate, a false positive, a miss-localised box) gets target 0 on every keypoint
— so the head learns to demote it — and no visibility target; one matched to an ignore gt is left out.

**Partial skeletons**: keypoints outside the dataset's ``categories[0].annotated_keypoints``
(:mod:`posecal.datasets.remap`, e.g. the 5 face points of LSP as COCO-17) are out of both losses
(``conf_mask`` and ``vis_mask`` 0), instead of teaching the visibility head that they never exist. So are
keypoints the *model* lacks (``extract --allow-missing-joints``: store ``joint_map`` −1, :func:`model_keypoints`),
which ``posecal apply`` and ``export`` give ŝ = v̂ = 0.

**Instance evidence**: for models whose card asks for it (``"ccnet": {"evidence": true}``: a built-in card, found
by the model's SHA-256, or a user card, whose ``ccnet`` block ``extract`` records in the store as
:data:`CARD_CCNET`), the head's input
is the pooled feature with the instance evidence appended (:func:`instance_evidence`: box score, the model's
own keypoint score and its statistics), so that CCNet can weigh the detector's confidence; ``posecal
apply`` and ``export`` build the same input. Used by ``posecal fit`` / ``posecal apply``, the demo and the
benchmarks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError
from posecal.keypoints import CUSTOM
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
    oks: np.ndarray | None  # (N, K) per-keypoint OKS target, NaN where unlabelled / no gt (0: unmatched det)
    vis: np.ndarray | None  # (N, K) bool labelled (gt v > 0)
    has_target: np.ndarray | None  # (N,) bool: the row takes part in training
    sigmas: np.ndarray
    conf_mask: np.ndarray | None = None  # (N, K) bool: the confidence loss sees keypoint k
    vis_mask: np.ndarray | None = None  # (N, K) bool: the visibility loss sees keypoint k
    match: np.ndarray | None = None  # (N,) detection stores: gt row matched (-1 none, -2 ignore gt)
    _results: Any = None

    def image_codes(self) -> np.ndarray:
        """``(N,)`` int64 image of each record: its ``image_id``, or, for a store made from a data file with
        string image ids, that id's code (the store's ``image_id`` array; :func:`posecal.io.coco.load_gt`'s
        id of the image in the store's gt.json)."""
        names = self.meta.get("image_id_strings")
        if names is None:
            return np.array([int(r["image_id"]) for r in self.records], np.int64)
        index = {n: i for i, n in enumerate(names)}  # the records were checked against them (FeatureStore)
        return np.array([index[r["image_id"]] for r in self.records], np.int64)

    def results(self) -> Any:
        """``records`` parsed as :class:`posecal.io.coco.CocoResults` against ``gt`` (cached)."""
        if self._results is None:
            import warnings

            from posecal.errors import PosecalWarning
            from posecal.io.coco import load_results

            with warnings.catch_warnings():  # the store's own scores: `extract` warned when it wrote them
                warnings.simplefilter("ignore", PosecalWarning)
                self._results = load_results(self.records, self.gt)
        return self._results


MATCH_OKS = 0.5  # COCOeval's loosest OKS threshold


CARD_CCNET = "model_card_ccnet"
"""Store setting (``meta.json``) and head metadata key holding the ``ccnet`` block of a user model card
(``extract --model-card``); stores made with a built-in card do not have it (their card is found by the
model's SHA-256)."""


def uses_evidence(meta: dict[str, Any]) -> bool:
    """Whether the store's model card asks CCNet to read the instance evidence (``ccnet.evidence``): the
    user card's block recorded in the store (or head) metadata (:data:`CARD_CCNET`), else the built-in card
    with the model's SHA-256. ``meta``: a store's ``meta.json`` or a head's ``head.json``."""
    from posecal.models.cards import BUILTIN_CARDS

    own = meta.get(CARD_CCNET)
    if isinstance(own, dict):
        return bool(own.get("evidence"))
    card = next((c for c in BUILTIN_CARDS.values() if c["sha256"] == meta.get("model_sha256")), None)
    return bool(((card or {}).get("ccnet") or {}).get("evidence"))


def model_keypoints(meta: dict[str, Any], num_keypoints: int | None = None, *,
                    file: str | os.PathLike | None = None) -> np.ndarray | None:
    """``(K,)`` bool: the dataset keypoints the model has (store ``joint_map`` ≥ 0); None when it has them all
    (or the store records no joint map). Keypoints it lacks (``extract --allow-missing-joints``) are stored at
    (0, 0) with score 0: CCNet gives them ŝ = v̂ = 0 and leaves them out of the losses."""
    jm = meta.get("joint_map")
    if jm is None:
        return None
    where = {"file": None if file is None else str(file), "field": "joint_map"}
    if not isinstance(jm, list) or not jm or not all(isinstance(j, int) and not isinstance(j, bool) for j in jm):
        # read as "every keypoint present", a damaged map would give invented scores to missing joints
        raise PosecalInputError(f"expected a non-empty list of integers (model joint per keypoint, -1: none), got "
                                f"{str(jm)[:80]} (edited?)", **where)
    if num_keypoints is not None and len(jm) != num_keypoints:
        raise PosecalInputError(f"joint_map has {len(jm)} entries for {num_keypoints} keypoints (edited?)", **where)
    joints = meta.get("model_joints")
    top = len(joints) if isinstance(joints, list) and joints else None
    bad = [j for j in jm if j < -1 or (top is not None and j >= top)]
    if bad:
        span = f"[-1, {top - 1}]" if top is not None else ">= -1"
        raise PosecalInputError(f"entry {bad[0]} out of range {span} (edited?)", **where)
    have = np.asarray(jm, np.int64) >= 0
    return None if have.all() else have


def default_head(meta: dict[str, Any], feature_name: str | None, fallback: str) -> str:
    """The head kind the store's model card recommends (``kpt_inst`` on per-keypoint features when the card
    asks for the instance evidence), else ``fallback`` (the feature tensor's default)."""
    if uses_evidence(meta) and feature_name == "features_kpt":
        return "kpt_inst"
    return fallback


def loss_masks(stores: list[StoreData]) -> dict[str, np.ndarray]:
    """``conf_mask`` / ``vis_mask`` over the training rows (``has_target``) of ``stores``, concatenated in
    store order — the keyword arguments of :func:`posecal.ccnet.train.fit_head`."""
    return {k: np.concatenate([getattr(d, k)[d.has_target] for d in stores])
            for k in ("conf_mask", "vis_mask") if all(getattr(d, k) is not None for d in stores)}


def instance_evidence(scores: np.ndarray, box_score: np.ndarray, per_keypoint: bool) -> np.ndarray:
    """What the model and the detector already say about an instance, as extra head inputs, float32.

    scores (N, K) the model's keypoint scores, box_score (N,). Per keypoint (``per_keypoint``, for
    ``features_kpt``): (N, K, 6) = [s_k, mean s, max s, fraction of s > 0.2, box score, bbox_keypoint score];
    else (N, K + 5) = [s_1..s_K, mean s, max s, fraction > 0.2, box score, bbox_keypoint score].
    """
    s = np.nan_to_num(np.asarray(scores, np.float64))
    b = np.asarray(box_score, np.float64).reshape(-1)
    inst = np.stack([s.mean(1), s.max(1), (s > 0.2).mean(1), b, instance_score(s, "bbox_keypoint", b)], 1)
    if per_keypoint:
        K = s.shape[1]
        return np.concatenate([s[:, :, None], np.repeat(inst[:, None], K, 1)], 2).astype(np.float32)
    return np.concatenate([s, inst], 1).astype(np.float32)


def store_features(fs: Any) -> np.ndarray:
    """The head input of a FeatureStore: its feature array, with the instance evidence appended when the
    model card asks for it (``(N, C)`` → ``(N, C + K + 5)``; ``(N, K, C)`` → ``(N, K, C + 6)``)."""
    feats = fs.features()
    if not uses_evidence(fs.meta) or feats.ndim not in (2, 3):
        return feats
    box = fs.read("box_score") if "box_score" in fs.arrays else np.ones(fs.num_instances)
    ev = instance_evidence(fs.read("scores"), box, per_keypoint=feats.ndim == 3)
    return np.concatenate([feats.astype(np.float32), ev], axis=-1)


def store_head_meta(meta: dict[str, Any], feature_name: str | None) -> dict[str, Any]:
    """The store's side of the head/store compatibility check."""
    arrays = meta.get("arrays", {})
    shape = list(arrays.get(feature_name, {}).get("shape", [])) if feature_name else None
    if shape and uses_evidence(meta) and len(shape) in (1, 2):
        K = len(meta.get("keypoint_names", []))
        shape[-1] += 6 if len(shape) == 2 else K + 5
    out = {
        "keypoint_set": meta.get("keypoint_set"),
        **({k: meta.get(k) for k in ("keypoint_names", "keypoint_sigmas")} if meta.get("keypoint_set") == CUSTOM
           else {}),  # a skeleton posecal does not know (extract --sigmas) travels into head.json
        "feature_tensor": feature_name,
        "feature_shape": shape,
        "pooling": meta.get("pooling"),
        "model_tensor": meta.get("tensor"),
        "model_sha256": meta.get("model_sha256"),
    }
    if isinstance(meta.get(CARD_CCNET), dict):  # a user card's ccnet settings travel into head.json
        out[CARD_CCNET] = meta[CARD_CCNET]
    return out


def match_detections(gt: Any, image_id: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                     sigmas: np.ndarray, thr: float = MATCH_OKS, category_id: int = 1
                     ) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's greedy matching of keypoint detections to gt, at one OKS threshold.

    Args:
        gt: :class:`posecal.io.coco.CocoGroundTruth` (annotations of the images).
        image_id (N,), keypoints (N, K, 2) image px, scores (N,) the ranking score.
        category_id: the detections' category (the ``category_id`` of the store's records: the data file's
            keypoint category, COCO's person 1 by default); only gt of that category are matched, as COCOeval
            evaluates each category on its own.
    Returns:
        match (N,) int64: gt row (index into ``gt``) of the match; -1 unmatched; -2 matched to an ignore gt
        (crowd or no labelled keypoint: COCOeval drops such detections). oks (N,) of the match (0 unmatched).

    Per image, as ``COCOeval.evaluateImg``: gts ordered non-ignored first; detections by decreasing score
    (stable); each takes the gt of highest OKS ≥ ``thr`` not yet taken (crowd gts may be taken again),
    stopping at the first ignore gt once a real one is held. OKS is pycocotools' (:func:`oks_pairs`, gt
    ``area``). Every detection takes part (no ``maxDets`` cut: rescoring changes the top 20).
    """
    from posecal.metrics.oks import oks_pairs

    image_id = np.asarray(image_id, np.int64)
    N = image_id.shape[0]
    match = np.full(N, -1, np.int64)
    moks = np.zeros(N)
    person = gt.category_id == int(category_id)
    ignore = gt.iscrowd.astype(bool) | (gt.num_keypoints == 0)
    for iid in np.unique(image_id):
        drows = np.flatnonzero(image_id == iid)
        drows = drows[np.argsort(-np.asarray(scores)[drows], kind="mergesort")]
        grows = np.flatnonzero((gt.image_id == iid) & person)
        if not grows.size:
            continue
        grows = grows[np.argsort(ignore[grows], kind="mergesort")]
        di, gi = np.meshgrid(drows, grows, indexing="ij")
        O = oks_pairs(keypoints, gt.keypoints, gt.area, gt.bbox, sigmas, di.ravel(), gi.ravel())
        O = O.reshape(len(drows), len(grows))
        taken = np.zeros(len(grows), bool)
        gig = ignore[grows]
        crowd = gt.iscrowd.astype(bool)[grows]
        for a, d in enumerate(drows):
            best, m = min(thr, 1 - 1e-10), -1
            for g in range(len(grows)):
                if taken[g] and not crowd[g]:
                    continue
                if m > -1 and not gig[m] and gig[g]:
                    break
                if O[a, g] < best:
                    continue
                best, m = O[a, g], g
            if m == -1:
                continue
            taken[m] = True
            match[d] = -2 if gig[m] else grows[m]
            moks[d] = O[a, m]
    return match, moks


def _annotated(gt_path: Any, ks: Any) -> np.ndarray:
    from posecal._util import read_json
    from posecal.datasets.remap import annotated_mask

    return annotated_mask(read_json(gt_path), ks)


def _gt_box_targets(fs: Any, gt: Any, ks: Any, annotated: np.ndarray) -> dict[str, np.ndarray]:
    from posecal.metrics.oks import keypoint_oks

    row_of = {int(a): i for i, a in enumerate(gt.ann_id)}
    g = np.array([row_of.get(int(a), -1) for a in fs.read("ann_id")], dtype=np.int64)
    gtk = np.zeros((fs.num_instances, ks.num_keypoints, 3))
    ok = g >= 0
    gtk[ok] = gt.keypoints[g[ok]]
    if "gt_keypoints" in fs.arrays:  # augmented copies: gt with occluder-updated flags
        gtk[ok] = fs.read("gt_keypoints")[ok]
    area = np.ones(fs.num_instances)
    area[ok] = gt.area[g[ok]]  # (not gt.area[max(g, 0)]: a gt without annotations has no row 0)
    vis = (gtk[..., 2] > 0) & ok[:, None]
    oks = np.where(vis, keypoint_oks(fs.read("keypoints"), gtk, area, ks.sigmas), np.nan)
    return {"oks": oks, "vis": vis, "has": vis.any(axis=1), "conf_mask": vis & annotated,
            "vis_mask": ok[:, None] & annotated[None], "match": None}


def _store_category(fs: Any, gt: Any) -> int:
    """The category the store's detections carry (``extract`` writes the data file's keypoint category on
    every record), as ``gt`` codes it; 1 for an empty store."""
    recs = fs.predictions
    cid = recs[0].get("category_id", 1) if recs else 1
    names = getattr(gt, "category_id_strings", None)
    if names is not None and isinstance(cid, str):
        return names.index(cid) if cid in names else -1
    return int(cid)


def _detection_targets(fs: Any, gt: Any, ks: Any, annotated: np.ndarray) -> dict[str, np.ndarray]:
    from posecal.metrics.oks import keypoint_oks

    kp, sc = fs.read("keypoints"), fs.read("scores")
    box = fs.read("box_score") if "box_score" in fs.arrays else np.ones(fs.num_instances)
    match, _ = match_detections(gt, fs.read("image_id"), kp, instance_score(sc, "bbox_keypoint", box), ks.sigmas,
                                category_id=_store_category(fs, gt))
    ok = match >= 0
    gtk = np.zeros((fs.num_instances, ks.num_keypoints, 3))
    gtk[ok] = gt.keypoints[match[ok]]
    area = np.ones(fs.num_instances)
    area[ok] = gt.area[match[ok]]
    vis = (gtk[..., 2] > 0) & ok[:, None]
    oks = np.where(vis, keypoint_oks(kp, gtk, area, ks.sigmas), np.nan)
    unmatched = match == -1
    oks[unmatched] = 0.0
    conf_mask = (vis | unmatched[:, None]) & annotated[None]
    return {"oks": oks, "vis": vis, "has": conf_mask.any(axis=1), "conf_mask": conf_mask,
            "vis_mask": ok[:, None] & annotated[None], "match": match}


def _gt_for_store(gt: Any, ks: Any, gt_path: Any) -> Any:
    """The store's ground truth on the store's keypoints. A COCO-WholeBody file (its 17 body ``keypoints``
    named in ``categories[0]``, the parts in ``foot_kpts``...) is loaded with all 133 keypoints, while
    ``extract`` crops it as COCO-17: its body part, as ``posecal evaluate`` scores body-only results
    (``num_keypoints`` as written). Any other disagreement is refused, naming the file."""
    from dataclasses import replace

    K = gt.keypoints.shape[1]
    if K == ks.num_keypoints:
        return gt
    if getattr(gt, "wholebody", False) and ks.name == "coco17":
        return replace(gt, keypoints=np.ascontiguousarray(gt.keypoints[:, :17]), keypoint_set=ks, wholebody=False)
    raise PosecalInputError(f"the ground truth holds {K} keypoints, the store's keypoint set {ks.name} "
                            f"{ks.num_keypoints}", file=str(gt_path), field="keypoints")


def _check_image_coding(fs: Any, gt: Any) -> None:
    """The store's image codes are the gt's: string ids (meta ``image_id_strings``) are the sorted ids of the
    images of gt.json, numeric ids are the ids themselves; a store and gt.json that disagree (edited) are
    refused, not matched image by image at random."""
    mine, theirs = fs.image_id_strings, gt.image_id_strings
    if mine != theirs:
        what = ("string image ids" if mine is not None else "numeric image ids")
        other = (f"{len(theirs)} string image ids" if theirs is not None else "numeric image ids")
        raise PosecalInputError(f"the store was made with {what}{f' ({len(mine)})' if mine else ''}, its gt.json "
                                f"has {other} (edited?)", file=str(fs.path / "meta.json"), field="image_id_strings")


def check_finite_rows(arr: np.ndarray, path: str | os.PathLike, name: str) -> None:
    """Refuse a store array ``(N, ...)`` with NaN/inf in any row (``extract`` refuses non-finite model
    outputs, so such a store was altered), naming the store, the first row and the array."""
    bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1) if arr.size else np.zeros(0, bool)
    if bad.any():
        i = int(np.argmax(bad))
        raise PosecalInputError(f"{int(bad.sum())} rows hold NaN or infinite values (first: row {i})",
                                file=str(path), record=i, field=name)


def load_store(path: str, *, need_gt: bool = True, features: bool = True) -> StoreData:
    """Open a store and compute the CCNet targets (see module docstring)."""
    from posecal.io.coco import load_gt
    from posecal.keypoints import keypoint_set_from_meta
    from posecal.models.store import FeatureStore

    fs = FeatureStore.open(path)
    fs.verify()  # a missing, damaged or reshaped chunk is named here, whichever arrays are used below
    meta = fs.meta
    if fs.num_instances == 0:  # (its meta.json then names no feature array either)
        raise PosecalInputError("the store holds no rows (0 instances): nothing to fit or rescore",
                                file=str(path))
    if fs.feature_name is None:
        raise PosecalInputError("store has no feature tensor (extract with --pooling)", file=str(path))
    for key in ("model_sha256", "tensor", "pooling"):  # they travel into head.json, whose loader wants strings
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise PosecalInputError(f"expected a string, got {str(meta[key])[:60]!r} (edited?)",
                                    file=str(Path(path) / "meta.json"), field=key)
    try:
        ks = keypoint_set_from_meta(meta)
    except KeyError as e:
        raise PosecalInputError(str(e.args[0]) if e.args else str(e), file=str(Path(path) / "meta.json"),
                                field="keypoint_set") from None
    K = ((meta.get("arrays") or {}).get("keypoints") or {}).get("shape", [None])[0]
    if isinstance(K, int) and K != ks.num_keypoints:
        raise PosecalInputError(f"{ks.name} has {ks.num_keypoints} keypoints but the store's arrays hold {K} "
                                "(edited?)", file=str(Path(path) / "meta.json"), field="keypoint_set")
    box_score = fs.read("box_score") if "box_score" in fs.arrays else np.ones(fs.num_instances)
    # the raw arrays first: the features may carry the instance evidence computed from scores and box_score,
    # and a NaN there is to be named where it is, not in the features
    raw = [("keypoints", fs.read("keypoints")), ("scores", fs.read("scores")), ("box_score", box_score)]
    if "bbox" in fs.arrays:  # read by the context stage and the evidence columns
        raw.append(("bbox", fs.read("bbox")))
    for name, arr in raw:
        check_finite_rows(np.asarray(arr, np.float64), path, name)
    feats = store_features(fs) if features else np.zeros((fs.num_instances, 0))
    check_finite_rows(feats, path, fs.feature_name)
    records = fs.predictions  # one valid record per row, in row order (FeatureStore checks it)
    gt = None
    t: dict[str, Any] = dict.fromkeys(("oks", "vis", "has", "conf_mask", "vis_mask", "match"))
    if fs.gt_path is not None:
        from posecal.metrics.cocoeval import with_oks_area

        gt = with_oks_area(load_gt(fs.gt_path))  # OKS as `posecal evaluate` scales it (0.53·w·h without area)
        gt = _gt_for_store(gt, ks, fs.gt_path)
        _check_image_coding(fs, gt)
        annotated = _annotated(fs.gt_path, ks)
        have = model_keypoints(meta, ks.num_keypoints, file=Path(path) / "meta.json")
        if have is not None:  # keypoints the model lacks: ŝ = v̂ = 0 in apply, out of both losses here
            annotated = annotated & have
        detections = meta.get("boxes", "gt") != "gt"
        t = (_detection_targets if detections else _gt_box_targets)(fs, gt, ks, annotated)
    elif need_gt:
        raise PosecalInputError("store has no gt.json: fit needs ground truth", file=str(path))
    return StoreData(
        path=str(path), meta=meta, head_meta=store_head_meta(meta, fs.feature_name), features=feats,
        records=records, box_score=box_score, gt=gt, oks=t["oks"], vis=t["vis"], has_target=t["has"],
        sigmas=ks.sigmas, conf_mask=t["conf_mask"], vis_mask=t["vis_mask"], match=t["match"],
    )


def metric_masks(data: StoreData, sel: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(conf_mask, vis_mask)`` of ``data``'s rows ``sel`` (None where the store has none): what
    :func:`posecal.ccnet.train.quick_metrics` reports over, the keypoints the training losses see."""
    return tuple(None if m is None else m[sel] for m in (data.conf_mask, data.vis_mask))


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
        out.update(quick_metrics(s[sel], v[sel], data.oks[sel], data.vis[sel], *metric_masks(data, sel)))
    return out


# --------------------------------------------------------------------------------------------------
# "more evidence" (paper App. Table g): the model's own per-keypoint evidence as extra input columns
EVIDENCE = ("score", "log_sigma", "cf", "pose")
"""Evidence columns a head can take besides the pooled features (all from the store):

* ``score``: the raw keypoint score (heatmap maximum), store ``scores (N, K)``;
* ``log_sigma``: ``log(σ̂ / √(w·h))``, the heatmap spread σ̂ (store ``sigma_hat``, image px) relative to the
  instance box (store ``bbox``, image px);
* ``cf``: the closed-form expected keypoint OKS ``l² / (σ̂² + l²)`` (paper Eq. 12) with
  ``l² = (2 k)² (w·h)`` (Eq. 7), the box area standing in for the gt area;
* ``pose``: the whole instance as the model saw it, the same :func:`pose_channels` ``(K)`` values on every
  keypoint's row — its K predicted keypoints in crop coordinates (store ``keypoints`` through
  ``crop_transform``, divided by the model input size, −0.5: (2K,)), their K(K−1)/2 pairwise distances in
  those units, the K raw scores and the K closed-form values above. The ``kpt_pose`` head reads it with a
  small MLP whose output adds to every keypoint's logits (a skeleton that is implausible, or one weak joint
  next to strong ones, says something about the others).
"""


def pose_channels(k: int) -> int:
    """Width of the ``pose`` evidence for K keypoints: 2K coordinates + K(K−1)/2 distances + K scores + K
    closed-form values."""
    return 2 * k + k * (k - 1) // 2 + 2 * k


def evidence_width(names: tuple[str, ...] | list[str], k: int) -> int:
    """Input channels the evidence ``names`` add for K keypoints (:func:`pose_channels` for ``pose``, 1 else)."""
    return sum(pose_channels(k) if n == "pose" else 1 for n in names)


def _pose_columns(kp: np.ndarray, M: np.ndarray, input_size: tuple[float, float], score: np.ndarray,
                  cf: np.ndarray) -> np.ndarray:
    """``(N, P)`` pose evidence (see :data:`EVIDENCE`) from keypoints ``(N, K, 2)`` image px, crop transforms
    ``(N, 2, 3)`` (image px → input px) and the input size (W, H), with scores and closed-form values ``(N, K)``."""
    W, H = (float(v) for v in input_size)
    uv = np.einsum("nij,nkj->nki", M[:, :, :2], kp) + M[:, None, :, 2]  # (N, K, 2) input px
    uv = uv / np.array([W, H]) - 0.5
    iu = np.triu_indices(kp.shape[1], 1)
    dist = np.linalg.norm(uv[:, iu[0]] - uv[:, iu[1]], axis=-1)
    return np.concatenate([uv.reshape(len(uv), -1), dist, score, cf], axis=1)


EVIDENCE_ARRAYS = {"score": ("scores",), "log_sigma": ("sigma_hat", "bbox"), "cf": ("sigma_hat", "bbox"),
                   "pose": ("scores", "sigma_hat", "bbox", "keypoints", "crop_transform")}
"""The store arrays each evidence column is computed from."""


def evidence_from_arrays(names: tuple[str, ...] | list[str], sigmas: np.ndarray, arrays: dict[str, np.ndarray],
                         input_size: tuple[float, float] | None = None) -> np.ndarray:
    """``(N, K, E)`` float32 evidence columns ``names`` (see :data:`EVIDENCE`) from store-shaped arrays
    (:data:`EVIDENCE_ARRAYS`: ``scores (N, K)``, ``sigma_hat (N, K)`` image px, ``bbox (N, 4)`` image px,
    ``keypoints (N, K, 2)`` image px, ``crop_transform (N, 2, 3)``) and the model input size (W, H, for
    ``pose``). What :func:`evidence_columns` computes from a store, for crops that are not in one."""
    from posecal.theory import oks_l2, perfect_expected_oks

    K = len(sigmas)
    n = len(next(iter(arrays.values()))) if arrays else 0
    cols: list[np.ndarray] = []  # (N, K, e) blocks
    for name in names:
        if name == "score":
            cols.append(np.asarray(arrays["scores"], np.float64)[..., None])
            continue
        sig = np.nan_to_num(np.asarray(arrays["sigma_hat"], np.float64), nan=1e3)
        box = np.asarray(arrays["bbox"], np.float64)
        area = np.maximum(box[:, 2] * box[:, 3], 1.0)[:, None]
        cf = perfect_expected_oks(sig ** 2, oks_l2(sigmas, area))
        if name == "log_sigma":
            cols.append(np.log(np.maximum(sig, 1e-3) / np.sqrt(area))[..., None])
        elif name == "cf":
            cols.append(cf[..., None])
        else:
            pose = _pose_columns(np.asarray(arrays["keypoints"], np.float64),
                                 np.asarray(arrays["crop_transform"], np.float64), input_size,
                                 np.asarray(arrays["scores"], np.float64), cf)
            cols.append(np.broadcast_to(pose[:, None, :], (len(pose), K, pose.shape[1])))
    if not cols:
        return np.zeros((n, K, 0), np.float32)
    return np.concatenate(cols, axis=-1).astype(np.float32)


def evidence_columns(path: str, names: tuple[str, ...] | list[str], sigmas: np.ndarray) -> np.ndarray:
    """``(N, K, E)`` float32 evidence columns ``names`` (see :data:`EVIDENCE`) of the store at ``path``, in
    that order (``pose`` adds :func:`pose_channels` ``(K)`` columns, the others one each)."""
    from posecal.models.store import FeatureStore

    fs = FeatureStore.open(path)
    need: set[str] = set()
    for name in names:
        if name not in EVIDENCE:
            raise PosecalInputError(f"unknown evidence {name!r}; choose from {', '.join(EVIDENCE)}",
                                    field="evidence")
        missing = [a for a in EVIDENCE_ARRAYS[name] if a not in fs.arrays]
        if missing:
            raise PosecalInputError(f"evidence {name!r} needs the store array(s) {', '.join(missing)}",
                                    file=str(path), field="evidence")
        need.update(EVIDENCE_ARRAYS[name])
    if "pose" in names and "input_size" not in fs.meta:
        raise PosecalInputError("evidence 'pose' needs the store's model input size (meta.json input_size)",
                                file=str(fs.path), field="evidence")
    if "pose" in names:
        _check_input_size(fs.meta["input_size"], Path(fs.path) / "meta.json")
    arrays = {a: fs.read(a) for a in sorted(need)}
    for a, arr in arrays.items():
        _check_evidence_array(a, arr, fs.path)
    if not arrays:
        return np.zeros((fs.num_instances, len(sigmas), 0), np.float32)
    with np.errstate(over="ignore"):  # a huge (finite) σ̂ squares to inf: its closed-form OKS is then 0, as it should
        ev = evidence_from_arrays(names, sigmas, arrays, fs.meta.get("input_size"))
    _check_evidence_finite(ev, names, len(sigmas), fs.path)
    return ev


def _check_evidence_finite(ev: np.ndarray, names: tuple[str, ...] | list[str], k: int, path: Any) -> None:
    """Evidence columns ``(N, K, E)`` computed from finite store arrays can still overflow (float32, or
    huge coordinates / scores / boxes edited into the store): name the store, the first such row and the
    evidence, not the head or its input width."""
    bad_cols = ~np.isfinite(ev).all(axis=(0, 1)) if ev.size else np.zeros(0, bool)
    if not bad_cols.any():
        return
    col = int(np.argmax(bad_cols))
    edges = np.cumsum([evidence_width([n], k) for n in names])
    name = names[int(np.searchsorted(edges, col, side="right"))]
    bad_rows = ~np.isfinite(ev.reshape(len(ev), -1)).all(axis=1)
    i = int(np.argmax(bad_rows))
    raise PosecalInputError(f"{int(bad_rows.sum())} rows give non-finite {name!r} evidence (first: row {i}): the "
                            f"store arrays it is computed from ({', '.join(EVIDENCE_ARRAYS[name])}) hold values too "
                            "large to compute with (edited?)", file=str(path), record=i, field=name)


def _check_input_size(size: Any, file: Path) -> None:
    """meta.json ``input_size``: [W, H], two finite positive numbers (the pose evidence divides by them)."""
    ok = isinstance(size, list) and len(size) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0 for v in size)
    if not ok:
        raise PosecalInputError(f"expected [W, H], two positive numbers, got {str(size)[:80]} (edited?)",
                                file=str(file), field="input_size")


def _check_evidence_array(name: str, arr: np.ndarray, path: Any) -> None:
    """A store array an evidence column reads: finite in every row; ``sigma_hat`` may be NaN (no estimate)
    but neither infinite nor negative (a spread)."""
    a = np.asarray(arr, np.float64)
    if name != "sigma_hat":
        check_finite_rows(a, path, name)
        return
    flat = a.reshape(len(a), -1)
    bad = (np.isinf(flat) | (flat < 0)).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise PosecalInputError(f"{int(bad.sum())} rows hold an infinite or negative heatmap spread (first: row "
                                f"{i}; NaN marks 'no estimate')", file=str(path), record=i, field=name)


def head_inputs(data: StoreData, evidence: tuple[str, ...] | list[str] = ()) -> np.ndarray:
    """The head's input of every row: the store's features, with the ``evidence`` columns appended on the
    channel axis for ``(N, K, C)`` features (→ ``(N, K, C + E)``). No evidence: the features as stored."""
    if not evidence:
        return data.features
    if data.features.ndim != 3:
        raise PosecalInputError("evidence columns need per-keypoint (N, K, C) features (--pooling heatmap)",
                                file=data.path, field="evidence")
    ev = evidence_columns(data.path, tuple(evidence), data.sigmas)
    return np.concatenate([np.asarray(data.features, np.float32), ev], axis=-1)
